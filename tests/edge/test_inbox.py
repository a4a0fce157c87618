"""The center inbox over real HTTP: idempotent by sha256, refuses corrupt uploads, feeds governance."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import threading
import time

import httpx
import pytest

from cityloop.bento.serving import free_port
from cityloop.core.web import Limits
from cityloop.edge.inbox import LIMITS, TOKEN_ENV, TOKEN_FILE, InboxStore, inbox_ingest, serve_inbox
from tests.rawhttp import send_raw

from .conftest import copy_workspace


@pytest.fixture
def center(model_ws, tmp_path, monkeypatch):
    monkeypatch.setenv("CITYLOOP_INBOX_TOKEN", "inbox-test-token")
    root = copy_workspace(model_ws.root, tmp_path / "ws")
    srv = serve_inbox(root, free_port()).start()
    yield root, srv.url
    srv.stop()


def _jpeg(seed: int) -> bytes:
    """A small real JPEG (the inbox checks each image's header)."""
    import cv2
    import numpy as np

    return cv2.imencode(".jpg", np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8))[1].tobytes()


def _example(data: bytes, **kw) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "image": base64.b64encode(data).decode(),
            "camera_id": "cam-1", "model_version": "cityloop-detector:v1", "reason": "low_confidence",
            "score": 0.7, "ts": time.time() - 60, "frame_index": 3, **kw}


def test_uploads_are_idempotent_and_checked(center, model_ws):
    root, url = center
    frames = sorted((model_ws.root / "raw" / "field-pool" / "images").glob("*.jpg"))[:3]
    examples = [_example(p.read_bytes()) for p in frames]
    auth = {"Authorization": "Bearer inbox-test-token"}
    assert httpx.post(url + "/v1/hard-examples", json={"examples": examples}).status_code == 401
    first = httpx.post(url + "/v1/hard-examples", json={"node": "n1", "examples": examples}, headers=auth).json()
    again = httpx.post(url + "/v1/hard-examples", json={"node": "n1", "examples": examples}, headers=auth).json()
    assert first["new"] == 3 and again["new"] == 0 and again["duplicates"] == 3
    assert sorted(again["acked"]) == sorted(e["sha256"] for e in examples)  # re-sent: acked again
    corrupt = _example(b"\xff\xd8 half a jpeg", sha256="0" * 64)
    bad = httpx.post(url + "/v1/hard-examples", json={"examples": [corrupt]}, headers=auth).json()
    assert bad["acked"] == [] and "do not match their sha256" in bad["errors"][0]  # never acked: resent later
    assert httpx.post(url + "/v1/hard-examples", content=b"{not json",
                      headers={**auth, "Content-Type": "application/json"}).status_code == 400
    store = InboxStore(root)
    assert len(list(store.images.glob("*.jpg"))) == 3 and len(store.examples()) == 3


@pytest.mark.slow
def test_inbox_feeds_the_governance_ingest_as_edge_source(center, model_ws):
    root, url = center
    frames = sorted((model_ws.root / "raw" / "field-pool" / "images").glob("*.jpg"))[:4]
    store = InboxStore(root)
    for p in frames:
        store.put(_example(p.read_bytes()), "n1")
    res = inbox_ingest(root)
    assert res.version.id == "edge-hard@v1"
    from cityloop.governance.repository import DataRepository

    manifest, _ = DataRepository(root).load("edge-hard@v1")
    assert len(manifest) == 4 and set(manifest["source"]) == {"edge-hard"} and set(manifest["split"]) == {"pool"}
    assert set(manifest["camera_id"]) == {"cam-1"}
    again = inbox_ingest(root)  # idempotent: the repository deduplicates by sha256
    assert again.new_frames == 0


