"""Video clips from fixed cameras: actors with trajectories, per-frame truth, scenario events.

Each registered scenario stages its own actors (`Scenario.plan`: riders cross, cars park in the
no-parking zone, garbage is dumped, stalls are set up at night, water pools in rain, crowds gather,
people slip past a checkpoint...). Ground-truth events are derived from what is actually visible
in the rendered frames (`Scenario.truth`, by default the visible interval of the scenario's actors),
and only inside the scenario's windows: a stall at noon is not street vending.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cityloop.core.geometry import iou
from cityloop.scenarios import registry
from cityloop.scenarios.base import active, visible_times
from cityloop.scenes.frames import EPOCH, HOURS, add_to_coco, coco_skeleton, render_scene
from cityloop.scenes.render import Obj, encode, render_background, sample_attrs
from cityloop.scenes.world import Camera, Condition, make_camera, sample_condition


@dataclass
class Actor:
    """An object moving along piecewise-linear keyframes (t, x, y); absent outside [t0, t1]."""

    track_id: int
    cls: str
    attrs: dict
    keys: list[tuple[float, float, float]]
    scenario: str | None = None
    group: int = -1  # members of a group (a crowd, a queue) share an id
    grow: float = 0.0  # seconds over which an object (a puddle) grows to full width
    extra: dict = field(default_factory=dict)

    @property
    def t0(self) -> float:
        return self.keys[0][0]

    @property
    def t1(self) -> float:
        return self.keys[-1][0]

    def at(self, t: float, cam: Camera) -> Obj | None:
        """The object at time t, or None when it is not in the scene."""
        if not self.t0 <= t <= self.t1:
            return None
        ts, xs, ys = zip(*self.keys)
        x, y = float(np.interp(t, ts, xs)), float(np.interp(t, ts, ys))
        attrs = self.attrs
        if attrs.get("walks"):
            attrs = {**attrs, "walk": attrs["phase"] + x * 0.35}
        s = cam.scale(y)
        if self.grow > 0:
            attrs = {**attrs, "w": attrs["w"] * min(1.0, 0.25 + (t - self.t0) / self.grow)}
        return Obj(self.cls, x, y, s, attrs, self.track_id)


@dataclass
class ClipPlanner:
    """What a scenario's `plan(planner, rates)` stages a clip with: the camera, the clip's condition and
    length, one generator, and helpers for where things go. Speeds are px/s at a 192 px frame."""

    cam: Camera
    cond: Condition
    seconds: float
    rng: np.random.Generator
    actors: list[Actor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.y0, self.y1 = self.cam.ground_range(16.0 * self.cam.size / 192)
        self._static: list[tuple[float, float, float, float]] = []  # boxes of objects that stay (static)

    @property
    def minutes(self) -> float:
        return self.seconds / 60.0

    @property
    def unit(self) -> float:
        """px per "192 px frame" px: speeds and distances scale with the frame size."""
        return self.cam.size / 192

    def count(self, rate: float) -> int:
        """How many times an event of `rate` per minute happens in this clip (Poisson)."""
        return int(self.rng.poisson(rate * self.minutes))

    def road_y(self) -> float:
        cam = self.cam
        for _ in range(30):
            y = self.rng.uniform(self.y0, self.y1)
            if cam.on_road(cam.vanish_x if cam.layout == "perspective" else cam.size / 2, y):
                return float(y)
        return float(self.y1)

    def walk_y(self) -> float:
        return self.walk_xy()[1]

    def walk_xy(self, lo: float = 0.0, hi: float = 1.0) -> tuple[float, float]:
        """A ground point off the carriageway (x within [lo, hi] of the frame's width)."""
        cam = self.cam
        for _ in range(30):
            x, y = self.rng.uniform(lo, hi) * cam.size, self.rng.uniform(self.y0, self.y1)
            if cam.layout == "plaza" or not cam.on_road(x, y):
                return float(x), float(y)
        return float(self.rng.uniform(lo, hi) * cam.size), float(self.y0)

    def crossing(self, t0: float, speed: float, y: float) -> tuple[list[tuple[float, float, float]], int]:
        """Keys of a walk or ride across the whole frame at row y, from a random side; and its direction."""
        s = self.cam.scale(y)
        margin = 1.6 * s
        d = int(self.rng.choice([-1, 1]))
        xa, xb = (-margin, self.cam.size + margin) if d > 0 else (self.cam.size + margin, -margin)
        return [(t0, xa, y), (t0 + abs(xb - xa) / (speed * self.unit), xb, y)], d

    def add(self, cls: str, keys: list[tuple[float, float, float]], scenario: str | None = None,
            facing: int | None = None, **kw) -> Actor:
        """One actor of class `cls` (its look drawn now); `scenario`: the event it makes, if any."""
        attrs = sample_attrs(cls, self.rng)
        if facing is not None:
            attrs["facing"] = facing
        a = Actor(len(self.actors) + 1, cls, attrs, keys, scenario, **kw)
        self.actors.append(a)
        return a

    def static(self, cls: str, scenario: str | None, rate: float, on_road: bool = False,
               grow: float = 0.0) -> None:
        """Objects that appear at a random time and stay to the clip's end (a pile, a stall, a banner)."""
        half, tall = registry().object_class(cls).extent
        for _ in range(self.count(rate)):
            t0 = float(self.rng.uniform(0, self.seconds * 0.7))
            for _try in range(15):  # two piles on one spot are one pile: find a free spot
                if on_road:
                    x, y = float(self.rng.uniform(0.15, 0.85) * self.cam.size), self.road_y()
                else:  # on the pavement at this very x (a perspective road is not a horizontal band)
                    x, y = self.walk_xy(0.15, 0.85)
                s = self.cam.scale(y)
                box = (x - half * s, y - tall * s, x + half * s, y)
                if not any(iou(box, b) > 0.0 for b in self._static):
                    break
            else:
                continue
            self._static.append(box)
            self.add(cls, [(t0, x, y), (self.seconds + 1, x, y)], scenario, grow=grow)


def plan_clip(cam: Camera, cond: Condition, seconds: float, rng: np.random.Generator,
              rates: dict[str, float]) -> list[Actor]:
    """Stage the actors of one clip: every registered scenario's plan, in registry order."""
    planner = ClipPlanner(cam, cond, seconds, rng)
    for sc in registry().scenarios.values():
        if sc.plan is not None:
            sc.plan(planner, rates)
    return planner.actors


def render_clip(cam: Camera, cond: Condition, actors: list[Actor], seconds: float, fps: float, seed: int,
                out_dir: Path, fmt: str = "jpg") -> list[dict]:
    """Render and write every frame; returns one truth row per frame: the labeled boxes, and the centres
    of every object in the frame, hidden or not (event truth is about the street, not the pixels)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bg = render_background(cam)
    frames, truth = int(round(seconds * fps)), []
    for i in range(frames):
        t = i / fps
        rng = np.random.default_rng([seed, i])
        objs = [o for a in actors if (o := a.at(t, cam)) is not None]
        shown: list[float] = []
        img, visible, present = render_scene(cam, cond, objs, rng, bg, shown)
        name = f"{i:06d}.{fmt}"
        (out_dir / name).write_bytes(encode(img, fmt, cond.jpeg))
        truth.append({"index": i, "t": t, "file": name, "boxes": [(o.cls, b, o.track_id) for o, b in visible],
                      "shown": shown, "centres": {o.track_id: (o.x, o.y, o.s) for o in present}})
    return truth


def visible_events(scenario: str, actors: list[Actor], truth: list[dict]) -> list[dict]:
    """The default truth of a scenario: each of its actors' visible interval is one event."""
    seen = visible_times(truth)
    return [{"scenario": scenario, "start_s": seen[a.track_id][0], "end_s": seen[a.track_id][-1],
             "track_ids": [a.track_id]} for a in actors if a.scenario == scenario and seen.get(a.track_id)]


def derive_events(cam: Camera, actors: list[Actor], truth: list[dict], fps: float,
                  start: datetime | None = None, condition: str | None = None) -> list[dict]:
    """Ground-truth events from what the frames show (stream seconds), each scenario's own way, kept
    only where the scenario is active (its windows at the event's start, in the clip's condition)."""
    events = []
    for sc in registry().scenarios.values():
        found = sc.truth(cam, actors, truth) if sc.truth else visible_events(sc.name, actors, truth)
        if start is not None:
            found = [e for e in found if active(sc.windows, start.timestamp() + e["start_s"], condition)]
        events += found
    return sorted(events, key=lambda e: e["start_s"])


def default_rates() -> dict[str, float]:
    """Every registered scenario's clip rates (events per minute), by key."""
    return dict(registry().rates)


def _clip_job(args: tuple) -> dict:
    domain, seed, k, size, seconds, fps, fmt, out, rates, condition, hour, sites = args
    rng = np.random.default_rng([seed, 91, k])
    cam = make_camera(f"cam{k:02d}", domain, size, rng, tuple(sites))
    cond = sample_condition(domain, rng, condition)
    day = EPOCH + timedelta(days=int(rng.integers(0, 28)))
    start = day + timedelta(hours=float(rng.uniform(*HOURS[cond.name]) if hour is None else hour))
    actors = plan_clip(cam, cond, seconds, rng, rates)
    truth = render_clip(cam, cond, actors, seconds, fps, seed * 1000 + k, Path(out) / cam.camera_id / "frames", fmt)
    events = derive_events(cam, actors, truth, fps, start, cond.name)
    return {"camera": cam, "condition": cond, "start": start, "truth": truth, "events": events}


def generate_video(domain: str, cameras: int, seconds: float, fps: float, seed: int, out: Path,
                   size: int = 192, fmt: str = "jpg", workers: int = 1, mp4: bool = False,
                   rates: dict | None = None, condition: str | None = None, hour: float | None = None,
                   sites: tuple[str, ...] = (), progress: Callable[[int], None] | None = None) -> dict:
    """Write K camera clips: frames, per-camera and combined COCO (with track ids), events.json.

    `rates` override the scenarios' clip rates (events per minute; unknown keys are an error);
    `condition` and `hour` (local hour of the clip's start) fix when the clips are taken; `sites`
    are zone kinds every camera must have (a checkpoint, say)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    defaults = default_rates()
    unknown = sorted(set(rates or {}) - set(defaults))
    if unknown:
        raise ValueError(f"unknown clip rates {unknown} (the scenarios' rates: {', '.join(defaults)})")
    rates = {**defaults, **(rates or {})}
    jobs = [(domain, seed, k, size, seconds, fps, fmt, str(out), rates, condition, hour, tuple(sites))
            for k in range(cameras)]
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    results = pool.map(_clip_job, jobs) if pool else map(_clip_job, jobs)
    done: list[dict] = []
    try:
        for res in results:
            done.append(res)
            if mp4:
                write_mp4(out / res["camera"].camera_id / "frames", out / f"{res['camera'].camera_id}.mp4", fps)
            if progress:
                progress(1)
    finally:
        if pool:
            pool.shutdown()
    events = write_stream(out, done, fps, size, seed, domain)
    frames = sum(len(r["truth"]) for r in done)
    return {"cameras": cameras, "frames": frames, "events": pd.Series(
        [e["scenario"] for e in events], dtype=str).value_counts().to_dict(), "out": str(out)}


def write_stream(out: Path, results: list[dict], fps: float, size: int, seed: int, domain: str) -> list[dict]:
    """A stream folder's shared files from its rendered clips (`_clip_job` results): the combined and
    per-camera COCO, metadata.parquet, cameras.json and events.json (the truth); returns the events."""
    coco, rows, events, cams = coco_skeleton(), [], [], []
    for res in results:
        cam, cond, start = res["camera"], res["condition"], res["start"]
        cam_coco = coco_skeleton()
        for fr in res["truth"]:
            rel = f"{cam.camera_id}/frames/{fr['file']}"
            ts = start + timedelta(seconds=fr["t"])
            extra = {"camera_id": cam.camera_id, "frame_index": fr["index"], "timestamp": ts.isoformat()}
            add_to_coco(coco, rel, size, fr["boxes"], extra, fr.get("shown"))
            add_to_coco(cam_coco, f"frames/{fr['file']}", size, fr["boxes"], extra, fr.get("shown"))
            rows.append({"file_name": rel, "camera_id": cam.camera_id, "district": cam.district,
                         "timestamp": ts, "condition": cond.name, "conditions": cond.tags,
                         "layout": cam.layout, "camera_height": cam.height, "jpeg_quality": cond.jpeg,
                         "domain": domain, "seed": seed, "frame_index": fr["index"]})
        (out / cam.camera_id / "annotations.coco.json").write_text(json.dumps(cam_coco))
        for e in res["events"]:
            events.append({"id": f"gt-{cam.camera_id}-{len(events):04d}", "camera_id": cam.camera_id, **e,
                           "start_ts": (start + timedelta(seconds=e["start_s"])).isoformat(),
                           "end_ts": (start + timedelta(seconds=e["end_s"])).isoformat()})
        cams.append({**cam.to_dict(), "condition": cond.name, "conditions": cond.tags, "fps": fps,
                     "start_ts": start.isoformat(), "frames": len(res["truth"])})
    (out / "annotations.coco.json").write_text(json.dumps(coco))
    pd.DataFrame(rows).to_parquet(out / "metadata.parquet", index=False)
    (out / "cameras.json").write_text(json.dumps(cams, indent=1))
    (out / "events.json").write_text(json.dumps(events, indent=1))
    return events


def write_mp4(frames_dir: Path, path: Path, fps: float) -> None:
    """Pack a frame folder into an MP4 (mp4v) any OpenCV reader can stream."""
    files = sorted(frames_dir.iterdir())
    first = cv2.imread(str(files[0]))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, first.shape[1::-1])
    try:
        for f in files:
            writer.write(cv2.imread(str(f)))
    finally:
        writer.release()
