"""Alert sinks and the dispatcher. Sinks are configured in params.yaml `analysis.sinks`:

    - {type: log}
    - {type: webhook, name: city-ops, url: "https://ops.example/alerts", secret_env: CITYLOOP_ALERT_SECRET,
       retries: 3, timeout_s: 5}

A webhook POSTs the event JSON with `X-Cityloop-Signature: sha256=<HMAC-SHA256(secret, body)>` and
`X-Cityloop-Event-Id` (receivers deduplicate on it). Delivery is at-least-once: each (event, sink)
is a row in the store that stays pending, with backoff, until the sink accepts it.

Delivery runs in the dispatcher's background worker, never in the caller's thread: `raise_event`
commits the event and its pending deliveries, puts the event on a bounded queue and returns, so a
slow or hanging receiver never stalls the frame loop. When the queue is full the event simply
stays pending in the store and the worker's next pass over pending deliveries sends it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import queue
import threading
import time
from typing import Any, Protocol

import httpx

from cityloop.analysis.store import Event, EventStore, event_json
from cityloop.scenarios import ScenarioError, registry

log = logging.getLogger("cityloop.alerts")
SECRET_ENV = "CITYLOOP_ALERT_SECRET"
SIGNATURE_HEADER = "X-Cityloop-Signature"


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def alert_text(event: Event) -> str:
    """The scenario's alert text (its unit's `alert`) filled with the event's fields and details
    (`{camera_id}`, `{district}`, `{score}`, a crossing's `{direction}`, a crowd's `{size}`...)."""
    try:
        template = registry().get(event.scenario).alert
    except ScenarioError:
        template = "{scenario} on {camera_id} ({district})"
    fields = _Fields({**(event.extra or {}), **{k: v for k, v in event.to_dict().items() if k != "extra"}})
    fields["district"] = event.district or "-"
    try:
        return template.format_map(fields)
    except (ValueError, IndexError, AttributeError):  # a malformed template never loses the alert
        return f"{event.scenario} on {event.camera_id}"


class AlertSink(Protocol):
    name: str

    def send(self, event: Event) -> None:
        """Deliver or raise."""


class LogSink:
    """Alerts as log lines (logger `cityloop.alerts`)."""

    def __init__(self, name: str = "log") -> None:
        self.name = name

    def send(self, event: Event) -> None:
        log.warning("ALERT %s: %s (score %.2f, event %s)", event.scenario, alert_text(event),
                    event.score or 0.0, event.id)


def sign(secret: str, body: bytes) -> str:
    """The signature header value for a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSink:
    """POST the event, signed; a few quick retries, then the dispatcher retries later."""

    def __init__(self, url: str, name: str = "webhook", secret_env: str = SECRET_ENV, retries: int = 2,
                 timeout_s: float = 5.0, backoff_s: float = 0.2) -> None:
        secret = os.environ.get(secret_env)
        if not secret:
            raise ValueError(f"webhook sink {name!r}: set the signing secret in ${secret_env}")
        self.url, self.name, self._secret = url, name, secret
        self.retries, self.backoff_s = retries, backoff_s
        self.client = httpx.Client(timeout=timeout_s)

    def send(self, event: Event) -> None:
        body = event_json(event, text=alert_text(event)).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, body),
                   "X-Cityloop-Event-Id": event.id}
        err: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                r = self.client.post(self.url, content=body, headers=headers)
                if r.status_code < 300:
                    return
                err = RuntimeError(f"HTTP {r.status_code}")
                if r.status_code < 500 and r.status_code != 429:
                    break  # the receiver refuses this body: retrying now will not help
            except httpx.HTTPError as exc:
                err = exc
            time.sleep(self.backoff_s * 2 ** attempt)
        raise RuntimeError(f"webhook {self.name} failed: {err}")


def build_sinks(specs: list[dict[str, Any]]) -> list[AlertSink]:
    """Sinks from params.yaml entries; a bad entry is a clear error."""
    sinks: list[AlertSink] = []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind == "log":
            sinks.append(LogSink(spec.get("name", "log")))
        elif kind == "webhook":
            if "url" not in spec:
                raise ValueError(f"webhook sink needs a url: {spec}")
            sinks.append(WebhookSink(**spec))
        else:
            raise ValueError(f"unknown alert sink type {kind!r} (log or webhook)")
    names = [s.name for s in sinks]
    if len(set(names)) != len(names):
        raise ValueError(f"alert sink names must be unique: {names}")
    return sinks