# ------------------------------------------------------------------ closed by default, hostile clients
def _head(length: str, token: str) -> bytes:
    return (f"POST /v1/hard-examples HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_the_inbox_requires_a_token_made_private_on_its_first_start_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    ex = _example(_jpeg(1))
    srv = serve_inbox(tmp_path, 0).start()
    try:
        path = tmp_path / TOKEN_FILE
        token = path.read_text().strip()
        assert len(token) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600
        url = srv.url + "/v1/hard-examples"
        assert httpx.post(url, json={"examples": [ex]}).status_code == 401  # no token: closed by default
        assert httpx.post(url, json={"examples": [ex]}, headers={"Authorization": "Bearer guess"}).status_code == 401
        assert InboxStore(tmp_path).examples() == []  # refused before anything was stored
        ok = httpx.post(url, json={"examples": [ex]}, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["acked"] == [ex["sha256"]]
    finally:
        srv.stop()
    again = serve_inbox(tmp_path, 0).start()  # a restart keeps the token the nodes already hold
    try:
        assert path.read_text().strip() == token
        r = httpx.post(again.url + "/v1/hard-examples", json={"examples": [ex]},
                       headers={"Authorization": f"Bearer {token}"})
        assert r.json()["duplicates"] == 1
    finally:
        again.stop()


def test_hostile_uploads_are_refused_at_once_and_store_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "env-token")
    limits = Limits(max_body=LIMITS.max_body, body_idle_s=0.5)  # the inbox's body limit, a short stall
    srv = serve_inbox(tmp_path, 0, limits=limits).start()
    try:
        assert srv.server_address[0] == "127.0.0.1" and not (tmp_path / TOKEN_FILE).exists()  # env wins
        auth = {"Authorization": "Bearer env-token"}
        body = b'{"examples": []}'
        # a cross-site form can post text/plain without a preflight: refused
        r = httpx.post(srv.url + "/v1/hard-examples", content=body, headers={**auth, "Content-Type": "text/plain"})
        assert r.status_code == 415 and "access-control-allow-origin" not in r.headers
        reply, took = send_raw(srv.server_address, _head("-1", "env-token"))
        assert 400 <= _status(reply) < 500 and took < 2.0
        reply, took = send_raw(srv.server_address, _head(str(LIMITS.max_body + 1), "env-token") + b'{"exa')
        assert _status(reply) == 413 and took < 2.0  # refused on its announced size, the body never read
        ex = _example(b"\xff\xd8 half sent")
        whole = json.dumps({"node": "n1", "examples": [ex]}).encode()
        reply, took = send_raw(srv.server_address, _head(str(len(whole)), "env-token") + whole[: len(whole) // 2])
        assert _status(reply) == 408 and took < limits.body_idle_s + 1.5  # a stalled body is dropped
        assert InboxStore(tmp_path).examples() == []
        assert httpx.get(srv.url + "/healthz").json() == {"ok": True, "examples": 0}  # and it keeps serving
    finally:
        srv.stop()


def test_an_edge_uploader_finds_the_token_the_inbox_generated(tmp_path, monkeypatch):
    from cityloop.edge.node import NodeConfig, Uploader
    from cityloop.edge.outbox import HardExample, Outbox

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    srv = serve_inbox(tmp_path, 0).start()
    cfg = NodeConfig(root=tmp_path, name="n1", port=0, center=srv.url, upload_interval_s=0.05)
    cfg.dir.mkdir(parents=True)
    outbox = Outbox(cfg.dir / "outbox.db")
    ex = HardExample("cam-1", "cityloop-detector:v1", "low_confidence", 0.4, time.time(), 7, _jpeg(2))
    outbox.add(ex)
    outbox.close()
    stop = threading.Event()
    up = Uploader(cfg, stop)
    up.start()
    try:
        deadline = time.monotonic() + 20
        while not InboxStore(tmp_path).examples() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e["sha256"] for e in InboxStore(tmp_path).examples()] == [ex.sha256]
    finally:
        stop.set()
        up.join(10)
        srv.stop()
    assert up.failures == 0 and up.sent == 1


def test_a_receipt_cut_off_by_a_kill_is_logged_when_the_server_starts_again(tmp_path):
    """A kill between the sidecar's rename and its receipt line: the next start logs the example once."""
    store = InboxStore(tmp_path)
    kept, cut = _example(_jpeg(1)), _example(_jpeg(2))
    assert store.put(kept, "n1") and store.put(cut, "n1")
    log = store.dir / "received.jsonl"
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n" + lines[1][:20])  # the second line torn mid-write, as a SIGKILL leaves it
    serve_inbox(tmp_path, free_port()).socket.close()  # recovery runs before the server accepts anything
    text = log.read_text().splitlines()
    assert text[1] == lines[1][:20]  # the torn line stays on its own line, nothing appended onto it
    receipts = [json.loads(x) for x in text[:1] + text[2:]]
    new = sorted(r["sha256"] for r in receipts if r["new"])
    assert new == sorted([kept["sha256"], cut["sha256"]])  # each stored example has exactly one `new` receipt
    assert [r["sha256"] for r in receipts if r.get("recovered")] == [cut["sha256"]]
    assert InboxStore(tmp_path).recover() == 0  # idempotent: a second start adds nothing
