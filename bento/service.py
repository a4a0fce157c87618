"""The cityloop detector as a BentoML 1.4 service over onnxruntime (no torch anywhere here).

Request (JSON): `{"images": ["<base64 JPEG/PNG>", ...]}` (one or many); response: one entry per
image, in order: `{"detections": [{"box": [x0, y0, x1, y1], "score", "label", "cls"}], "width",
"height", "model_version"}`. `POST /detect` is adaptively batched across requests;
`POST /detect_unbatched` runs each request alone (the benchmark's baseline).

The compact route `POST /detect_raw` takes frames as they are, no base64 and no JSON to parse: one
frame as the body (`Content-Type: image/jpeg`, `image/png` or `application/octet-stream`), or several
as the parts of a `multipart/mixed` body (one part per frame: a node sends the frames of several
cameras at once). It answers one entry per frame, in order:
`{"boxes": [[x0, y0, x1, y1, score, label], ...], "width", "height", "model_version"}` (labels index
`POST /info`'s `classes`): the same detections as `/detect`, adaptively batched the same way, with the
same 4xx for bad input. A caller that needs no box below some score says so in `X-Min-Score` (an edge
node: its hard-example band starts at 0.15), and the answer shrinks with it.

Settings come from the environment (defaults in `ServeSettings`), so the same file serves from a
bento (model beside it in `model/`) and straight from the registry (`CITYLOOP_MODEL_DIR`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from pydantic import AfterValidator, BaseModel, Field, PlainValidator
from python_multipart.multipart import MultipartParser, parse_options_header

from cityloop.core.images import DEFAULT_MAX_PIXELS, check_image
from cityloop.models.card import ModelCard
from cityloop.models.runtime import OnnxDetector, decode_image

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
RAW_PATH = "/detect_raw"
RAW_TYPES = frozenset({"image/jpeg", "image/png", "application/octet-stream"})
MULTI_TYPE = "multipart/mixed"
# The multipart boundary of the request being handled: the Guard reads it from the Content-Type header
# and the input validator (which sees only the body) splits the body's parts with it.
_BOUNDARY: ContextVar[bytes | None] = ContextVar("cityloop_raw_boundary", default=None)
# `X-Min-Score`: the lowest score the caller wants back (an edge node needs nothing below its selection band)
MIN_SCORE_HEADER = b"x-min-score"
_MIN_SCORE: ContextVar[float] = ContextVar("cityloop_raw_min_score", default=0.0)


@dataclass(frozen=True)
class RawFrame:
    """A decoded frame of the compact route and the lowest score its caller wants back."""

    image: np.ndarray
    min_score: float = 0.0


@dataclass(frozen=True)
class ServeSettings:
    """Serving tunables (env var in brackets); params.yaml `serve:` holds the measured defaults
    (read by cityloop.bento.serving.ServeParams: same names and defaults, tests/test_params.py)."""

    model_dir: Path  # [CITYLOOP_MODEL_DIR] model.onnx + card.json; default: ./model beside this file
    max_batch_size: int = 32  # [CITYLOOP_MAX_BATCH_SIZE] images per adaptive batch
    max_latency_ms: int = 1000  # [CITYLOOP_MAX_LATENCY_MS] queueing + inference budget (503 beyond; 100 ms
    # gave 503s at 16 concurrent clients in benchmarks/bench_serving.py)
    ort_threads: int = 1  # [CITYLOOP_ORT_THREADS] intra-op threads per server process (workers give the rest)
    ort_spinning: int = 0  # [CITYLOOP_ORT_SPINNING] 1: intra-op threads busy-wait (they take the event loop's CPU)
    workers: int = 1  # [CITYLOOP_WORKERS] server processes (each its own event loop, batcher and model): one per
    # core the node owns; one process's event loop and GIL cap it near 130 frames/s (benchmarks/bench_serving.py)
    max_images: int = 64  # [CITYLOOP_MAX_IMAGES] images per request
    max_bytes: int = 8 << 20  # [CITYLOOP_MAX_BYTES] request body limit (413 beyond)
    min_side: int = 16  # [CITYLOOP_MIN_SIDE] smallest accepted width/height in px
    max_side: int = 4096  # [CITYLOOP_MAX_SIDE] largest accepted width/height in px
    max_inflight: int = 64  # [CITYLOOP_MAX_INFLIGHT] concurrent requests before 503 + Retry-After
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # [CITYLOOP_MAX_IMAGE_PIXELS] width x height, checked in the
    # header before decoding; params.yaml `limits:` (the one limit of every door), not `serve:`
    token_env: str = "CITYLOOP_API_TOKEN"  # the name of the variable holding the optional token

    @classmethod
    def from_env(cls) -> ServeSettings:
        env = os.environ
        ints = {f: int(env[f"CITYLOOP_{f.upper()}"]) for f in (
            "max_batch_size", "max_latency_ms", "ort_threads", "ort_spinning", "workers", "max_images", "max_bytes",
            "min_side", "max_side", "max_inflight", "max_image_pixels") if env.get(f"CITYLOOP_{f.upper()}")}
        model_dir = Path(env.get("CITYLOOP_MODEL_DIR") or Path(__file__).resolve().with_name("model"))
        return cls(model_dir=model_dir, **ints)


SETTINGS = ServeSettings.from_env()


def _checked(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> RGB image, or ValueError (a 400) saying what is wrong: format and size read
    from the header before any pixel is decoded."""
    if not data:
        raise ValueError("empty image")
    header = check_image(data, SETTINGS.max_image_pixels)
    w, h = header.width, header.height
    if min(h, w) < SETTINGS.min_side or max(h, w) > SETTINGS.max_side:
        raise ValueError(f"image is {w}x{h} px: width and height must be within "
                         f"{SETTINGS.min_side}..{SETTINGS.max_side}")
    return decode_image(data, SETTINGS.max_image_pixels)


