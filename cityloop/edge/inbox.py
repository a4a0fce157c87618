"""The center's inbox for hard examples: a small HTTP receiver, idempotent by content hash.

`POST /v1/hard-examples` with `{"examples": [{"sha256", "image" (base64), "camera_id",
"model_version", "reason", "score", "ts", "frame_index"}], "node": NAME}`. Each image is checked
against its sha256, written to `<root>/data/inbox/edge/images/<sha>.jpg` and its sidecar to
`meta/<sha>.json` (write to a temp file, fsync, rename: a kill leaves the file whole or absent),
and only then acknowledged. A frame already stored is acknowledged again and not rewritten, so
at-least-once uploads store every example exactly once. `received.jsonl` logs every receipt; a kill
between a sidecar's rename and its log line is repaired when the server starts again (`recover`: one
`"new": true, "recovered": true` line for each stored example the log never recorded).

Closed by default: every upload needs `Authorization: Bearer <token>`, the token from
`CITYLOOP_INBOX_TOKEN`, else from `<root>/.cityloop/inbox/token` (0600), generated on the first start.
The server is Starlette under uvicorn (cityloop.core.web): 127.0.0.1, JSON bodies only, a body limit,
timeouts and bounded concurrency.
`inbox_ingest` feeds the inbox to the governance ingest (`source="edge-hard"`, split pool).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from cityloop.core.images import ImageRefused, check_image, image_limit
from cityloop.core.web import HttpServer, Limits, json_response, read_json, require_bearer, token_from
from cityloop.core.web import make_app as web_app

INBOX = Path("data") / "inbox" / "edge"
TOKEN_ENV = "CITYLOOP_INBOX_TOKEN"
TOKEN_FILE = Path(".cityloop") / "inbox" / "token"
MAX_BODY = 32 << 20
# an edge uplink may be slow (32 MiB at 1 Mbit/s is about 4.5 min) but must keep sending
LIMITS = Limits(max_body=MAX_BODY, body_idle_s=30.0, body_total_s=600.0)
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
META_KEYS = ("camera_id", "model_version", "reason", "score", "ts", "frame_index")
MAX_TEXT = 200  # characters of camera_id, model_version, reason
MAX_TS = 4102444800  # 2100-01-01: a timestamp beyond it is a unit error (ms, µs), not a time


class InboxStore:
    """The inbox folder: images/<sha>.jpg, meta/<sha>.json, received.jsonl."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / INBOX
        self.images = self.dir / "images"
        self.meta = self.dir / "meta"
        self.max_pixels = image_limit(Path(root))
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
        check_meta(sha, ex)
        try:  # the header only: a decompression bomb is refused here, not in a later ingest
            check_image(data, self.max_pixels)
        except ImageRefused as exc:
            raise ValueError(f"{sha}: image refused: {exc}") from None
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

    def recover(self) -> int:
        """Log each stored example whose `new` receipt a kill cut off; returns how many were repaired."""
        if not self.meta.exists():
            return 0
        log = self.dir / "received.jsonl"
        logged, text = set(), log.read_text() if log.exists() else ""
        if text:
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill mid-write
                    continue
                if rec.get("new"):
                    logged.add(rec.get("sha256"))
        missing = [p for p in sorted(self.meta.glob("*.json")) if p.stem not in logged]
        with self._lock, open(log, "a") as fh:
            if text and not text.endswith("\n"):  # end a line torn by the kill before logging on
                fh.write("\n")
            for p in missing:
                node = json.loads(p.read_text()).get("node", "?")
                fh.write(json.dumps({"sha256": p.stem, "node": node, "new": True, "recovered": True,
                                     "ts": time.time()}) + "\n")
        return len(missing)

    def examples(self) -> list[dict]:
        """Every complete example's sidecar."""
        return [json.loads(p.read_text()) for p in sorted(self.meta.glob("*.json"))] if self.meta.exists() else []


def check_meta(sha: str, ex: dict) -> None:
    """ValueError naming the field when a hard example's metadata has the wrong type or size: what the
    inbox stores is later read by the governance ingest, so one `"ts": "x"` must not stop every ingest."""
    for key in ("camera_id", "model_version", "reason"):
        v = ex[key]
        if not isinstance(v, str) or not 0 < len(v) <= MAX_TEXT or not v.isprintable():
            raise ValueError(f"{sha}: {key} must be printable text of 1..{MAX_TEXT} characters")
    for key in ("score", "ts"):
        v = ex[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{sha}: {key} must be a finite number, not {type(v).__name__} {str(v)[:20]!r}")
    if not 0 <= ex["ts"] <= MAX_TS:
        raise ValueError(f"{sha}: ts must be seconds since 1970 (0..{MAX_TS}), not {ex['ts']}")
    v = ex["frame_index"]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{sha}: frame_index must be a whole number >= 0, not {str(v)[:20]!r}")


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


def inbox_token(root: Path, create: bool = False) -> str | None:
    """The inbox's bearer token: $CITYLOOP_INBOX_TOKEN when set, else `<root>/.cityloop/inbox/token`
    (mode 0600, generated by the inbox's first start when `create`). Edge nodes of the same workspace
    read the same file; a node on another machine gets the variable."""
    return token_from(TOKEN_ENV, Path(root) / TOKEN_FILE, create)


def make_app(store: InboxStore, token: str, limits: Limits = LIMITS) -> ASGIApp:
    """The inbox as an ASGI app bound to one store; every upload must carry `Bearer <token>`."""
    if not token:
        raise ValueError("the inbox needs a token (closed by default)")

    def health(request: Request) -> Response:
        n = len(list(store.meta.glob("*.json"))) if store.meta.exists() else 0
        return json_response({"ok": True, "examples": n})

    async def receive(request: Request) -> Response:
        require_bearer(request, token, "inbox token")  # before a byte of the body is read
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("examples"), list):
            raise HTTPException(400, 'bad request: expected {"examples": [...], "node": NAME}')
        return json_response(await run_in_threadpool(_store_all, store, body["examples"], str(body.get("node", "?"))))

    return web_app([Route("/healthz", health), Route("/v1/hard-examples", receive, methods=["POST"])], limits)


def _store_all(store: InboxStore, examples: list, node: str) -> dict:
    """Store each example; a malformed one is reported in `errors` and never acked (the node resends it)."""
    acked, duplicates, errors = [], [], []
    for ex in examples:
        try:
            (acked if store.put(ex, node) else duplicates).append(ex["sha256"])
        except (ValueError, TypeError, AttributeError) as exc:
            errors.append(str(exc))
    return {"acked": acked + duplicates, "new": len(acked), "duplicates": len(duplicates), "errors": errors}


def serve_inbox(root: Path, port: int, host: str = "127.0.0.1", limits: Limits = LIMITS) -> HttpServer:
    """The inbox's server, bound but not serving: `start()` (a thread) or `serve_forever()`.
    Its token is generated on the first start (see `inbox_token`)."""
    token = inbox_token(root, create=True)
    assert token is not None
    store = InboxStore(root)
    store.recover()
    return HttpServer(make_app(store, token, limits), host, port, limits, name="inbox")


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
    where = TOKEN_ENV if os.environ.get(TOKEN_ENV) else a.root / TOKEN_FILE
    print(f"inbox listening on {srv.url} -> {InboxStore(a.root).dir} (token: {where})", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
