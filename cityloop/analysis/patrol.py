"""`cityloop patrol`: run camera streams through detector → tracker → rules → event store, then
score the raised events against the streams' ground truth.

A stream folder is what `cityloop scenes generate --video` writes: `cameras.json`, per camera
`<camera>/frames/*.jpg` (+ `annotations.coco.json`), and `events.json` (the truth, optional).
`detector="truth"` feeds the simulator's own boxes (optionally degraded) instead of a model: the
rules' ceiling, and deterministic tests.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cityloop.analysis.alerts import Dispatcher, build_sinks
from cityloop.analysis.engine import Analyzer
from cityloop.analysis.evaluate import evaluate_events, truth_boxes, unix
from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.store import EventStore
from cityloop.analysis.tracker import Det
from cityloop.scenarios.zones import load_zones, read_cameras

log = logging.getLogger("cityloop.patrol")
IMAGE_EXTS = {".jpg", ".jpeg", ".png"}


@dataclass
class TruthNoise:
    """Make ground-truth boxes look like a detector's: misses, jitter, class flips, scores."""

    drop: float = 0.0  # probability a box is missed in a frame
    jitter_px: float = 0.0  # std of box-corner noise
    flip: float = 0.0  # probability a rider's helmet class flips
    seed: int = 0


@dataclass
class PatrolResult:
    run_id: str
    frames: int
    corrupt: list[str]
    seconds: float
    events: list[dict[str, Any]]
    metrics: dict[str, dict[str, Any]] | None
    deduplicated: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def truth_frames(streams: Path, camera_id: str, noise: TruthNoise | None = None) -> Iterator[tuple[int, list[Det]]]:
    """(frame_index, detections) of one camera from its COCO ground truth."""
    noise = noise or TruthNoise()
    rng = np.random.default_rng([noise.seed, int.from_bytes(camera_id.encode()[-4:], "little")])
    coco = json.loads((Path(streams) / camera_id / "annotations.coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        per[a["image_id"]].append(a)
    for im in sorted(coco["images"], key=lambda i: i["frame_index"]):
        dets = []
        for a in per[im["id"]]:
            if rng.random() < noise.drop:
                continue
            x, y, w, h = a["bbox"]
            box = np.array([x, y, x + w, y + h]) + rng.normal(0, noise.jitter_px, 4) * (noise.jitter_px > 0)
            cls = names[a["category_id"]]
            if cls.startswith("rider_") and rng.random() < noise.flip:
                cls = "rider_helmet" if cls == "rider_no_helmet" else "rider_no_helmet"
            dets.append(Det(tuple(float(v) for v in box), float(rng.uniform(0.5, 0.95)) if noise.jitter_px else 0.9,
                            cls))
        yield im["frame_index"], dets


def frame_files(streams: Path, camera_id: str) -> list[Path]:
    folder = Path(streams) / camera_id / "frames"
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS) if folder.is_dir() else []


def open_analyzer(root: Path, params: AnalysisParams, cameras: list[dict[str, Any]], db_url: str,
                  snapshots: Path | None) -> Analyzer:
    """An Analyzer over an event store and the configured sinks."""
    store = EventStore(db_url)
    zones = load_zones(cameras, params.zones)
    return Analyzer(params, Dispatcher(store, build_sinks(params.sinks)), zones,
                    {c["camera_id"]: c for c in cameras}, snapshots)


def patrol_camera(analyzer: Analyzer, streams: Path, cam: dict[str, Any], detector: Any, model_version: str,
                  run_id: str, noise: TruthNoise | None = None, batch: int = 16,
                  timings: dict[str, float] | None = None, advance: Callable[[int], None] | None = None) -> dict:
    """One camera's stream through the analyzer. A frame that does not decode is logged and skipped."""
    from cityloop.models.runtime import decode_image  # torch-free; only needed with a model

    cid, fps, t0 = cam["camera_id"], float(cam.get("fps", 1.0)), unix(cam["start_ts"])
    timings = timings if timings is not None else {}
    frames, corrupt = 0, []

    def feed(index: int, dets: list, image: Any) -> None:
        t = time.perf_counter()
        for ev in analyzer.on_detections(cid, t0 + index / fps, index, dets, model_version, image):
            ev.extra["run"] = run_id
            analyzer.dispatcher.store.update(ev.id, extra=ev.extra)
        timings["analysis_s"] = timings.get("analysis_s", 0.0) + time.perf_counter() - t

    if detector == "truth":
        files = {int(p.stem): p for p in frame_files(streams, cid) if p.stem.isdigit()}
        for index, dets in truth_frames(streams, cid, noise):
            path = files.get(index)
            feed(index, dets, path.read_bytes() if path else None)
            frames += 1
        if advance:
            advance(frames)
        return {"frames": frames, "corrupt": corrupt}
    files = frame_files(streams, cid)
    for i in range(0, len(files), batch):
        chunk, images, idx = files[i: i + batch], [], []
        t = time.perf_counter()
        for j, p in enumerate(chunk):
            try:
                images.append(decode_image(p.read_bytes()))
                idx.append(i + j)
            except (OSError, ValueError) as exc:
                log.error("camera %s: frame %s skipped: %s", cid, p, exc)
                corrupt.append(str(p))
        timings["decode_s"] = timings.get("decode_s", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        results = detector.detect(images) if images else []
        timings["infer_s"] = timings.get("infer_s", 0.0) + time.perf_counter() - t
        for index, img, dets in zip(idx, images, results):
            feed(index, dets, img)
        frames += len(images)
        if advance:
            advance(len(chunk))
    return {"frames": frames, "corrupt": corrupt}


def load_detector(root: Path, model: str) -> tuple[Any, str]:
    """("truth", "truth") or an OnnxDetector of a registry version and its id."""
    if model == "truth":
        return "truth", "truth"
    from cityloop.models.runtime import OnnxDetector
    from cityloop.models.store import ModelStore

    mv = ModelStore(root, track=False).get(model)
    return OnnxDetector(mv.model_path, mv.card), mv.id


def run_patrol(root: Path, streams: Path, model: str, params: AnalysisParams, db_url: str,
               cameras: list[str] | None = None, noise: TruthNoise | None = None,
               snapshots: Path | None = None, advance: Callable[[int], None] | None = None) -> PatrolResult:
    """Every camera of a stream folder (or the named ones), then the evaluation when truth exists."""
    streams = Path(streams)
    cams = [c for c in read_cameras(streams) if not cameras or c["camera_id"] in cameras]
    detector, version = load_detector(root, model)
    analyzer = open_analyzer(root, params, cams, db_url, snapshots)
    run_id, frames, corrupt, timings = uuid.uuid4().hex[:12], 0, [], {}
    t = time.perf_counter()
    for cam in cams:
        res = patrol_camera(analyzer, streams, cam, detector, version, run_id, noise, timings=timings,
                            advance=advance)
        frames += res["frames"]
        corrupt += res["corrupt"]
    analyzer.close()
    seconds = time.perf_counter() - t
    events = [e for e in analyzer.dispatcher.store.events() if (e.extra or {}).get("run") == run_id]
    metrics = score_streams(streams, events, cams, params.match_tolerance_s)
    analyzer.dispatcher.store.dispose()
    return PatrolResult(run_id, frames, corrupt, seconds, [e.to_dict() for e in events], metrics,
                        analyzer.deduplicated, timings)


def score_streams(streams: Path, events: list, cams: list[dict[str, Any]], tolerance_s: float
                  ) -> dict[str, dict[str, Any]] | None:
    """Metrics per scenario against streams/events.json (None when the streams carry no truth)."""
    path = Path(streams) / "events.json"
    if not path.exists():
        return None
    ids = {c["camera_id"] for c in cams}
    truth = [t for t in json.loads(path.read_text()) if t["camera_id"] in ids]
    m = evaluate_events(truth, events, cams, truth_boxes(streams), tolerance_s)
    return {k: v.to_dict() for k, v in m.items()}


def patrol_one(root: str, streams: str, camera_id: str, model: str, params: dict[str, Any] | None, db_url: str,
               run_id: str) -> dict[str, Any]:
    """One camera of a stream folder, in its own analyzer (what a fan-out worker runs)."""
    p = AnalysisParams.from_dict(params)
    cams = [c for c in read_cameras(Path(streams)) if c["camera_id"] == camera_id]
    if not cams:
        raise ValueError(f"camera {camera_id!r} is not in {streams}/cameras.json")
    detector, version = load_detector(Path(root), model)
    analyzer = open_analyzer(Path(root), p, cams, db_url, Path(db_url.removeprefix("sqlite:///")).parent / "snapshots"
                             if db_url.startswith("sqlite:///") else None)
    t = time.perf_counter()
    res = patrol_camera(analyzer, Path(streams), cams[0], detector, version, run_id)
    analyzer.close()
    analyzer.dispatcher.store.dispose()
    return {**res, "camera_id": camera_id, "events": len(analyzer.raised), "seconds": time.perf_counter() - t,
            "pid": os.getpid()}


def score_run(streams: str, db_url: str, run_id: str, tolerance_s: float = 2.0) -> dict[str, dict[str, Any]] | None:
    """Metrics of one run's events (they carry extra.run) against the streams' truth."""
    store = EventStore(db_url)
    try:
        events = [e for e in store.events() if (e.extra or {}).get("run") == run_id]
    finally:
        store.dispose()
    return score_streams(Path(streams), events, read_cameras(Path(streams)), tolerance_s)


__all__ = ["patrol_one", "score_run", "PatrolResult", "TruthNoise", "run_patrol", "patrol_camera", "score_streams"]
