"""Video clips from fixed cameras: actors with trajectories, per-frame truth, scenario events.

Riders cross, cars pass or park in the no-parking zone and stay, garbage is dumped and stays,
stalls are set up at night, water pools on the road in rain, crowds walk in and gather.
Ground-truth events are derived from what is actually visible in the rendered frames.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cityloop.scenes.frames import EPOCH, HOURS, add_to_coco, coco_skeleton, render_scene
from cityloop.scenes.render import Obj, encode, render_background, sample_attrs
from cityloop.scenes.world import Camera, Condition, make_camera, sample_condition

SCENARIOS = ("helmetless_rider", "illegal_parking", "garbage_pile", "street_vending",
             "road_waterlogging", "crowd_gathering")
CROWD_MIN, CROWD_RADIUS = 4, 0.6  # persons, radius in person-heights


@dataclass
class Actor:
    """An object moving along piecewise-linear keyframes (t, x, y); absent outside [t0, t1]."""

    track_id: int
    cls: str
    attrs: dict
    keys: list[tuple[float, float, float]]
    scenario: str | None = None
    group: int = -1  # crowd members share a group id
    grow: float = 0.0  # seconds over which a puddle grows to full size
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
        if self.cls == "person":
            attrs = {**attrs, "walk": attrs["phase"] + x * 0.35}
        s = cam.scale(y)
        if self.grow > 0:
            attrs = {**attrs, "w": attrs["w"] * min(1.0, 0.25 + (t - self.t0) / self.grow)}
        return Obj(self.cls, x, y, s, attrs, self.track_id)


def _crossing(cam: Camera, rng, cls: str, t0: float, speed: float, y: float) -> list:
    s = cam.scale(y)
    margin = 1.6 * s
    d = int(rng.choice([-1, 1]))
    xa, xb = (-margin, cam.size + margin) if d > 0 else (cam.size + margin, -margin)
    return [(t0, xa, y), (t0 + abs(xb - xa) / speed, xb, y)], d


def plan_clip(cam: Camera, cond: Condition, seconds: float, rng: np.random.Generator,
              rates: dict[str, float]) -> list[Actor]:
    """Schedule the actors of one clip (rates are events per minute)."""
    actors: list[Actor] = []
    y0, y1 = cam.ground_range(16.0 * cam.size / 192)
    minutes = seconds / 60.0
    zx0, zy0, zx1, zy1 = cam.no_parking

    def road_y() -> float:
        for _ in range(30):
            y = rng.uniform(y0, y1)
            if cam.on_road(cam.vanish_x if cam.layout == "perspective" else cam.size / 2, y):
                return float(y)
        return float(y1)

    def walk_y() -> float:
        for _ in range(30):
            x, y = rng.uniform(0, cam.size), rng.uniform(y0, y1)
            if cam.layout == "plaza" or not cam.on_road(x, y):
                return float(y)
        return float(y0)

    def add(cls, keys, scenario=None, **kw) -> Actor:
        attrs = sample_attrs(cls, rng)
        if "facing" in kw:
            attrs["facing"] = kw.pop("facing")
        a = Actor(len(actors) + 1, cls, attrs, keys, scenario, **kw)
        actors.append(a)
        return a

    for _ in range(rng.poisson(rates["riders"] * minutes)):  # riders crossing; some without helmets
        no_helmet = rng.random() < rates["p_no_helmet"]
        keys, d = _crossing(cam, rng, "rider", rng.uniform(-2, seconds), rng.uniform(25, 50) * cam.size / 192,
                            road_y())
        add("rider_no_helmet" if no_helmet else "rider_helmet", keys,
            "helmetless_rider" if no_helmet else None, facing=d)
    for _ in range(rng.poisson(rates["cars"] * minutes)):  # through traffic
        keys, d = _crossing(cam, rng, "car", rng.uniform(-3, seconds), rng.uniform(35, 70) * cam.size / 192,
                            road_y())
        add("car", keys, facing=d)
    for _ in range(rng.poisson(rates["pedestrians"] * minutes)):
        keys, d = _crossing(cam, rng, "person", rng.uniform(-5, seconds), rng.uniform(8, 14) * cam.size / 192,
                            walk_y())
        add("person", keys, facing=d)
    for _ in range(rng.poisson(rates["parking"] * minutes)):  # a car pulls into the zone and stays
        y = float(rng.uniform(max(zy0, y0), min(zy1, y1))) if zy1 > max(zy0, y0) else road_y()
        xs = float(rng.uniform(zx0 + 0.1 * (zx1 - zx0), zx1 - 0.1 * (zx1 - zx0)))
        t_in = float(rng.uniform(0, seconds * 0.6))
        start = -2.0 * cam.scale(y) if rng.random() < 0.5 else cam.size + 2.0 * cam.scale(y)
        t_stop = t_in + abs(xs - start) / (30 * cam.size / 192)
        t_leave = t_stop + float(rng.uniform(30, 120))
        keys = [(t_in, start, y), (t_stop, xs, y), (t_leave, xs, y),
                (t_leave + abs(xs - start) / (30 * cam.size / 192), start, y)]
        add("car", keys, "illegal_parking", facing=1 if start < xs else -1, extra={"stop": (t_stop, t_leave)})
    static = [("garbage", "garbage_pile", rates["garbage"], True),
              ("vendor_stall", "street_vending", rates["vending"], cond.name in ("dusk", "night")),
              ("water", "road_waterlogging", rates["waterlogging"], cond.name == "rain")]
    for cls, scenario, rate, allowed in static:
        for _ in range(rng.poisson(rate * minutes) if allowed else 0):
            t0 = float(rng.uniform(0, seconds * 0.7))
            y = road_y() if cls == "water" else walk_y()
            x = float(rng.uniform(0.15, 0.85) * cam.size)
            add(cls, [(t0, x, y), (seconds + 1, x, y)], scenario, grow=20.0 if cls == "water" else 0.0)
    for g in range(rng.poisson(rates["crowds"] * minutes)):  # people walk in and gather
        t0 = float(rng.uniform(0, seconds * 0.5))
        py = walk_y()
        px, s = float(rng.uniform(0.3, 0.7) * cam.size), cam.scale(py)
        t_go = t0 + float(rng.uniform(30, 90))
        for _k in range(int(rng.integers(CROWD_MIN + 1, CROWD_MIN + 5))):
            side = rng.choice([-1, 1])
            sx = px + side * rng.uniform(0.6, 1.0) * cam.size
            tx, ty = px + rng.normal(0, 0.3 * s), py + rng.normal(0, 0.15 * s)
            walk = abs(tx - sx) / (10 * cam.size / 192)
            ta = t0 + rng.uniform(0, 4)
            keys = [(ta, sx, ty), (ta + walk, tx, ty), (t_go, tx, ty), (t_go + walk, sx, ty)]
            add("person", keys, "crowd_gathering", group=g, extra={"point": (px, py)})
    return actors


def render_clip(cam: Camera, cond: Condition, actors: list[Actor], seconds: float, fps: float, seed: int,
                out_dir: Path, fmt: str = "jpg") -> list[dict]:
    """Render and write every frame; returns one truth row per frame (boxes, object centres)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bg = render_background(cam)
    frames, truth = int(round(seconds * fps)), []
    for i in range(frames):
        t = i / fps
        rng = np.random.default_rng([seed, i])
        objs = [o for a in actors if (o := a.at(t, cam)) is not None]
        img, visible = render_scene(cam, cond, objs, rng, bg)
        name = f"{i:06d}.{fmt}"
        (out_dir / name).write_bytes(encode(img, fmt, cond.jpeg))
        truth.append({"index": i, "t": t, "file": name, "boxes": [(o.cls, b, o.track_id) for o, b in visible],
                      "centres": {o.track_id: (o.x, o.y, o.s) for o, _ in visible}})
    return truth


