"""An edge node: serve the bento of the assigned model version, run camera streams through it,
hand detections to the analysis layer, select hard examples into the outbox, upload them.

State under `<root>/.cityloop/edge/<name>/`:

    assignment.json   {"model_version"}: what the center wants this node to serve (rollouts write it)
    schedule.json     this node's share of a schedule plan (`cityloop schedule apply` writes it): which
                      cameras, at how many frames/s, with which scenarios; none: every camera, frame, scenario
    status.json       heartbeat, model version, fps, latency, queue depth, failures (`cityloop edge status`)
    server.json       pid/start time/port/tag of the node's `bentoml serve` (adopted again after a crash;
                      a server still starting is recorded under "next")
    outbox.db         the durable outbox of hard examples (edge.outbox)
    detections.jsonl  the default analysis sink

The analysis hand-off is one callback, `on_detections(camera_id, ts, frame_index, detections,
model_version)` (see `DetectionSink`); issue 6's tracker plugs in with `--sink module:object`. It
runs in a worker of its own (edge.supervise.SinkWorker): a sink that raises or blocks is reported in
status.json and never stops the frame loop.

A new assignment is served blue/green: the new version's server starts on another port while the
old one keeps serving; the node switches its client over once the new one answers its readiness
probe, and only then stops the old one (no frame goes without detections). A version that fails to
start, or a server that dies, is recorded in status.json (`last_failure`) and tried again after an
exponential backoff (edge.retry_base_s .. retry_max_s); meanwhile the old version keeps serving.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import os
import signal
import socket
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np

from cityloop.bento.build import build_bento
from cityloop.bento.serving import (
    DetectorClient,
    Server,
    ServingError,
    adopt_server,
    free_port,
    start_server,
    stop_server,
)
from cityloop.core.procs import tail
from cityloop.core.settings import from_section
from cityloop.edge.outbox import HardExample, Outbox
from cityloop.edge.selection import Selector, SelectParams
from cityloop.edge.streams import Frame, round_robin
from cityloop.edge.supervise import Failures, Launch, SinkWorker
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
    upload_max_bytes: int = 0  # largest upload body (0: the center inbox's own limit, edge.inbox.MAX_BODY)
    max_attempts: int = 5  # refusals by the center before a hard example goes to the outbox's dead letter
    sink_queue: int = 256  # frames waiting for a slow or failing analysis sink before new ones are dropped
    sink_retries: int = 2  # further tries of a frame whose sink call raised
    ready_timeout_s: float = 120.0  # a new server's start-up, up to its readiness probe
    retry_base_s: float = 2.0  # backoff after a version failed to start (or its server died): doubles
    retry_max_s: float = 300.0  # ... up to this
    inflight: int = 8  # requests in flight to the node's server at once: its adaptive batcher joins them
    frames_per_request: int = 8  # frames of the node's cameras sent in one request
    min_score: float = 0.15  # boxes scored lower are not sent back (at or below select.low_conf_min and the
    # analysis tracker's min_score: neither looks lower)
    select: SelectParams = field(default_factory=SelectParams)  # `edge.select`: which frames are hard examples

    def node_settings(self) -> dict:
        """The fields a NodeConfig shares with this section (all but `select`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "select"}

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
    upload_max_bytes: int = 0
    max_attempts: int = 5
    heartbeat_s: float = 1.0
    stale_s: float = 10.0
    sink_queue: int = 256
    sink_retries: int = 2
    ready_timeout_s: float = 120.0
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    sink: str | None = None
    serve_env: dict[str, str] = field(default_factory=dict)  # CITYLOOP_* settings for the service
    shadow: str | None = None  # a second registry version run in-process: disagreement selection
    inflight: int = 8  # requests sent to the server before the first answer is awaited (it batches them)
    frames_per_request: int = 8  # frames sent together in one request (the compact route's multipart body)
    min_score: float = 0.15  # the lowest score the node asks the server for (its selection and sink use no lower)

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


REFUSALS = (400, 413, 415, 422)  # the center refuses the body itself: sending it again as it is will not help


