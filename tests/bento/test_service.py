"""The service through a real `bentoml serve` on 127.0.0.1: parity, bad input, token, overload."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest

from cityloop.bento.serving import DetectorClient, ServingError, multipart_frames
from cityloop.models.runtime import OnnxDetector, decode_image
from cityloop.models.store import ModelStore

from .conftest import TOKEN, field_images


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(server, body=None, token: str | None = TOKEN, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(server.url + "/detect", json=body, headers={**headers, **kw.pop("headers", {})},
                      timeout=30, **kw)


def _assert_same(served: list[dict], local, version: str) -> None:
    assert len(served) == len(local)
    for s, dets in zip(served, local):
        assert s["model_version"] == version
        assert [d["cls"] for d in s["detections"]] == [d.cls for d in dets]
        if dets:
            np.testing.assert_allclose([d["box"] for d in s["detections"]],
                                       [[d.x0, d.y0, d.x1, d.y1] for d in dets], atol=1e-3)
            np.testing.assert_allclose([d["score"] for d in s["detections"]], [d.score for d in dets], atol=1e-5)


def test_detections_equal_in_process_onnxruntime(server, model_ws):
    """Served detections (single request, and many concurrent requests batched together) are
    exactly what onnxruntime gives in-process for the same bytes."""
    mv = ModelStore(model_ws.root, track=False).get(model_ws.model_id)
    images = field_images(model_ws.root, 12)
    local = OnnxDetector(mv.model_path, mv.card).detect([decode_image(b) for b in images])
    assert sum(len(d) for d in local) > 0, "the test model should find something"
    client = DetectorClient(server.url, TOKEN)
    _assert_same(client.detect(images), local, mv.id)
    with ThreadPoolExecutor(2) as pool:  # one image per request, two in flight: batched by the server
        served = list(pool.map(lambda b: client.detect([b])[0], images))
    _assert_same(served, local, mv.id)
    _assert_same(client.detect(images[:3], endpoint="/detect_unbatched"), local[:3], mv.id)


def _raw(server, data: bytes, token: str | None = TOKEN, kind: str = "image/jpeg") -> httpx.Response:
    headers = {"content-type": kind, **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx.post(server.url + "/detect_raw", content=data, headers=headers, timeout=30)


def test_compact_route_returns_the_json_routes_detections(server, model_ws):
    """/detect_raw (raw JPEG body, box arrays out) gives exactly the detections of /detect and of
    in-process onnxruntime, alone and batched with concurrent requests."""
    mv = ModelStore(model_ws.root, track=False).get(model_ws.model_id)
    images = field_images(model_ws.root, 12)
    local = OnnxDetector(mv.model_path, mv.card).detect([decode_image(b) for b in images])
    client = DetectorClient(server.url, TOKEN)
    json_route = client.detect(images)
    alone = [client.detect_frame(b) for b in images]
    assert client.compact
    _assert_same(alone, local, mv.id)
    for a, j in zip(alone, json_route):
        assert a["detections"] == j["detections"] and (a["width"], a["height"]) == (j["width"], j["height"])
    with ThreadPoolExecutor(2) as pool:  # one frame per request, two in flight: batched by the server
        batched = list(pool.map(client.detect_frame, images))
    _assert_same(batched, local, mv.id)
    raw = _raw(server, images[0]).json()
    assert set(raw[0]) == {"boxes", "width", "height", "model_version"} and len(raw[0]["boxes"][0]) == 6
    together = client.detect_frames(images[:8])  # eight cameras' frames in one multipart/mixed request
    assert [r["detections"] for r in together] == [a["detections"] for a in alone[:8]]
    floored = client.detect_frames(images[:8], min_score=0.3)  # X-Min-Score: what a node asks for
    assert [r["detections"] for r in floored] == [[d for d in a["detections"] if d["score"] >= 0.3]
                                                  for a in alone[:8]]
    assert sum(map(len, (r["detections"] for r in floored))) < sum(map(len, (a["detections"] for a in alone[:8])))


def test_compact_route_refuses_a_bad_multipart_body(server, model_ws):
    good = field_images(model_ws.root, 2)
    body, kind = multipart_frames(good)
    assert len(_raw(server, body, kind=kind).json()) == 2
    cases = {"cut short": (body[:-30], kind, "no closing delimiter"),
             "no boundary parameter": (body, "multipart/mixed", "without a boundary"),
             "another boundary": (body, "multipart/mixed; boundary=nope", "malformed multipart"),
             "a broken frame among good ones": (multipart_frames([good[0], b"junk"])[0], None, "not a decodable"),
             "more frames than allowed": (multipart_frames([good[0]] * 65)[0], None, "more than 64 frames")}
    for what, (data, ctype, message) in cases.items():
        if ctype is None:  # the body's own boundary
            ctype = "multipart/mixed; boundary=" + data.split(b"\r\n", 1)[0][2:].decode()
        r = _raw(server, data, kind=ctype)
        assert r.status_code == 400, (what, r.status_code, r.text)
        assert message in r.text, (what, r.text)
    assert server.alive()


def test_compact_route_refuses_bad_input_as_the_json_route_does(server, model_ws):
    good = field_images(model_ws.root, 1)[0]
    tiny = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    cases = {"undecodable bytes": (b"this is not a jpeg", "image/jpeg", 400, "not a decodable JPEG/PNG"),
             "wrong size": (tiny, "image/png", 400, "8x8 px"),
             "empty body": (b"", "application/octet-stream", 400, "empty image"),
             "a form instead of a frame": (good, "multipart/form-data; boundary=x", 415, "one raw frame"),
             "JSON instead of a frame": (b'{"images": []}', "application/json", 415, "one raw frame"),
             "too large": (b"x" * (2 << 20), "image/jpeg", 413, "limit")}
    for what, (data, kind, status, message) in cases.items():
        r = _raw(server, data, kind=kind)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert message in r.text, (what, r.text)
        same = _post(server, {"images": [_b64(data)]}) if status == 400 else None
        assert same is None or same.status_code == 400, (what, same.text)  # the JSON route agrees
    for floor in ("high", "1.5", "-0.1"):
        r = httpx.post(server.url + "/detect_raw", content=good, timeout=30, headers={
            "content-type": "image/jpeg", "x-min-score": floor, "Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 400 and "X-Min-Score" in r.text, (floor, r.text)
    assert _raw(server, good, token=None).status_code == 401
    assert _raw(server, good).status_code == 200 and server.alive()


def test_bad_input_gets_4xx_with_a_message_and_the_worker_survives(server, model_ws):
    good = field_images(model_ws.root, 1)[0]
    tiny = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    cases = {
        "undecodable bytes": ({"images": [_b64(b"this is not a jpeg")]}, 400, "not a decodable JPEG/PNG"),
        "not base64": ({"images": ["%%%"]}, 400, "not valid base64"),
        "wrong size": ({"images": [_b64(tiny)]}, 400, "8x8 px"),
        "empty batch": ({"images": []}, 400, "at least 1 item"),
        "too many images": ({"images": [_b64(good)] * 65}, 400, "at most 64"),
        "no images field": ({"frames": [_b64(good)]}, 400, "Field required"),
        "one bad among good": ({"images": [_b64(good), _b64(b"junk")]}, 400, "images"),
    }
    for what, (body, status, message) in cases.items():
        r = _post(server, body)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert message in r.text, (what, r.text)
    big = _post(server, content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert big.status_code == 413 and "limit" in big.json()["error"]
    chunks = (b"x" * (256 << 10) for _ in range(8))  # 2 MiB streamed without a Content-Length
    streamed = _post(server, content=chunks, headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "limit" in streamed.json()["error"]
    assert _post(server, {"images": [_b64(good)]}).status_code == 200  # still serving
    assert server.alive()


def test_token_is_enforced_when_set(server, model_ws):
    body = {"images": [_b64(field_images(model_ws.root, 1)[0])]}
    assert _post(server, body, token=None).status_code == 401
    wrong = _post(server, body, token="wrong")
    assert wrong.status_code == 401 and TOKEN not in wrong.text
    assert _post(server, body).status_code == 200
    for probe in ("/livez", "/readyz", "/metrics"):  # probes and scraping stay open
        assert httpx.get(server.url + probe, timeout=10).status_code == 200


def test_overload_answers_503_with_retry_after(server, model_ws):
    body = {"images": [_b64(b) for b in field_images(model_ws.root, 8)] * 8}  # 64 images per request
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: _post(server, body), range(12)))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes, codes
    assert set(codes) <= {200, 503}, codes
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 503)
    with pytest.raises(ServingError) as exc:
        DetectorClient(server.url, TOKEN).detect([])
    assert exc.value.status == 400
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200


def test_metrics_count_images(server):
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert "cityloop_images_total" in text and 'model_version="cityloop-detector:v1"' in text
    assert 'bentoml_service_request_total{endpoint="/detect",http_response_code="400"' in text