def derive_events(cam: Camera, actors: list[Actor], truth: list[dict], fps: float) -> list[dict]:
    """Ground-truth events from what the frames show (stream seconds)."""
    seen: dict[int, list[float]] = {}
    for fr in truth:
        for tid in fr["centres"]:
            seen.setdefault(tid, []).append(fr["t"])
    events = []
    for a in actors:
        times = seen.get(a.track_id)
        if not times or a.scenario in (None, "crowd_gathering"):
            continue
        start, end = times[0], times[-1]
        if a.scenario == "illegal_parking":
            t_stop, t_leave = a.extra["stop"]
            start, end = max(start, t_stop), min(end, t_leave)
            if end - start < 1.0:
                continue
        events.append({"scenario": a.scenario, "start_s": start, "end_s": end, "track_ids": [a.track_id]})
    groups: dict[int, list[Actor]] = {}
    for a in actors:
        if a.group >= 0:
            groups.setdefault(a.group, []).append(a)
    for members in groups.values():
        px, py = members[0].extra["point"]
        r = CROWD_RADIUS * cam.scale(py)
        gathered = []
        for fr in truth:
            near = [tid for tid in fr["centres"] if tid in {m.track_id for m in members}
                    and np.hypot(fr["centres"][tid][0] - px, fr["centres"][tid][1] - py) <= max(r, 6)]
            if len(near) >= CROWD_MIN:
                gathered.append(fr["t"])
        if gathered:
            events.append({"scenario": "crowd_gathering", "start_s": gathered[0], "end_s": gathered[-1],
                           "track_ids": [m.track_id for m in members]})
    return sorted(events, key=lambda e: e["start_s"])


