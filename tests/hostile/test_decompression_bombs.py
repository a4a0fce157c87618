"""Decompression bombs and mistyped metadata at every door an image comes through: governance ingest
(Pillow's path), the center inbox, the Bento service (OpenCV's path) and the edge node's own decoding.

A bomb is a small file whose header declares a huge image: a 14000x14000 one-bit PNG is 24 KB on disk
and 196 Mpx (over Pillow's own guard), a 6000x6000 one-bit PNG is 4 KB and 36 Mpx (under Pillow's
guard, over cityloop's `limits.max_image_pixels`, and OpenCV's `imdecode` would allocate 108 MB of
BGR for it). Each is refused from its header with a reason, and what came with it lands.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from cityloop.core.images import DEFAULT_MAX_PIXELS, ImageRefused, check_image, decode_image
from cityloop.edge.inbox import TOKEN_ENV, InboxStore, serve_inbox
from cityloop.edge.selection import thumbnail
from cityloop.governance.gate import GateParams
from cityloop.governance.repository import DataRepository
from tests.bento.conftest import TOKEN, field_images, server  # noqa: F401  (the real Bento server fixture)


def png_bomb(width: int, height: int) -> bytes:
    """A valid one-bit greyscale PNG of width x height zeros, built row by row (never in memory whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BOMBS = {"pillow-guard.png": (14000, 14000), "over-limit.png": (6000, 6000)}


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {name: png_bomb(*size) for name, size in BOMBS.items()}


def jpeg(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def test_the_bombs_are_what_they_claim(bombs):
    assert len(bombs["pillow-guard.png"]) < 40_000 and len(bombs["over-limit.png"]) < 10_000
    for name, data in bombs.items():
        t0 = time.perf_counter()
        with pytest.raises(ImageRefused, match="over the limit"):
            check_image(data)
        assert time.perf_counter() - t0 < 1.0, name  # the header only: no pixel was decoded
    w, h = BOMBS["over-limit.png"]
    assert w * h > DEFAULT_MAX_PIXELS and check_image(png_bomb(64, 48)).pixels == 64 * 48  # the control


def test_ingest_quarantines_each_bomb_with_its_reason_and_lands_the_rest(workspace: Path, lab_copy: Path, bombs):
    n_good = len(list((lab_copy / "images").iterdir()))
    for name, data in bombs.items():
        (lab_copy / "images" / name).write_bytes(data)
    res = DataRepository(workspace, GateParams.from_dict({})).ingest(lab_copy, "lab", docs=False, push=False)
    reasons = {q["file"]: q["reason"] for q in res.quarantined}
    assert set(reasons) == {f"images/{name}" for name in BOMBS}
    assert all("over the limit" in r and "limits.max_image_pixels" in r for r in reasons.values()), reasons
    assert res.new_frames == n_good and res.version.id == "lab@v1"
    kept = workspace / "data" / "quarantine" / res.ingest_id / "files" / "images"
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == bombs  # nothing lost: the evidence is kept


def test_the_inbox_refuses_bombs_and_mistyped_metadata_per_example_and_stores_the_rest(tmp_path: Path, bombs,
                                                                                      monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "inbox-hostile-token")

    def example(data: bytes, **kw) -> dict:
        return {"sha256": hashlib.sha256(data).hexdigest(), "image": base64.b64encode(data).decode(),
                "camera_id": "cam-1", "model_version": "cityloop-detector:v1", "reason": "low_confidence",
                "score": 0.4, "ts": time.time() - 60, "frame_index": 3, **kw}

    good = [example(jpeg(i)) for i in range(3)]
    hostile = {"bomb": example(bombs["pillow-guard.png"]), "bomb-cv": example(bombs["over-limit.png"]),
               "ts": example(jpeg(10), ts="x"), "nan": example(jpeg(11), score=float("nan")),
               "index": example(jpeg(12), frame_index=True), "camera": example(jpeg(13), camera_id={"$gt": ""}),
               "ms": example(jpeg(14), ts=time.time() * 1000)}
    srv = serve_inbox(tmp_path, 0).start()
    try:
        body = {"node": "n1", "examples": [good[0], *hostile.values(), *good[1:]]}
        raw = json.dumps(body).encode()  # Python writes the NaN literal a hostile client would send
        r = httpx.post(srv.url + "/v1/hard-examples", content=raw,
                       headers={"Authorization": "Bearer inbox-hostile-token", "Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert sorted(out["acked"]) == sorted(e["sha256"] for e in good) and out["new"] == 3
        errors = out["errors"]
        assert len(errors) == len(hostile)
        text = "\n".join(errors)
        for needle in ("image refused", "over the limit", "ts must be", "score must be", "frame_index must be",
                       "camera_id must be"):
            assert needle in text, (needle, errors)
        assert sum("image refused" in e for e in errors) == 2
        assert httpx.get(srv.url + "/healthz").json() == {"ok": True, "examples": 3}  # up, and only the good
    finally:
        srv.stop()
    stored = InboxStore(tmp_path)
    assert sorted(e["sha256"] for e in stored.examples()) == sorted(e["sha256"] for e in good)
    assert all(isinstance(e["ts"], float) for e in stored.examples())  # what a later ingest reads is typed


def test_the_edge_nodes_own_decoding_refuses_bombs(bombs):
    for data in bombs.values():
        assert thumbnail(data) is None  # novelty selection: a refused frame is no hard example
        with pytest.raises(ImageRefused):
            decode_image(data)  # the analysis engine's snapshots


@pytest.mark.slow
def test_the_bento_service_answers_bombs_400_in_milliseconds_and_keeps_serving(server, model_ws, bombs):  # noqa: F811
    auth = {"Authorization": f"Bearer {TOKEN}"}
    frame = base64.b64encode(field_images(model_ws.root, 1)[0]).decode()
    for name, data in bombs.items():
        t0 = time.perf_counter()
        r = httpx.post(server.url + "/detect", json={"images": [base64.b64encode(data).decode()]}, headers=auth,
                       timeout=30)
        took = time.perf_counter() - t0
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
        assert "over the limit" in r.text and took < 2.0, (name, took)
        # a bomb in a batch refuses that request only; the next one is served
        ok = httpx.post(server.url + "/detect", json={"images": [frame]}, headers=auth, timeout=30)
        assert ok.status_code == 200 and "detections" in ok.json()[0]
    assert server.alive()
