"""Alert sinks and the dispatcher. Sinks are configured in params.yaml `analysis.sinks`:

    - {type: log}
    - {type: webhook, name: city-ops, url: "https://ops.example/alerts", secret_env: CITYLOOP_ALERT_SECRET,
       retries: 3, timeout_s: 5}

A webhook POSTs the event JSON with `X-Cityloop-Signature: sha256=<HMAC-SHA256(secret, body)>` and
`X-Cityloop-Event-Id` (receivers deduplicate on it). Delivery is at-least-once: each (event, sink)
is a row in the store that stays pending, with backoff, until the sink accepts it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
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
    """Stores every event first, then tries each sink; failed deliveries stay pending."""

    def __init__(self, store: EventStore, sinks: list[AlertSink], retry_base_s: float = 1.0,
                 retry_max_s: float = 300.0) -> None:
        self.store, self.sinks = store, {s.name: s for s in sinks}
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s

    def raise_event(self, event: Event) -> None:
        """Persist and alert (alerted_ts: when the event was handed to the sinks)."""
        event.alerted_ts = time.time()
        self.store.add(event, list(self.sinks))
        for name in self.sinks:
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
        """Try every due pending delivery once; returns how many got through."""
        done = 0
        for event, name, attempts in self.store.pending(now):
            if name in self.sinks:
                done += self._try(event, name, attempts)
        return done
