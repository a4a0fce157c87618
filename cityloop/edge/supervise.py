"""What keeps an edge node up when the things around it fail: its analysis sink in a worker of its
own, new servers started in the background (blue/green), and a backoff per model version.

- `SinkWorker`: the frame loop hands each frame's detections over and goes on; a sink that raises
  is retried a few times and then counted as failed, a sink that blocks (an event store locked for
  30 s) fills a bounded queue, after which new frames for the sink are dropped and counted. Either
  way the node keeps detecting, and `report()` shows it in status.json.
- `Launch`: builds and starts a version's server in a thread while the old one keeps serving; the
  node switches over only once the new one passed its readiness probe.
- `Failures`: the versions that failed to start (or whose server died), when, why, and when the
  node may try that version again (exponential backoff: no tight loop on a bad candidate).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from cityloop.bento.serving import Server

log = logging.getLogger("cityloop.edge")


class SinkWorker(threading.Thread):
    """Calls `sink.on_detections` from its own thread, in frame order, behind a bounded queue."""

    def __init__(self, sink: Any, size: int = 256, retries: int = 2, backoff_s: float = 0.5) -> None:
        super().__init__(name="sink", daemon=True)
        self.sink = sink
        self.queue: queue.Queue[tuple[tuple, dict] | None] = queue.Queue(maxsize=max(1, size))
        self.retries, self.backoff_s = retries, backoff_s
        self.delivered = self.failed = self.dropped = self.errors = 0
        self.last_error: dict | None = None
        self._busy_since: float | None = None
        self._closing = threading.Event()

    def submit(self, *args: Any, **kwargs: Any) -> bool:
        """Queue one frame's call (never blocks); False when the queue was full and it was dropped."""
        try:
            self.queue.put_nowait((args, kwargs))
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.error("analysis sink is %s behind: %d frames dropped for it so far",
                          f"{self.queue.maxsize} frames", self.dropped)
            return False

    def run(self) -> None:
        while not self._closing.is_set():  # closed: what is still queued is not handed over (close's timeout ran out)
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if item is None:
                    return
                self._deliver(*item)
            finally:
                self.queue.task_done()

    def _deliver(self, args: tuple, kwargs: dict) -> None:
        for attempt in range(self.retries + 1):
            self._busy_since = time.time()
            try:
                self.sink.on_detections(*args, **kwargs)
                self.delivered += 1
                return
            except Exception as exc:  # noqa: BLE001 - whatever the sink raises, the node goes on
                self.errors += 1
                self.last_error = {"error": f"{type(exc).__name__}: {exc}"[:500], "ts": time.time(),
                                   "camera_id": args[0] if args else None,
                                   "frame_index": args[2] if len(args) > 2 else None}
                log.warning("analysis sink failed on %s frame %s (try %d of %d): %s", self.last_error["camera_id"],
                            self.last_error["frame_index"], attempt + 1, self.retries + 1, exc)
            finally:
                self._busy_since = None
            if attempt < self.retries:
                self._closing.wait(self.backoff_s * 2 ** attempt)
        self.failed += 1

    def report(self) -> dict:
        """For status.json: queue depth, counts, the last error, how long the current call has been running."""
        busy = self._busy_since
        return {"queued": self.queue.qsize(), "delivered": self.delivered, "errors": self.errors,
                "failed": self.failed, "dropped": self.dropped, "last_error": self.last_error,
                "busy_s": round(time.time() - busy, 1) if busy else None}

    def close(self, timeout: float = 10.0) -> bool:
        """Hand over what is queued (at most `timeout` s), then end the thread; True when all was handed over."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.02)
        drained = not self.queue.unfinished_tasks
        self._closing.set()
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        self.join(max(0.1, deadline - time.monotonic()))
        return drained


class Launch(threading.Thread):
    """`start(version, port)` -> (server, bento tag) in the background; `server` or `error` when done."""

    def __init__(self, version: str, port: int, start: Callable[[str, int], tuple[Server, str]]) -> None:
        super().__init__(name=f"launch-{version}", daemon=True)
        self.version, self.port, self._start = version, port, start
        self.since = time.time()
        self.server: Server | None = None
        self.tag: str | None = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            self.server, self.tag = self._start(self.version, self.port)
        except Exception as exc:  # noqa: BLE001 - reported in status; the old server keeps serving
            self.error = f"{type(exc).__name__}: {exc}"

    def report(self) -> dict:
        return {"version": self.version, "port": self.port, "since": self.since}


class Failures:
    """Per model version: how often it failed to start or died, the last reason, when to try again."""

    def __init__(self, base_s: float = 2.0, max_s: float = 300.0) -> None:
        self.base_s, self.max_s = base_s, max_s
        self.by_version: dict[str, dict] = {}
        self.last: dict | None = None

    def record(self, version: str, reason: str, kind: str = "start") -> dict:
        prev = self.by_version.get(version, {})
        attempts = prev.get("attempts", 0) + 1
        now = time.time()
        rec = {"version": version, "kind": kind, "reason": reason[-2000:], "ts": now, "attempts": attempts,
               "retry_at": now + min(self.max_s, self.base_s * 2 ** (attempts - 1))}
        self.by_version[version] = rec
        self.last = rec
        return rec

    def may_try(self, version: str) -> bool:
        rec = self.by_version.get(version)
        return rec is None or time.time() >= rec["retry_at"]

    def succeeded(self, version: str) -> None:
        if self.by_version.pop(version, None) is not None and self.last and self.last["version"] == version:
            self.last = {**self.last, "resolved": time.time()}

    def report(self) -> dict:
        return {"last_failure": self.last, "failing_versions": sorted(self.by_version)}