def split_parts(body: bytes, boundary: bytes, limit: int) -> list[bytes]:
    """The parts of a multipart/mixed body (python-multipart's parser); ValueError when it is malformed,
    cut short before its closing delimiter, empty, or has more than `limit` parts."""
    parts: list[bytearray] = []
    ended = False

    def begin() -> None:
        if len(parts) >= limit:
            raise ValueError(f"more than {limit} frames in one request")
        parts.append(bytearray())

    def data(buf: bytes, start: int, end: int) -> None:
        parts[-1] += buf[start:end]

    def end() -> None:
        nonlocal ended
        ended = True

    try:
        parser = MultipartParser(boundary, {"on_part_begin": begin, "on_part_data": data, "on_end": end})
        parser.write(body)
        parser.finalize()
    except ValueError as exc:
        raise ValueError(f"malformed multipart/mixed body: {exc}") from None
    if not ended:
        raise ValueError("malformed multipart/mixed body: no closing delimiter")
    if not parts:
        raise ValueError("multipart/mixed body without a frame")
    return [bytes(p) for p in parts]


def _raw_frames(body: bytes | list) -> list[RawFrame]:
    """The compact route's body (one encoded frame, or a multipart/mixed body of frames) -> the list of
    its images: the unit the adaptive batcher concatenates across requests. Idempotent (the input model
    may validate twice)."""
    if isinstance(body, list):
        return body
    if not isinstance(body, bytes | bytearray):
        raise ValueError("the body must be a JPEG/PNG image or a multipart/mixed body of them")
    boundary = _BOUNDARY.get()
    if boundary is not None:
        floor = _MIN_SCORE.get()
        return [RawFrame(_checked(part), floor) for part in split_parts(bytes(body), boundary, SETTINGS.max_images)]
    if body == b"{}":  # what BentoML's JSON parsing hands over for an empty body
        body = b""
    return [RawFrame(_checked(bytes(body)), _MIN_SCORE.get())]


def _check_image(text: str | np.ndarray) -> np.ndarray:
    """Base64 JPEG/PNG -> RGB image, or ValueError (a 400 for the caller) saying what is wrong.

    The header's format and size are checked before any pixel is decoded: a 109 KB PNG declaring
    30000x30000 px is refused in microseconds instead of allocating gigabytes. Idempotent: BentoML's
    input model may apply the validator twice (it did in 1.4.40).
    """
    if isinstance(text, np.ndarray):
        return text
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    return _checked(data)


