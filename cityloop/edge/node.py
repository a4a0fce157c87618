"""An edge node: serve the bento of the assigned model version, run camera streams through it,
hand detections to the analysis layer, select hard examples into the outbox, upload them.

State under `<root>/.cityloop/edge/<name>/`:

    assignment.json   {"model_version"}: what the center wants this node to serve (rollouts write it)
    schedule.json     this node's share of a schedule plan (`cityloop schedule apply` writes it): which
                      cameras, at how many frames/s, with which scenarios; none: every camera, frame, scenario
    status.json       heartbeat, model version, fps, latency, queue depth (`cityloop edge status`)
    server.json       pid/port/tag of the node's `bentoml serve` (adopted again after a crash)
    outbox.db         the durable outbox of hard examples (edge.outbox)
    detections.jsonl  the default analysis sink

The analysis hand-off is one callback, `on_detections(camera_id, ts, frame_index, detections,
model_version)` (see `DetectionSink`); issue 6's tracker plugs in with `--sink module:object`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np

from cityloop.bento.build import build_bento
from cityloop.bento.serving import DetectorClient, Server, ServingError, adopt_server, start_server, stop_server
from cityloop.core.settings import from_section
from cityloop.edge.outbox import HardExample, Outbox
from cityloop.edge.selection import Selector, SelectParams
from cityloop.edge.streams import Frame, round_robin
from cityloop.schedule.plan import NodeSchedule, Plan

log = logging.getLogger("cityloop.edge")
INBOX_TOKEN_ENV = "CITYLOOP_INBOX_TOKEN"
API_TOKEN_ENV = "CITYLOOP_API_TOKEN"
SCHEDULE_FILE = "schedule.json"


class DetectionSink(Protocol):
    """Where a node's detections go (the analysis layer: tracking, event rules)."""

    def on_detections(self, camera_id: str, ts: float, frame_index: int, detections: list[dict],
                      model_version: str, image: bytes | None = None) -> None: ...


class JsonlSink:
    """The default sink: one JSON line per frame."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fh = open(self.path, "a", buffering=1)

    def on_detections(self, camera_id: str, ts: float, frame_index: int, detections: list[dict],
                      model_version: str, image: bytes | None = None) -> None:
        self.fh.write(json.dumps({"camera_id": camera_id, "ts": ts, "frame_index": frame_index,
                                  "model_version": model_version, "detections": detections}) + "\n")


def load_sink(spec: str | None, node_dir: Path, streams: list[str] | None = None) -> DetectionSink:
    """`module:attr` (an object with on_detections, or a factory called with the node folder, and with the
    node's stream specs when it takes a `streams` argument: where it finds the cameras' zones and clocks)."""
    if not spec:
        return JsonlSink(node_dir / "detections.jsonl")
    mod, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(mod), attr or "sink")
    if not callable(obj) or hasattr(obj, "on_detections"):
        return obj
    takes_streams = "streams" in inspect.signature(obj).parameters
    return obj(node_dir, streams=list(streams or [])) if takes_streams else obj(node_dir)


@dataclass
class EdgeParams:
    """The `edge:` section of params.yaml: what every node of the fleet shares (`cityloop edge start`)."""

    heartbeat_s: float = 1.0
    stale_s: float = 10.0  # a status older than this shows as down
    upload_batch: int = 8  # hard examples per upload to the center inbox
    upload_interval_s: float = 0.5
    select: SelectParams = field(default_factory=SelectParams)  # `edge.select`: which frames are hard examples

    @classmethod
    def from_dict(cls, d: dict | None) -> EdgeParams:
        d = dict(d or {})
        select = SelectParams.from_dict(d.pop("select", None))
        top = from_section(cls, d, "edge")
        top.select = select
        return top


@dataclass
class NodeConfig:
    """One node's settings (the CLI fills them from params.yaml `edge:` and options)."""

    root: Path
    name: str
    port: int
    streams: list[str] = field(default_factory=list)
    center: str | None = None  # the center inbox URL, e.g. http://127.0.0.1:8701
    loop: bool = False  # replay streams when they end
    max_fps: float = 0.0  # 0: as fast as the node can
    select: SelectParams = field(default_factory=SelectParams)
    upload_batch: int = 8
    upload_interval_s: float = 0.5
    heartbeat_s: float = 1.0
    stale_s: float = 10.0
    sink: str | None = None
    serve_env: dict[str, str] = field(default_factory=dict)  # CITYLOOP_* settings for the service
    shadow: str | None = None  # a second registry version run in-process: disagreement selection

    @property
    def dir(self) -> Path:
        return node_dir(self.root, self.name)


