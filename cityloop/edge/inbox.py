"""The center's inbox for hard examples: a small HTTP receiver, idempotent by content hash.

`POST /v1/hard-examples` with `{"examples": [{"sha256", "image" (base64), "camera_id",
"model_version", "reason", "score", "ts", "frame_index"}], "node": NAME}`. Each image is checked
against its sha256, written to `<root>/data/inbox/edge/images/<sha>.jpg` and its sidecar to
`meta/<sha>.json` (write to a temp file, fsync, rename: a kill leaves the file whole or absent),
and only then acknowledged. A frame already stored is acknowledged again and not rewritten, so
at-least-once uploads store every example exactly once. `received.jsonl` logs every receipt.

An optional token (`CITYLOOP_INBOX_TOKEN` in the environment) guards it.
`inbox_ingest` feeds the inbox to the governance ingest (`source="edge-hard"`, split pool).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cityloop.core.web import send_json

INBOX = Path("data") / "inbox" / "edge"
TOKEN_ENV = "CITYLOOP_INBOX_TOKEN"
MAX_BODY = 32 << 20
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
META_KEYS = ("camera_id", "model_version", "reason", "score", "ts", "frame_index")


class InboxStore:
    """The inbox folder: images/<sha>.jpg, meta/<sha>.json, received.jsonl."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / INBOX
        self.images = self.dir / "images"
        self.meta = self.dir / "meta"
        self._lock = threading.Lock()

    def put(self, ex: dict, node: str) -> bool:
        """Store one example (ValueError when it is malformed); True when it was new."""
        sha = str(ex.get("sha256", ""))
        if not SHA_RE.match(sha):
            raise ValueError("sha256 must be 64 lowercase hex characters")
        try:
            data = base64.b64decode(ex.get("image", ""), validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise ValueError(f"{sha}: image is not valid base64") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"{sha}: image bytes do not match their sha256 (corrupted upload)")
        missing = [k for k in META_KEYS if k not in ex]
        if missing:
            raise ValueError(f"{sha}: missing fields {missing}")
        meta = {"sha256": sha, **{k: ex[k] for k in META_KEYS}, "node": node, "received": time.time()}
        img_path, meta_path = self.images / f"{sha}.jpg", self.meta / f"{sha}.json"
        with self._lock:
            new = not meta_path.exists()
            if not img_path.exists():
                _atomic_write(img_path, data)
            if new:  # the sidecar last: its presence means the example is complete
                _atomic_write(meta_path, json.dumps(meta).encode())
            with open(self.dir / "received.jsonl", "a") as fh:
                fh.write(json.dumps({"sha256": sha, "node": node, "new": new, "ts": time.time()}) + "\n")
        return new

    def examples(self) -> list[dict]:
        """Every complete example's sidecar."""
        return [json.loads(p.read_text()) for p in sorted(self.meta.glob("*.json"))] if self.meta.exists() else []


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_handler(store: InboxStore) -> type[BaseHTTPRequestHandler]:
    """The request handler bound to one store."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: receipts go to received.jsonl
            pass

        def do_GET(self) -> None:
            if self.path == "/healthz":
                return send_json(self, 200, {"ok": True, "examples": len(list(store.meta.glob("*.json")))
                                         if store.meta.exists() else 0})
            send_json(self, 404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/v1/hard-examples":
                return send_json(self, 404, {"error": "not found"})
            token = os.environ.get(TOKEN_ENV)
            given = self.headers.get("Authorization", "")
            if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return send_json(self, 401, {"error": "missing or wrong inbox token"})
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                return send_json(self, 413 if length else 411, {"error": f"body must be 1..{MAX_BODY} bytes"})
            try:
                body = json.loads(self.rfile.read(length))
                examples, node = body["examples"], str(body.get("node", "?"))
                if not isinstance(examples, list):
                    raise ValueError("examples must be a list")
            except (ValueError, KeyError, TypeError) as exc:
                return send_json(self, 400, {"error": f"bad request: {exc}"})
            acked, duplicates, errors = [], [], []
            for ex in examples:
                try:
                    (acked if store.put(ex, node) else duplicates).append(ex["sha256"])
                except (ValueError, TypeError, AttributeError) as exc:
                    errors.append(str(exc))
            send_json(self, 200, {"acked": acked + duplicates, "new": len(acked), "duplicates": len(duplicates),
                              "errors": errors})

    return Handler


def serve_inbox(root: Path, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A started-but-not-serving server; call serve_forever() (or run it in a thread)."""
    return ThreadingHTTPServer((host, port), make_handler(InboxStore(root)))


def inbox_ingest(root: Path, dataset: str = "edge-hard", push: bool = False):
    """Feed every complete inbox example to the governance ingest (source edge-hard, split pool).

    Idempotent: the data repository deduplicates by sha256, so ingesting again adds nothing.
    """
    import pandas as pd

    from cityloop.governance.repository import open_repository

    store = InboxStore(root)
    rows = store.examples()
    if not rows:
        raise ValueError(f"the inbox {store.dir} holds no examples")
    repo = open_repository(Path(root), require_labels=False, min_frames_per_class=0)
    with tempfile.TemporaryDirectory(dir=Path(root) / ".cityloop") as tmp:
        src = Path(tmp) / "edge-hard"
        (src / "images").mkdir(parents=True)
        for r in rows:
            os.link(store.images / f"{r['sha256']}.jpg", src / "images" / f"{r['sha256']}.jpg") \
                if _same_fs(store.images, src) else shutil.copyfile(store.images / f"{r['sha256']}.jpg",
                                                                  src / "images" / f"{r['sha256']}.jpg")
        meta = pd.DataFrame([{"file_name": f"images/{r['sha256']}.jpg", "camera_id": r["camera_id"],
                              "timestamp": pd.Timestamp(r["ts"], unit="s", tz="UTC"), "reason": r["reason"],
                              "score": r["score"], "model_version": r["model_version"]} for r in rows])
        meta.to_parquet(src / "metadata.parquet")
        return repo.ingest(src, dataset, source="edge-hard", split="pool", docs=False, push=push)


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def main() -> None:  # pragma: no cover - `python -m edge.inbox --root R --port P`
    ap = argparse.ArgumentParser(description="cityloop center inbox for edge hard examples")
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--port", type=int, default=8701)
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args()
    srv = serve_inbox(a.root, a.port, a.host)
    print(f"inbox listening on http://{a.host}:{a.port} -> {InboxStore(a.root).dir}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