class Uploader(threading.Thread):
    """Sends pending outbox rows to the center; acks only what the center acknowledged.

    Each request's body stays under `max_bytes` (the inbox's body limit, `edge.upload_max_bytes`);
    an example that could never fit, or that the center refused `edge.max_attempts` times, goes to
    the outbox's dead letter so the examples behind it keep flowing. A batch refused as a whole is
    sent again in halves until the refused example stands alone."""

    def __init__(self, cfg: NodeConfig, stop: threading.Event) -> None:
        super().__init__(name="uploader", daemon=True)
        self.cfg, self.stop_event = cfg, stop
        self.sent = self.failures = self.refused = 0
        self.limit = cfg.upload_batch  # halved while the center refuses whole batches

    @property
    def max_bytes(self) -> int:
        from cityloop.edge.inbox import MAX_BODY

        return min(self.cfg.upload_max_bytes or MAX_BODY, MAX_BODY)

    def _take(self, outbox: Outbox) -> list[HardExample]:
        """The next batch; examples too large for any request go to the dead letter at once."""
        batch, oversized = outbox.batch(self.limit, self.max_bytes)
        for ex in oversized:
            why = f"{ex.encoded_size()} bytes encoded: over the {self.max_bytes}-byte upload body limit"
            outbox.dead_letter(ex.sha256, why)
            log.error("hard example %s moved to the dead letter: %s", ex.sha256[:12], why)
        return batch

    def _refused(self, outbox: Outbox, batch: list[HardExample], why: str, whole: bool = True) -> None:
        """The center answered and did not take these: a batch refused as a whole is halved; a lone
        example (or each one the center named by not acknowledging it) counts one refusal."""
        self.refused += 1
        if whole and len(batch) > 1:
            self.limit = max(1, len(batch) // 2)
            return
        for sha in outbox.refused([ex.sha256 for ex in batch], why, self.cfg.max_attempts):
            log.error("hard example %s moved to the dead letter after %d refusals: %s", sha[:12],
                      self.cfg.max_attempts, why)

    def run(self) -> None:
        from cityloop.edge.inbox import inbox_token

        outbox = Outbox(self.cfg.dir / "outbox.db")
        http = httpx.Client(base_url=self.cfg.center or "", timeout=15)
        backoff = self.cfg.upload_interval_s
        while not self.stop_event.is_set():
            batch = self._take(outbox)
            if not batch:
                self.stop_event.wait(self.cfg.upload_interval_s)
                continue
            body = {"node": self.cfg.name, "examples": [ex.upload_item() for ex in batch]}
            try:
                outbox.attempted([ex.sha256 for ex in batch])
                # the center's token: $CITYLOOP_INBOX_TOKEN, else the workspace's token file (read each
                # time: the inbox may generate it after this node started)
                token = inbox_token(self.cfg.root)
                r = http.post("/v1/hard-examples", json=body,
                              headers={"Authorization": f"Bearer {token}"} if token else {})
                if r.status_code in REFUSALS:
                    self._refused(outbox, batch, f"HTTP {r.status_code}: {r.text[:300]}")
                    self.stop_event.wait(self.cfg.upload_interval_s)
                    continue
                r.raise_for_status()
                answer = r.json()
                if not isinstance(answer, dict):
                    raise ValueError(f"the center answered {str(answer)[:80]!r}, not an object")
                acked = [str(a) for a in answer.get("acked", [])]
                outbox.ack(acked)  # after the center's ack, never before
                self.sent += len(acked)
                left = [ex for ex in batch if ex.sha256 not in set(acked)]
                if left:  # answered, but not taken: its errors say why
                    why = "; ".join(map(str, answer.get("errors") or []))[:500] or "not acknowledged"
                    self._refused(outbox, left, why, whole=False)
                else:
                    self.limit = self.cfg.upload_batch
                backoff = self.cfg.upload_interval_s
                self.stop_event.wait(self.cfg.upload_interval_s)  # paced: edge uplinks are metered
            except (httpx.HTTPError, ValueError) as exc:
                self.failures += 1
                log.warning("upload failed (%s); retrying in %.1f s", exc, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        outbox.close()
        http.close()


@dataclass
class InFlight:
    """Frames sent to the server in one request, their answers to come."""

    frames: list[Frame]
    client: DetectorClient
    sent: float  # perf_counter at sending
    future: Future


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
        self.client: DetectorClient | None = None  # the serving server's client (None: nothing serves)
        self.launch: Launch | None = None  # a version's server starting in the background
        self.failures = Failures(cfg.retry_base_s, cfg.retry_max_s)
        self.sink_worker: SinkWorker | None = None
        self.swaps = self.restarts = self.select_errors = 0
        self.last_error: dict | None = None  # the last failed request to the server, or selection error
        self._failed_requests = 0  # in a row: a server that stops answering is restarted
        self._next: dict | None = None  # server.json's record of the server starting now
        self._retiring: list[threading.Thread] = []
        self._pending: deque[InFlight] = deque()  # frames sent, in sending order
        self._pool = ThreadPoolExecutor(max(1, cfg.inflight), thread_name_prefix=f"{cfg.name}-detect")

    def _load_shadow(self, model_id: str):
        """The shadow version in onnxruntime (one thread): its boxes are compared with the served ones."""
        from cityloop.models.runtime import OnnxDetector
        from cityloop.models.store import ModelStore

        mv = ModelStore(self.cfg.root, track=False).get(model_id)
        return OnnxDetector(mv.model_path, mv.card, threads=1)

    def shadow_detections(self, data: bytes) -> list[dict] | None:
        if self.shadow is None:
            return None
        from cityloop.core.images import DEFAULT_MAX_PIXELS
        from cityloop.models.runtime import decode_image

        limit = int(self.cfg.serve_env.get("CITYLOOP_MAX_IMAGE_PIXELS") or DEFAULT_MAX_PIXELS)
        try:  # the header first (cityloop.core.images); the server accepted this frame already
            image = decode_image(data, limit)
        except ValueError as exc:
            log.warning("shadow %s skipped a frame: %s", self.cfg.shadow, exc)
            return None
        dets = self.shadow.detect([image])[0]  # the served boxes' floor too: the two lists compare like with like
        return [{"box": [d.x0, d.y0, d.x1, d.y1], "score": d.score, "label": d.label, "cls": d.cls} for d in dets
                if d.score >= self.cfg.min_score]

    # ------------------------------------------------------------------ serving
    def desired_version(self) -> str:
        a = read_json(self.cfg.dir / "assignment.json")
        if not a or not a.get("model_version"):
            raise RuntimeError(f"node {self.cfg.name} has no assignment ({self.cfg.dir / 'assignment.json'})")
        return a["model_version"]

    def start_version(self, version: str, port: int) -> tuple[Server, str]:
        """Build `version`'s bento and start its server on `port` until it is ready (a Launch runs this
        in the background; a node's stop cancels the wait). Returns the server and the bento tag."""
        built = build_bento(self.cfg.root, version)
        slot = "green" if self.server is not None and self.server.log_path.name == "serve-blue.log" else "blue"

        def spawned(server: Server) -> None:
            self._next = _server_record(server, built.tag, version)
            self._save_servers()

        server = start_server(self.cfg.root, port, target=built.tag, log_path=self.cfg.dir / f"serve-{slot}.log",
                              extra_env=self.cfg.serve_env, timeout=self.cfg.ready_timeout_s, cancel=self.stop,
                              on_spawn=spawned)
        return server, built.tag

    def adopt(self) -> None:
        """After a crash: take over the server the previous run left (only while its pid is still that
        process and it is ready), and stop one it left half-started under "next"."""
        prev = read_json(self.cfg.dir / "server.json") or {}
        nxt = prev.get("next")
        if nxt and nxt.get("started") is not None:  # it never served; its start time guards its pid
            stop_server(Server(int(nxt["pid"]), int(nxt["port"]), Path(nxt.get("log") or ""), str(nxt.get("tag")),
                               started=nxt["started"]), grace=5)
        if prev.get("pid"):
            log_path = Path(prev.get("log") or self.cfg.dir / "serve.log")
            old = adopt_server(int(prev["pid"]), int(prev["port"]), str(prev.get("tag")), log_path,
                               started=prev.get("started"))
            if old is not None:
                self.server, self.version, self.tag = old, prev.get("model_version"), prev.get("tag")
                self.client = DetectorClient(old.url, os.environ.get(API_TOKEN_ENV), keepalive=False)
                self.state = "serving"
                log.info("adopted the running server of %s on port %d", self.version, old.port)
        self._save_servers()

    def reconcile(self) -> None:
        """Twice a second: finish a launch, notice a dead server, launch the wanted version when due."""
        if self.launch is not None:
            if self.launch.is_alive():
                return
            self._finish_launch(self.launch)
            self.launch = None
        self._check_server()
        try:
            want = self.desired_version()
        except RuntimeError:
            return  # the assignment is being rewritten (or was removed): keep serving what serves
        if self.stop.is_set() or not self.failures.may_try(want):
            return
        if want != self.version or self.server is None:
            self.launch = Launch(want, self._next_port(), self.start_version)
            self.launch.start()
            log.info("starting %s on port %d%s", want, self.launch.port,
                     f" ({self.version} serves meanwhile)" if self.server else "")
            if self.server is None:
                self.state = "starting"

    def _next_port(self) -> int:
        """The node's port when it is free (the first server), another free one for a blue/green swap."""
        if self.server is None or self.server.port != self.cfg.port:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", self.cfg.port))
                    return self.cfg.port
                except OSError:
                    log.warning("port %d is taken; the server goes on another one", self.cfg.port)
        return free_port()

    def _finish_launch(self, launch: Launch) -> None:
        self._next = None
        if launch.server is None:
            rec = self.failures.record(launch.version, launch.error or "unknown error")
            log.error("%s did not start (%s); %s; next try in %.0f s", launch.version,
                      (launch.error or "").splitlines()[0] if launch.error else "?",
                      f"{self.version} keeps serving" if self.server else "nothing serves",
                      rec["retry_at"] - time.time())
            self.state = "serving" if self.server is not None else "failed"
            self._save_servers()
            return
        try:
            want = self.desired_version()
        except RuntimeError:
            want = launch.version
        if self.server is not None and want != launch.version:  # re-assigned while it started (a canary
            log.info("%s is ready but no longer wanted (%s is): stopped, %s keeps serving",  # that timed out)
                     launch.version, want, self.version)
            self._retire(launch.server, None)
            self._save_servers()
            return
        old, old_client = self.server, self.client
        self.server, self.tag, self.version = launch.server, launch.tag, launch.version
        self.client = DetectorClient(launch.server.url, os.environ.get(API_TOKEN_ENV), keepalive=False)
        self.failures.succeeded(launch.version)
        self.state, self._failed_requests = "serving", 0
        self._save_servers()
        log.info("serving %s on port %d", self.version, self.server.port)
        if old is not None:  # switched: the old one stops once the requests already sent to it are answered
            self.swaps += 1
            self._retire(old, old_client)

    def _check_server(self) -> None:
        """A server that exited, or stopped answering, is recorded and restarted (with backoff)."""
        s = self.server
        if s is None:
            return
        if s.alive():
            if self._failed_requests < 10 or _ready(s):
                return
            reason = f"the server of {self.version} stopped answering ({self._failed_requests} requests failed)"
        else:
            code = s.proc.poll() if s.proc is not None else None
            reason = f"the server of {self.version} (pid {s.pid}) exited ({code}):\n{tail(s.log_path, 20)}"
        rec = self.failures.record(self.version or "?", reason, kind="died")
        log.error("%s; restarting in %.0f s", reason.splitlines()[0], rec["retry_at"] - time.time())
        self.restarts += 1
        self._retire(s, self.client)
        self.server = self.client = None
        self.state, self._failed_requests = "restarting", 0
        self._save_servers()

    def _retire(self, server: Server, client: DetectorClient | None) -> None:
        """Stop an old server in the background (its graceful stop must not hold up the frame loop), once the
        frames already sent to it are answered."""
        asked = [job.future for job in self._pending if job.client is client]

        def stop() -> None:
            futures_wait(asked, timeout=30)
            if client is not None:
                client.close()
            stop_server(server)

        t = threading.Thread(target=stop, name=f"retire-{server.port}", daemon=True)
        t.start()
        self._retiring = [r for r in self._retiring if r.is_alive()] + [t]

    def _save_servers(self) -> None:
        """server.json: the serving server at the top level, one starting under "next"."""
        data = _server_record(self.server, self.tag, self.version) if self.server is not None else {}
        if self._next is not None:
            data["next"] = self._next
        path = self.cfg.dir / "server.json"
        if data:
            write_json(path, data)
        else:
            path.unlink(missing_ok=True)

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
        # frames/s over the last 10 s; when all the remembered frames fall inside them, over their own span
        full = len(recent) == self.frame_times.maxlen
        span = max(now - recent[0], 1e-3) if full else 10.0
        ob = outbox.stats() if outbox else {}
        port = self.server.port if self.server is not None else self.cfg.port
        return {"name": self.cfg.name, "pid": os.getpid(), "port": port, "node_port": self.cfg.port,
                "url": f"http://127.0.0.1:{port}", "state": self.state, "model_version": self.version,
                "bento": self.tag, "server_pid": self.server.pid if self.server else None,
                "fps": round(len(recent) / span, 2) if recent else 0.0,
                "latency_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat is not None else None,
                "latency_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat is not None else None,
                "frames": self.frames, "errors": self.errors, "selected": self.selected, "skipped": self.skipped,
                "schedule": self.schedule.report() if self.schedule is not None else None,
                "queue_depth": ob.get("pending"), "acked": ob.get("acked"), "streams": self.cfg.streams,
                "streams_done": self.streams_done, "center": self.cfg.center, "heartbeat": now,
                "stale_s": self.cfg.stale_s, "dead_letter": ob.get("dead"),
                "swap": self.launch.report() if self.launch is not None else None, "swaps": self.swaps,
                "restarts": self.restarts, **self.failures.report(), "last_error": self.last_error,
                "select_errors": self.select_errors,
                "sink": self.sink_worker.report() if self.sink_worker is not None else None}

    def write_status(self, outbox: Outbox | None = None) -> None:
        write_json(self.cfg.dir / "status.json", self.status(outbox))

    def _beat(self, outbox: Outbox) -> None:
        """The heartbeat; a status that cannot be written (a full disk, a locked outbox) is logged, not fatal."""
        try:
            self.write_status(outbox)
        except (OSError, sqlite3.Error) as exc:
            log.warning("status not written: %s", exc)

    # ------------------------------------------------------------------ frames
    def request(self, frames: list[Frame], client: DetectorClient) -> InFlight:
        """Send frames in one request to the server (the compact route) on the request pool; `finish` takes
        the answers."""
        return InFlight(frames, client, time.perf_counter(),
                        self._pool.submit(client.detect_frames, [f.data for f in frames], self.cfg.min_score))

    def finish(self, job: InFlight, outbox: Outbox, sink: SinkWorker) -> None:
        """Wait for a request's detections, hand each frame's to the sink's worker, maybe keep the frame as a
        hard example. Requests are finished in the order they were sent, so each camera's frames reach the
        sink in order. A request of several frames refused as bad input is retried frame by frame: one
        broken camera image costs only itself."""
        try:
            results = job.future.result()
            answers = [(r["detections"], r["model_version"]) for r in results]
            if len(answers) != len(job.frames):
                raise ValueError(f"{len(answers)} answers to {len(job.frames)} frames")
        except ServingError as exc:
            if exc.status < 500 and len(job.frames) > 1:
                for frame in job.frames:
                    self.finish(self.request([frame], job.client), outbox, sink)
                return
            self._request_failed(exc, exc.status)
            if exc.status < 500:  # the frame itself is bad (a broken camera image): skip it
                frame = job.frames[0]
                log.warning("%s frame %d rejected: %s", frame.camera_id, frame.index, exc)
                self._failed_requests = 0  # the server answered
                return
            self.stop.wait(exc.retry_after or 0.5)
            return
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            self._request_failed(exc)
            log.warning("server unreachable or answering nonsense (%s)", exc)
            self.stop.wait(0.5)
            return
        self._failed_requests = 0
        self.latency.append((time.perf_counter() - job.sent) * 1000)
        for frame, (dets, version) in zip(job.frames, answers):
            self.frames += 1
            self.frame_times.append(time.time())
            # the encoded frame too: the analysis layer keeps it as the snapshot of an event it raises
            sink.submit(frame.camera_id, frame.ts, frame.index, dets, version, image=frame.data)
            try:
                self._select(frame, dets, version, outbox)
            except Exception as exc:  # noqa: BLE001 - an outbox locked too long, a broken shadow: reported
                self.select_errors += 1
                self.last_error = {"kind": "select", "error": f"{type(exc).__name__}: {exc}"[:500],
                                   "ts": time.time()}
                log.warning("hard-example selection failed on %s frame %d: %s", frame.camera_id, frame.index, exc)

    def _request_failed(self, exc: Exception, status: int | None = None) -> None:
        self.errors += 1
        self._failed_requests += 1
        self.last_error = {"kind": "request", "status": status, "error": f"{type(exc).__name__}: {exc}"[:500],
                           "ts": time.time(), "model_version": self.version}

    def _select(self, frame: Frame, dets: list[dict], version: str, outbox: Outbox) -> None:
        """Keep the frame as a hard example when the selector picks it and the hourly budget allows."""
        pick = self.selector.select(frame.camera_id, frame.data, dets, self.shadow_detections(frame.data))
        budget = self.cfg.select.budget_per_hour  # 0: no cap
        if pick and (not budget or outbox.selected_since(time.time() - 3600) < budget):
            reason, score = pick
            if outbox.add(HardExample(frame.camera_id, version, reason, score, frame.ts, frame.index, frame.data)):
                self.selected += 1

    def run(self) -> None:
        """Serve, stream, select and upload until stopped."""
        if threading.current_thread() is threading.main_thread():  # (a test may run a node in a thread)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop.set())
        outbox = Outbox(self.cfg.dir / "outbox.db")
        pending = self._pending
        group: list[Frame] = []  # frames read, to be sent together
        uploader = Uploader(self.cfg, self.stop) if self.cfg.center else None
        sink = load_sink(self.cfg.sink, self.cfg.dir, self.cfg.streams)
        if getattr(sink, "assignment", False) is None:  # an Analyzer: it runs what the schedule assigns
            sink.assignment = self.scenarios_for
        self.sink_worker = SinkWorker(sink, self.cfg.sink_queue, self.cfg.sink_retries)
        self.sink_worker.start()
        self.load_schedule()
        try:
            self.desired_version()  # no assignment at all: a clear error now
            self.adopt()
            if uploader:
                uploader.start()
            frames = round_robin(self.cfg.streams, self.cfg.loop) if self.cfg.streams else iter(())
            window = max(1, self.cfg.inflight)  # requests in flight: the server batches them together
            # frames per request: at most one round of the cameras, so a frame waits for no later frame of its own
            per_request = max(1, min(self.cfg.frames_per_request, len(self.cfg.streams) or 1))
            last_beat = last_check = 0.0
            while not self.stop.is_set():
                now = time.monotonic()
                if now - last_check >= 0.5:
                    last_check = now
                    self.load_schedule()
                    self.reconcile()
                if now - last_beat >= self.cfg.heartbeat_s:
                    last_beat = now
                    self._beat(outbox)
                while pending and (pending[0].future.done() or len(pending) >= window):
                    self.finish(pending.popleft(), outbox, self.sink_worker)
                if self.client is None:  # nothing serves yet (starting, or failed and backing off): frames wait
                    self.stop.wait(0.1)
                    continue
                frame = None if self.streams_done else next(frames, None)
                if frame is None:
                    if group:
                        pending.append(self.request(group, self.client))
                        group = []
                    elif pending:
                        self.finish(pending.popleft(), outbox, self.sink_worker)
                    else:
                        self.streams_done = True
                        self.stop.wait(0.2)
                    continue
                if self.schedule is not None and not self.schedule.take(frame.camera_id, frame.ts):
                    self.skipped += 1  # not planned now, or not due at the camera's planned frames/s
                    continue
                group.append(frame)
                if len(group) >= per_request or self.cfg.max_fps > 0:
                    pending.append(self.request(group, self.client))
                    group = []
                if self.cfg.max_fps > 0:
                    self.stop.wait(1.0 / self.cfg.max_fps)
        finally:
            self.stop.set()
            if group and self.client is not None:  # frames read but not sent yet
                pending.append(self.request(group, self.client))
            for job in pending:  # answers already asked for still reach the sink and the selector
                try:
                    self.finish(job, outbox, self.sink_worker)
                except Exception as exc:  # noqa: BLE001 - stopping: what cannot be finished is logged
                    log.warning("%d frame(s) not finished at stop: %s", len(job.frames), exc)
            self._pool.shutdown(wait=True, cancel_futures=True)
            if uploader and uploader.is_alive():
                uploader.join(20)
            if self.launch is not None:  # the stop cancelled its wait (it then stops what it started)
                self.launch.join(30)
                if self.launch.server is not None:  # ready just before the stop
                    stop_server(self.launch.server)
            self.sink_worker.close(10)
            for t in self._retiring:
                t.join(30)
            if self.server is not None:
                stop_server(self.server)
                self.server = None
            self._next = None
            self._save_servers()
            self.state = "stopped"
            self.write_status(outbox)
            outbox.close()


def _server_record(server: Server, tag: str | None, version: str | None) -> dict:
    """server.json's record of one server: its pid and start time (a recycled pid is never taken for it)."""
    return {"pid": server.pid, "started": server.started, "port": server.port, "tag": tag,
            "model_version": version, "log": str(server.log_path)}


def _ready(server: Server) -> bool:
    try:
        return httpx.get(server.url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def config_dict(cfg: NodeConfig) -> dict:
    d = asdict(cfg)
    d["root"] = str(cfg.root)
    return d