def node_dir(root: Path, name: str) -> Path:
    return Path(root) / ".cityloop" / "edge" / name


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def assign(root: Path, name: str, model_version: str) -> None:
    """Tell node `name` to serve `model_version` (it swaps its server within a second or two)."""
    d = node_dir(root, name)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "assignment.json", {"model_version": model_version, "ts": time.time()})


class Uploader(threading.Thread):
    """Sends pending outbox rows to the center; acks only what the center acknowledged."""

    def __init__(self, cfg: NodeConfig, stop: threading.Event) -> None:
        super().__init__(name="uploader", daemon=True)
        self.cfg, self.stop_event = cfg, stop
        self.sent = self.failures = 0

    def run(self) -> None:
        import base64

        outbox = Outbox(self.cfg.dir / "outbox.db")
        token = os.environ.get(INBOX_TOKEN_ENV)
        http = httpx.Client(base_url=self.cfg.center or "", timeout=15,
                            headers={"Authorization": f"Bearer {token}"} if token else {})
        backoff = self.cfg.upload_interval_s
        while not self.stop_event.is_set():
            batch = outbox.pending(self.cfg.upload_batch)
            if not batch:
                self.stop_event.wait(self.cfg.upload_interval_s)
                continue
            body = {"node": self.cfg.name, "examples": [
                {**ex.meta(), "image": base64.b64encode(ex.image).decode()} for ex in batch]}
            try:
                outbox.attempted([ex.sha256 for ex in batch])
                r = http.post("/v1/hard-examples", json=body)
                r.raise_for_status()
                acked = r.json().get("acked", [])
                outbox.ack(acked)  # after the center's ack, never before
                self.sent += len(acked)
                backoff = self.cfg.upload_interval_s
                self.stop_event.wait(self.cfg.upload_interval_s)  # paced: edge uplinks are metered
            except (httpx.HTTPError, ValueError) as exc:
                self.failures += 1
                log.warning("upload failed (%s); retrying in %.1f s", exc, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        outbox.close()
        http.close()


class EdgeNode:
    """The node's main loop (blocking `run()`; SIGTERM/SIGINT stop it and its server)."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        cfg.dir.mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()
        self.server: Server | None = None
        self.version: str | None = None
        self.tag: str | None = None
        self.state = "starting"
        self.latency: deque[float] = deque(maxlen=200)
        self.frame_times: deque[float] = deque(maxlen=200)
        self.frames = self.errors = self.selected = self.skipped = 0
        self.streams_done = False
        self.schedule: NodeSchedule | None = None
        self._schedule_stamp: int | None = None
        self.selector = Selector(cfg.select)
        self.shadow = self._load_shadow(cfg.shadow) if cfg.shadow else None

    def _load_shadow(self, model_id: str):
        """The shadow version in onnxruntime (one thread): its boxes are compared with the served ones."""
        from cityloop.models.runtime import OnnxDetector
        from cityloop.models.store import ModelStore

        mv = ModelStore(self.cfg.root, track=False).get(model_id)
        return OnnxDetector(mv.model_path, mv.card, threads=1)

    def shadow_detections(self, data: bytes) -> list[dict] | None:
        if self.shadow is None:
            return None
        from cityloop.models.runtime import decode_image

        dets = self.shadow.detect([decode_image(data)])[0]
        return [{"box": [d.x0, d.y0, d.x1, d.y1], "score": d.score, "label": d.label, "cls": d.cls} for d in dets]

    # ------------------------------------------------------------------ serving
    def desired_version(self) -> str:
        a = read_json(self.cfg.dir / "assignment.json")
        if not a or not a.get("model_version"):
            raise RuntimeError(f"node {self.cfg.name} has no assignment ({self.cfg.dir / 'assignment.json'})")
        return a["model_version"]

    def ensure_server(self, version: str) -> None:
        """Serve `version`'s bento on the node's port: adopt a surviving server, or (re)start one."""
        built = build_bento(self.cfg.root, version)
        prev = read_json(self.cfg.dir / "server.json")
        log_path = self.cfg.dir / "serve.log"
        if self.server is None and prev and prev.get("port") == self.cfg.port:
            old = adopt_server(prev["pid"], prev["port"], prev["tag"], log_path)
            if old is not None and prev["tag"] == built.tag:
                self.server, self.version, self.tag = old, version, built.tag
                return
            if old is not None:
                stop_server(old)
        if self.server is not None:
            self.state = "switching"
            self.write_status()
            stop_server(self.server)
            self.server = None
        self.server = start_server(self.cfg.root, self.cfg.port, target=built.tag, log_path=log_path,
                                   extra_env=self.cfg.serve_env)
        write_json(self.cfg.dir / "server.json", {"pid": self.server.pid, "port": self.cfg.port,
                                                  "tag": built.tag, "model_version": version})
        self.version, self.tag = version, built.tag

    # ------------------------------------------------------------------ schedule
    def load_schedule(self) -> None:
        """(Re)read schedule.json when it changed; without one the node runs every camera, frame and scenario."""
        path = self.cfg.dir / SCHEDULE_FILE
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp == self._schedule_stamp:
            return
        self._schedule_stamp = stamp
        data = read_json(path) if stamp is not None else None
        if data is None:
            self.schedule = None
            return
        try:
            self.schedule = NodeSchedule(Plan.from_dict(data), self.cfg.name)
            log.info("schedule %s: %d tasks", self.schedule.plan.name, len(self.schedule.plan.tasks_of(self.cfg.name)))
        except (KeyError, TypeError, ValueError) as exc:  # keep what it ran so far
            log.error("%s is not a schedule plan (%s); keeping the previous one", path, exc)

    def scenarios_for(self, camera_id: str, ts: float) -> frozenset[str] | None:
        """The analysis layer's assignment: the planned scenarios (None: no schedule, every scenario)."""
        return self.schedule.assignment(camera_id, ts) if self.schedule is not None else None

    # ------------------------------------------------------------------ status
    def status(self, outbox: Outbox | None = None) -> dict:
        lat = np.asarray(self.latency) if self.latency else None
        now = time.time()
        recent = [t for t in self.frame_times if t >= now - 10]
        ob = outbox.stats() if outbox else {}
        return {"name": self.cfg.name, "pid": os.getpid(), "port": self.cfg.port,
                "url": f"http://127.0.0.1:{self.cfg.port}", "state": self.state, "model_version": self.version,
                "bento": self.tag, "server_pid": self.server.pid if self.server else None,
                "fps": round(len(recent) / 10, 2) if recent else 0.0,
                "latency_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat is not None else None,
                "latency_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat is not None else None,
                "frames": self.frames, "errors": self.errors, "selected": self.selected, "skipped": self.skipped,
                "schedule": self.schedule.report() if self.schedule is not None else None,
                "queue_depth": ob.get("pending"), "acked": ob.get("acked"), "streams": self.cfg.streams,
                "streams_done": self.streams_done, "center": self.cfg.center, "heartbeat": now,
                "stale_s": self.cfg.stale_s}

    def write_status(self, outbox: Outbox | None = None) -> None:
        write_json(self.cfg.dir / "status.json", self.status(outbox))

    # ------------------------------------------------------------------ frames
    def process(self, frame: Frame, client: DetectorClient, outbox: Outbox, sink: DetectionSink) -> None:
        """Detect one frame, hand it to the sink, maybe keep it as a hard example."""
        t0 = time.perf_counter()
        try:
            result = client.detect([frame.data])[0]
        except ServingError as exc:
            self.errors += 1
            if exc.status < 500:  # the frame itself is bad (a broken camera image): skip it
                log.warning("%s frame %d rejected: %s", frame.camera_id, frame.index, exc)
                return
            time.sleep(exc.retry_after or 0.5)
            return
        except httpx.HTTPError as exc:
            self.errors += 1
            log.warning("server unreachable (%s)", exc)
            time.sleep(0.5)
            return
        self.latency.append((time.perf_counter() - t0) * 1000)
        self.frames += 1
        self.frame_times.append(time.time())
        dets = result["detections"]
        # the encoded frame too: the analysis layer keeps it as the snapshot of an event it raises
        sink.on_detections(frame.camera_id, frame.ts, frame.index, dets, result["model_version"], image=frame.data)
        pick = self.selector.select(frame.camera_id, frame.data, dets, self.shadow_detections(frame.data))
        budget = self.cfg.select.budget_per_hour  # 0: no cap
        if pick and (not budget or outbox.selected_since(time.time() - 3600) < budget):
            reason, score = pick
            if outbox.add(HardExample(frame.camera_id, result["model_version"], reason, score, frame.ts,
                                      frame.index, frame.data)):
                self.selected += 1

    def run(self) -> None:
        """Serve, stream, select and upload until stopped."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        outbox = Outbox(self.cfg.dir / "outbox.db")
        uploader = Uploader(self.cfg, self.stop) if self.cfg.center else None
        sink = load_sink(self.cfg.sink, self.cfg.dir, self.cfg.streams)
        if getattr(sink, "assignment", False) is None:  # an Analyzer: it runs what the schedule assigns
            sink.assignment = self.scenarios_for
        self.load_schedule()
        try:
            self.ensure_server(self.desired_version())
            self.state = "serving"
            if uploader:
                uploader.start()
            client = DetectorClient(self.server.url, os.environ.get(API_TOKEN_ENV))
            frames = round_robin(self.cfg.streams, self.cfg.loop) if self.cfg.streams else iter(())
            last_beat = last_check = 0.0
            while not self.stop.is_set():
                now = time.monotonic()
                if now - last_check >= 0.5:
                    last_check = now
                    self.load_schedule()
                    want = self.desired_version()
                    if want != self.version:
                        self.ensure_server(want)
                        self.state = "serving"
                        client = DetectorClient(self.server.url, os.environ.get(API_TOKEN_ENV))
                if now - last_beat >= self.cfg.heartbeat_s:
                    last_beat = now
                    self.write_status(outbox)
                frame = None if self.streams_done else next(frames, None)
                if frame is None:
                    self.streams_done = True
                    self.stop.wait(0.2)
                    continue
                if self.schedule is not None and not self.schedule.take(frame.camera_id, frame.ts):
                    self.skipped += 1  # not planned now, or not due at the camera's planned frames/s
                    continue
                self.process(frame, client, outbox, sink)
                if self.cfg.max_fps > 0:
                    self.stop.wait(1.0 / self.cfg.max_fps)
        finally:
            self.stop.set()
            if uploader and uploader.is_alive():
                uploader.join(20)
            if self.server is not None:
                stop_server(self.server)
                (self.cfg.dir / "server.json").unlink(missing_ok=True)
                self.server = None
            self.state = "stopped"
            self.write_status(outbox)
            outbox.close()


def config_dict(cfg: NodeConfig) -> dict:
    d = asdict(cfg)
    d["root"] = str(cfg.root)
    return d
