"""A receiver for Label Studio's ANNOTATION_CREATED / ANNOTATION_UPDATED webhooks.

Label Studio posts each new or changed annotation here with a shared secret in a header;
the receiver checks it (constant-time), records each annotation once in SQLite (so a retried
delivery or a restart never double-counts), and calls `on_label` for every new label and
`on_threshold` each time `every` new labels have landed since the last call: the hook the
flows use to emit Prefect events that start retraining. Pure stdlib; no Prefect here.
"""

from __future__ import annotations

import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cityloop.core.web import send_json

WEBHOOK_SECRET_ENV = "CITYLOOP_WEBHOOK_SECRET"

SECRET_HEADER = "X-Cityloop-Webhook-Secret"
ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
MAX_BODY = 2 * 1024 * 1024


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
    """ThreadingHTTPServer on 127.0.0.1; `start()` runs it in a thread, `serve_forever()` in the foreground."""

    def __init__(self, counter: LabelCounter, secret: str, host: str = "127.0.0.1", port: int = 0,
                 on_label: Callable[[dict], None] | None = None,
                 on_threshold: Callable[[int, dict], None] | None = None) -> None:
        if not secret:
            raise ValueError("a webhook secret is required (set CITYLOOP_WEBHOOK_SECRET)")
        self.counter, self._secret = counter, secret.encode()
        self.on_label, self.on_threshold = on_label, on_threshold
        self.errors: list[str] = []
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/webhook"

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # headers carry the secret: never log requests
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/health":
                    return send_json(self, 200, {"ok": True, **receiver.counter.counts()})
                send_json(self, 404, {"error": "POST /webhook"})

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/webhook":
                    return send_json(self, 404, {"error": "POST /webhook"})
                given = (self.headers.get(SECRET_HEADER) or "").encode()
                if not hmac.compare_digest(given, receiver._secret):
                    return send_json(self, 401, {"error": f"missing or wrong {SECRET_HEADER}"})
                size = int(self.headers.get("Content-Length") or 0)
                if size > MAX_BODY:
                    return send_json(self, 413, {"error": f"payload over {MAX_BODY} bytes"})
                try:
                    payload = json.loads(self.rfile.read(size) or b"{}")
                    send_json(self, 200, receiver.handle(payload))
                except (ValueError, KeyError, TypeError) as exc:
                    send_json(self, 400, {"error": f"not a Label Studio annotation webhook: {exc}"})

        return Handler

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
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
