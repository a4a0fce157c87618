"""A receiver for Label Studio's ANNOTATION_CREATED / ANNOTATION_UPDATED webhooks.

Label Studio posts each new or changed annotation here with a shared secret in a header;
the receiver checks it (constant-time), records each annotation once in SQLite (so a retried
delivery or a restart never double-counts), and calls `on_label` for every new label and
`on_threshold` each time `every` new labels have landed since the last call: the hook the
flows use to emit Prefect events that start retraining. No Prefect here: the server is
Starlette under uvicorn (cityloop.core.web: 127.0.0.1, JSON bodies only, a body limit, timeouts,
bounded concurrency).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from cityloop.core.web import HttpServer, Limits, json_response, read_json, same_secret
from cityloop.core.web import make_app as web_app

WEBHOOK_SECRET_ENV = "CITYLOOP_WEBHOOK_SECRET"

SECRET_HEADER = "X-Cityloop-Webhook-Secret"
ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
MAX_BODY = 2 * 1024 * 1024
LIMITS = Limits(max_body=MAX_BODY)


class LabelCounter:
    """Durable count of labels seen (SQLite), with the threshold bookkeeping."""

    def __init__(self, path: Path, every: int = 100) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        self.path, self.every = Path(path), every
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS labels (annotation_id INTEGER, action TEXT, task_id INTEGER, "
                       "project_id INTEGER, received_at TEXT, PRIMARY KEY (annotation_id, action))")
            db.execute("CREATE TABLE IF NOT EXISTS triggers (at_count INTEGER, fired_at TEXT)")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add(self, annotation_id: int, action: str, task_id: int | None,
            project_id: int | None) -> tuple[bool, int, bool]:
        """Record one label; returns (new, total new-label count, threshold reached now)."""
        with self._lock, self._db() as db:
            cur = db.execute("INSERT OR IGNORE INTO labels VALUES (?, ?, ?, ?, ?)",
                             (annotation_id, action, task_id, project_id, datetime.now(UTC).isoformat()))
            new = cur.rowcount == 1
            total = db.execute("SELECT COUNT(*) FROM labels WHERE action != 'ANNOTATION_UPDATED'").fetchone()[0]
            last = db.execute("SELECT COALESCE(MAX(at_count), 0) FROM triggers").fetchone()[0]
            fire = new and total - last >= self.every
            if fire:
                db.execute("INSERT INTO triggers VALUES (?, ?)", (total, datetime.now(UTC).isoformat()))
        return new, total, fire

    def counts(self) -> dict[str, int]:
        with self._db() as db:
            rows = dict(db.execute("SELECT action, COUNT(*) FROM labels GROUP BY action").fetchall())
            rows["triggers"] = db.execute("SELECT COUNT(*) FROM triggers").fetchone()[0]
        return rows


class WebhookReceiver:
    """The receiver's server (Starlette under uvicorn, 127.0.0.1): `start()` runs it in a thread,
    `server.serve_forever()` in the foreground, `stop()` ends it. The port is bound at once, so `url`
    is known before serving (to register it with Label Studio)."""

    def __init__(self, counter: LabelCounter, secret: str, host: str = "127.0.0.1", port: int = 0,
                 on_label: Callable[[dict], None] | None = None,
                 on_threshold: Callable[[int, dict], None] | None = None, limits: Limits = LIMITS) -> None:
        if not secret:
            raise ValueError("a webhook secret is required (set CITYLOOP_WEBHOOK_SECRET)")
        self.counter, self._secret = counter, secret
        self.on_label, self.on_threshold = on_label, on_threshold
        self.errors: list[str] = []
        self.server = HttpServer(self._app(limits), host, port, limits, name="webhooks")

    @property
    def url(self) -> str:
        return f"{self.server.url}/webhook"

    def _app(self, limits: Limits) -> ASGIApp:
        def health(request: Request) -> Response:
            return json_response({"ok": True, **self.counter.counts()})

        async def webhook(request: Request) -> Response:
            # the secret before a byte of the body is read; headers carry it: nothing here logs a request
            if not same_secret(request.headers.get(SECRET_HEADER), self._secret):
                raise HTTPException(401, f"missing or wrong {SECRET_HEADER}")
            payload = await read_json(request) if int(request.headers.get("content-length") or 0) else {}
            try:
                if not isinstance(payload, dict):
                    raise TypeError("the payload is not a JSON object")
                return json_response(await run_in_threadpool(self.handle, payload))
            except (ValueError, KeyError, TypeError) as exc:
                raise HTTPException(400, f"not a Label Studio annotation webhook: {exc}") from None

        return web_app([Route(p, health) for p in ("/health", "/health/")]
                       + [Route(p, webhook, methods=["POST"]) for p in ("/webhook", "/webhook/")], limits)

    def handle(self, payload: dict) -> dict:
        """Count the annotations of one delivery; call the hooks (their failures never lose a count)."""
        action = payload["action"]
        if action not in ACTIONS:
            return {"ignored": action}
        anns = payload.get("annotations") or [payload["annotation"]]
        project = (payload.get("project") or {}).get("id")
        new = 0
        for a in anns:
            task = a.get("task")
            task_id = task.get("id") if isinstance(task, dict) else task
            added, total, fire = self.counter.add(int(a["id"]), action, task_id, project)
            new += added
            info = {"action": action, "annotation_id": int(a["id"]), "task_id": task_id, "project_id": project,
                    "total": total}
            if added:
                self._call(self.on_label, info)
            if fire:
                self._call(self.on_threshold, total, info)
        return {"new": new, **self.counter.counts()}

    def _call(self, fn, *args) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 (the label is counted; the hook's failure is reported)
            self.errors.append(f"{getattr(fn, '__name__', fn)}: {exc}")

    def start(self) -> WebhookReceiver:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()


def register(ls, project_id: int, url: str, secret: str) -> int:
    """Create (or reuse) the project's webhook to `url`, carrying the secret header."""
    for h in ls.webhooks.list(project=project_id):
        if h.url == url:
            ls.webhooks.update(id=h.id, url=url, headers={SECRET_HEADER: secret}, send_payload=True,
                               actions=list(ACTIONS[:2]), send_for_all_actions=False)
            return h.id
    return ls.webhooks.create(project=project_id, url=url, headers={SECRET_HEADER: secret}, send_payload=True,
                              send_for_all_actions=False, actions=list(ACTIONS[:2])).id


def webhook_secret() -> str:
    """The shared secret Label Studio sends with each webhook (environment only)."""
    secret = os.environ.get(WEBHOOK_SECRET_ENV, "")
    if not secret:
        raise RuntimeError(f"set {WEBHOOK_SECRET_ENV} to a shared secret for the webhook receiver")
    return secret