# Base64 JPEG/PNG, decoded and checked during request validation (before batching), so a bad
# image fails only its own request with a 400 and never a batch of other callers.
EncodedImage = Annotated[str, AfterValidator(_check_image)]
ImageList = Annotated[list[EncodedImage], Field(min_length=1, max_length=SETTINGS.max_images)]
# The raw body as a root input: BentoML hands a root input whose schema is a binary string over
# unparsed; decoded during validation, so a bad frame fails only its own request.
RawFrames = Annotated[bytes, PlainValidator(_raw_frames, json_schema_input_type=bytes)]


class Box(BaseModel):
    box: list[float]  # x0, y0, x1, y1 in the image's own pixels
    score: float
    label: int  # model class index
    cls: str | None  # platform class name


class ImageResult(BaseModel):
    detections: list[Box]
    width: int
    height: int
    model_version: str


class Guard:
    """ASGI middleware: optional bearer token, body size limit, overload → 503 + Retry-After."""

    def __init__(self, app, token_env: str, max_bytes: int, max_inflight: int) -> None:
        self.app = app
        self.token_env = token_env
        self.max_bytes = max_bytes
        self.max_inflight = max_inflight
        self.inflight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        token = os.environ.get(self.token_env)
        if token:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return await _reply(send, 401, "missing or wrong API token (Authorization: Bearer <token>)",
                                    [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _reply(send, 413, f"request body is {int(length)} bytes; the limit is {self.max_bytes}")
        boundary, floor = None, 0.0
        if scope["path"] == RAW_PATH:
            given = headers.get(MIN_SCORE_HEADER)
            if given is not None:
                try:
                    floor = float(given)
                except ValueError:
                    floor = -1.0
                if not 0.0 <= floor <= 1.0:
                    return await _reply(send, 400, f"X-Min-Score must be a number within 0..1 (got {given[:20]!r})")
            kind, options = parse_options_header(headers.get(b"content-type", b""))
            kind = kind.decode("latin-1").lower()
            if kind == MULTI_TYPE:
                boundary = options.get(b"boundary")
                if not boundary:
                    return await _reply(send, 400, f"{MULTI_TYPE} without a boundary parameter")
            elif kind not in RAW_TYPES:
                return await _reply(send, 415, f"{RAW_PATH} takes one raw frame as the body (Content-Type "
                                    f"{', '.join(sorted(RAW_TYPES))}) or several as a {MULTI_TYPE} body "
                                    f"(got {kind or 'none'})")
        if self.inflight >= self.max_inflight:
            return await _reply(send, 503, "overloaded: too many requests in flight, retry later",
                                [(b"retry-after", b"1")])
        self.inflight += 1
        body = _BodyLimit(receive, send, self.max_bytes)
        token, floor_token = _BOUNDARY.set(boundary), _MIN_SCORE.set(floor)
        try:
            await self.app(scope, body.receive, body.send)
            if body.too_large and not body.replied:
                await body.reply_413()
        finally:
            _BOUNDARY.reset(token)
            _MIN_SCORE.reset(floor_token)
            self.inflight -= 1


class _BodyLimit:
    """receive/send wrappers: a streamed (chunked) body past the limit ends as a 413, not a 500.

    The app sees a client disconnect; whatever it answers then is replaced by the 413.
    Also adds Retry-After to the dispatcher's own 503 (latency budget exceeded).
    """

    def __init__(self, receive, send, max_bytes: int) -> None:
        self._receive, self._send, self.max_bytes = receive, send, max_bytes
        self.seen = 0
        self.too_large = self.replied = False

    async def receive(self):
        message = await self._receive()
        self.seen += len(message.get("body", b""))
        if self.seen > self.max_bytes:
            self.too_large = True
            return {"type": "http.disconnect"}
        return message

    async def send(self, message) -> None:
        if self.too_large:
            if message["type"] == "http.response.start" and not self.replied:
                await self.reply_413()
            return
        if message["type"] == "http.response.start" and message["status"] == 503:
            headers = list(message.get("headers") or [])
            if not any(k.lower() == b"retry-after" for k, _ in headers):
                message = {**message, "headers": [*headers, (b"retry-after", b"1")]}
        await self._send(message)

    async def reply_413(self) -> None:
        self.replied = True
        await _reply(self._send, 413, f"request body exceeds the limit of {self.max_bytes} bytes")


async def _reply(send, status: int, error: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    import json

    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


@bentoml.service(name="cityloop_detector", workers=SETTINGS.workers, traffic={"timeout": 30},
                 endpoints={"livez": "/livez", "readyz": "/readyz"})
class DetectorService:
    """One model version in onnxruntime; adaptive batching over requests."""

    def __init__(self) -> None:
        card = ModelCard.load(SETTINGS.model_dir / "card.json")
        self.model = OnnxDetector(SETTINGS.model_dir / "model.onnx", card, threads=SETTINGS.ort_threads,
                                  spinning=SETTINGS.ort_spinning)
        self.version = os.environ.get("CITYLOOP_MODEL_VERSION") or f"{card.name}:{card.version}"
        self.images = bentoml.metrics.Counter(name="cityloop_images", documentation="Images run",
                                              labelnames=["model_version"])

    def __is_ready__(self) -> bool:
        return self.model is not None

    def _run(self, images: list[np.ndarray]) -> list[ImageResult]:
        dets = self.model.detect(images, batch_size=SETTINGS.max_batch_size)
        self.images.labels(model_version=self.version).inc(len(images))
        return [ImageResult(detections=[Box(box=[d.x0, d.y0, d.x1, d.y1], score=d.score, label=d.label, cls=d.cls)
                                        for d in ds], width=img.shape[1], height=img.shape[0],
                            model_version=self.version) for img, ds in zip(images, dets)]

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    def detect(self, images: ImageList) -> list[ImageResult]:
        """Detections per image; images of concurrent requests share one onnxruntime batch."""
        return self._run(images)

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    def detect_raw(self, frames: RawFrames, /) -> list[dict]:
        """Compact route: raw JPEG/PNG frames in (one, or a multipart/mixed body), box arrays out (those
        scored at least the caller's X-Min-Score); batched like /detect."""
        rows = self.model.detect_arrays([f.image for f in frames], batch_size=SETTINGS.max_batch_size)
        self.images.labels(model_version=self.version).inc(len(frames))
        return [{"boxes": (r[r[:, 4] >= f.min_score] if f.min_score > 0 else r).tolist(), "width": f.image.shape[1],
                 "height": f.image.shape[0], "model_version": self.version} for f, r in zip(frames, rows)]

    @bentoml.api
    def detect_unbatched(self, images: ImageList) -> list[ImageResult]:
        """The same, each request run on its own (no adaptive batching)."""
        return self._run(images)

    @bentoml.api(route="/info")
    def info(self) -> dict:
        """The model version and the serving settings in force."""
        card = self.model.card
        return {"model_version": self.version, "classes": [card.platform_class(i) for i in range(len(card.classes))],
                "batch": {"max_batch_size": SETTINGS.max_batch_size, "max_latency_ms": SETTINGS.max_latency_ms},
                "ort_threads": SETTINGS.ort_threads, "max_images": SETTINGS.max_images,
                "max_bytes": SETTINGS.max_bytes, "max_image_pixels": SETTINGS.max_image_pixels,
                "token_required": bool(os.environ.get(SETTINGS.token_env))}


DetectorService.add_asgi_middleware(Guard, token_env=SETTINGS.token_env, max_bytes=SETTINGS.max_bytes,
                             max_inflight=SETTINGS.max_inflight)


def _cache_root_schema(api_name: str) -> None:
    """BentoML's root input rebuilds its JSON schema to parse every request body (IORootModel
    .model_validate_json calls model_json_schema(): 12% of the event loop's time on /detect_raw, measured
    with py-spy). The schema never changes: its no-argument form is computed once."""
    spec = DetectorService.apis[api_name].input_spec
    build = spec.model_json_schema
    schema = build()

    def cached(*args, **kwargs) -> dict:
        return dict(schema) if not args and not kwargs else build(*args, **kwargs)

    spec.model_json_schema = cached


_cache_root_schema("detect_raw")
