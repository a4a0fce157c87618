"""The center inbox over real HTTP: idempotent by sha256, refuses corrupt uploads, feeds governance."""

from __future__ import annotations

import base64
import hashlib
import threading
import time

import httpx
import pytest

from cityloop.bento.serving import free_port
from cityloop.edge.inbox import InboxStore, inbox_ingest, serve_inbox

from .conftest import copy_workspace


@pytest.fixture
def center(model_ws, tmp_path, monkeypatch):
    monkeypatch.setenv("CITYLOOP_INBOX_TOKEN", "inbox-test-token")
    root = copy_workspace(model_ws.root, tmp_path / "ws")
    srv = serve_inbox(root, free_port())
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


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
    assert httpx.post(url + "/v1/hard-examples", content=b"{not json", headers=auth).status_code == 400
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