class Dispatcher:
    """Stores every event first, then a background worker tries each sink; failed deliveries stay pending.

    `queue_size` bounds the events waiting for the worker; `retry_every_s`: how often the idle worker
    passes over pending deliveries (those refused earlier, or left over when the queue was full)."""

    def __init__(self, store: EventStore, sinks: list[AlertSink], retry_base_s: float = 1.0,
                 retry_max_s: float = 300.0, queue_size: int = 256, retry_every_s: float = 5.0) -> None:
        self.store, self.sinks = store, {s.name: s for s in sinks}
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self.retry_every_s = retry_every_s
        self.overflowed = 0  # events left pending in the store because the queue was full
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=max(1, queue_size))
        self._deliver = threading.Lock()  # one delivery pass at a time: no event is sent twice at once
        self._nudge = threading.Event()
        self._worker: threading.Thread | None = None
        self._halt = threading.Event()  # the current worker's: set by stop(), even when the queue is full
        self._start_lock = threading.Lock()

    def raise_event(self, event: Event) -> None:
        """Persist the event, queue it for the sinks and return at once (alerted_ts: when it was
        handed to them). A full queue leaves it pending in the store, sent by a later pass."""
        event.alerted_ts = time.time()
        self.store.add(event, list(self.sinks))
        self._ensure_worker()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.overflowed += 1
            log.warning("alert queue full (%d events): event %s stays pending for the next retry pass",
                        self._queue.maxsize, event.id)
            self._nudge.set()

    def retry_soon(self) -> None:
        """Ask the worker for a pass over pending deliveries now (returns at once)."""
        self._ensure_worker()
        self._nudge.set()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event has been tried once; False when `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def stop(self, timeout: float = 10.0) -> bool:
        """Drain the queue (at most `timeout` s) and stop the worker; True when nothing was left queued.
        Undelivered events stay pending in the store (a later `retry_pending` or dispatcher sends them).
        A worker stuck on a hung receiver ends once that send times out; it takes nothing new meanwhile."""
        drained = self.drain(timeout)
        with self._start_lock:
            worker, halt = self._worker, self._halt
            self._worker = None
        if worker is not None:
            halt.set()
            self._nudge.set()
            worker.join(max(0.1, timeout / 4))
        return drained

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._halt = threading.Event()
                self._worker = threading.Thread(target=self._run, args=(self._halt,), name="alert-dispatcher",
                                                daemon=True)
                self._worker.start()

    def _run(self, halt: threading.Event) -> None:
        last_pass = time.monotonic()
        while not halt.is_set():
            try:
                event = self._queue.get(timeout=0.2)
            except queue.Empty:
                event = False
            if halt.is_set():  # stopped while waiting: what was taken stays pending in the store
                if event is not False:
                    self._queue.task_done()
                return
            try:
                if event is not False:
                    self._first_try(event)
                if halt.is_set():  # stopped during that send: no retry pass now
                    continue
                if self._nudge.is_set() or time.monotonic() - last_pass >= self.retry_every_s:
                    self._nudge.clear()
                    last_pass = time.monotonic()
                    self.retry_pending()
            except Exception as exc:  # noqa: BLE001 - a store error must not end the worker; rows stay pending
                log.warning("alert dispatcher: %s (deliveries stay pending)", exc)
            finally:
                if event is not False:
                    self._queue.task_done()

    def _first_try(self, event: Event) -> None:
        """Each sink of a queued event that no pass has tried yet (a retry pass may have beaten us to it)."""
        with self._deliver:
            rows = self.store.deliveries(event.id)
            fresh = [d["sink"] for d in rows if d["state"] == "pending" and not d["attempts"]]
            for name in fresh:
                if name in self.sinks:
                    self._try(event, name, 0)

    def _try(self, event: Event, name: str, attempts: int) -> bool:
        try:
            self.sinks[name].send(event)
        except Exception as exc:  # noqa: BLE001 - any sink failure leaves the delivery pending
            delay = min(self.retry_max_s, self.retry_base_s * 2 ** attempts)
            log.warning("alert sink %s failed for event %s (retry in %.0f s): %s", name, event.id, delay, exc)
            self.store.mark(event.id, name, False, str(exc)[:500], delay)
            return False
        self.store.mark(event.id, name, True)
        return True

    def retry_pending(self, now: float | None = None) -> int:
        """Try every due pending delivery once, in the caller's thread; returns how many got through."""
        done = 0
        with self._deliver:
            for event, name, attempts in self.store.pending(now):
                if name in self.sinks:
                    done += self._try(event, name, attempts)
        return done