DEFAULT_RATES = {"riders": 5.0, "p_no_helmet": 0.4, "cars": 4.0, "pedestrians": 4.0, "parking": 0.8,
                 "garbage": 0.6, "vending": 0.8, "waterlogging": 0.8, "crowds": 0.6}


def _clip_job(args: tuple) -> dict:
    domain, seed, k, size, seconds, fps, fmt, out, rates, condition = args
    rng = np.random.default_rng([seed, 91, k])
    cam = make_camera(f"cam{k:02d}", domain, size, rng)
    cond = sample_condition(domain, rng, condition)
    start = EPOCH + timedelta(days=int(rng.integers(0, 28)), hours=float(rng.uniform(*HOURS[cond.name])))
    actors = plan_clip(cam, cond, seconds, rng, rates)
    truth = render_clip(cam, cond, actors, seconds, fps, seed * 1000 + k, Path(out) / cam.camera_id / "frames", fmt)
    events = derive_events(cam, actors, truth, fps)
    return {"camera": cam, "condition": cond, "start": start, "truth": truth, "events": events}


def generate_video(domain: str, cameras: int, seconds: float, fps: float, seed: int, out: Path,
                   size: int = 192, fmt: str = "jpg", workers: int = 1, mp4: bool = False,
                   rates: dict | None = None, condition: str | None = None,
                   progress: Callable[[int], None] | None = None) -> dict:
    """Write K camera clips: frames, per-camera and combined COCO (with track ids), events.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rates = {**DEFAULT_RATES, **(rates or {})}
    jobs = [(domain, seed, k, size, seconds, fps, fmt, str(out), rates, condition) for k in range(cameras)]
    coco, rows, events, cams = coco_skeleton(), [], [], []
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    results = pool.map(_clip_job, jobs) if pool else map(_clip_job, jobs)
    try:
        for res in results:
            cam, cond, start = res["camera"], res["condition"], res["start"]
            cam_coco = coco_skeleton()
            for fr in res["truth"]:
                rel = f"{cam.camera_id}/frames/{fr['file']}"
                ts = start + timedelta(seconds=fr["t"])
                extra = {"camera_id": cam.camera_id, "frame_index": fr["index"], "timestamp": ts.isoformat()}
                add_to_coco(coco, rel, size, fr["boxes"], extra)
                add_to_coco(cam_coco, f"frames/{fr['file']}", size, fr["boxes"], extra)
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
            if mp4:
                write_mp4(out / cam.camera_id / "frames", out / f"{cam.camera_id}.mp4", fps)
            if progress:
                progress(1)
    finally:
        if pool:
            pool.shutdown()
    (out / "annotations.coco.json").write_text(json.dumps(coco))
    pd.DataFrame(rows).to_parquet(out / "metadata.parquet", index=False)
    (out / "cameras.json").write_text(json.dumps(cams, indent=1))
    (out / "events.json").write_text(json.dumps(events, indent=1))
    return {"cameras": cameras, "frames": len(rows), "events": pd.Series(
        [e["scenario"] for e in events], dtype=str).value_counts().to_dict(), "out": str(out)}


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
