"""Still frames: sample a scene, render it, and write image datasets with COCO ground truth."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from cityloop.core.geometry import iou
from cityloop.scenarios import registry
from cityloop.scenes.render import (
    Box,
    Light,
    Obj,
    apply_condition,
    draw_object,
    encode,
    render_background,
    sample_attrs,
)
from cityloop.scenes.world import (
    DISTRICTS,
    DOMAINS,
    Camera,
    Condition,
    make_camera,
    sample_condition,
)

DOMAIN_IDS = {name: i for i, name in enumerate(DOMAINS)}
EPOCH = datetime(2026, 10, 5, tzinfo=UTC)  # a Monday: frames and clips fall in the 4 weeks after
HOURS = {"day": (8, 17), "dusk": (17, 19), "night": (20, 29), "rain": (7, 19), "fog": (6, 11)}

MIN_BOX = 5.0  # px: smaller boxes are not labeled (the gate's min_box is 4)
MIN_VISIBLE = 0.2  # share of an object's drawn pixels that must show (not hidden by nearer objects)
# under this share shown, a labeled box is "mostly hidden": COCO iscrowd 1, an ignore region for scoring and
# training (CityPersons' and Caltech's practice: heavily occluded people are neither hits nor misses)
HIDDEN_BELOW = 0.5

@dataclass
class Frame:
    """One rendered frame with its ground truth."""

    name: str
    data: bytes
    boxes: list[tuple[str, Box, int]]  # (class, (x0, y0, x1, y1), track id)
    camera: Camera
    condition: Condition
    timestamp: datetime
    shown: list[float] = field(default_factory=list)  # per box: share of the object's drawn pixels that show


def _fits(cam: Camera, where: str, x: float, y: float) -> bool:
    road = cam.on_road(x, y)
    if where == "road":
        return road
    if where == "walk":
        return cam.layout == "plaza" or not road
    return True


def sample_objects(cam: Camera, cond: Condition, rng: np.random.Generator) -> list[Obj]:
    """Place each registered class's objects where they belong (riders and cars on the road, stalls on
    pavements...), as many as its rate in this condition draws."""
    y0, y1 = cam.ground_range(14.0 * cam.size / 192)
    placed: list[tuple[Obj, Box]] = []
    for spec in registry().object_classes.values():
        rate = spec.rate_by_condition.get(cond.name, spec.rate)
        for _ in range(int(rng.poisson(rate))):
            for _try in range(15):
                x, y = rng.uniform(-0.05, 1.05) * cam.size, rng.uniform(y0, y1)
                if not _fits(cam, spec.where, x, y):
                    continue
                s = cam.scale(y)
                half, tall = spec.extent
                box = (x - half * s, y - tall * s, x + half * s, y)
                if any(iou(box, b) > 0.3 for _, b in placed):
                    continue
                attrs = sample_attrs(spec.name, rng)
                if spec.adapt is not None:
                    spec.adapt(attrs, cam, rng)
                placed.append((Obj(spec.name, float(x), float(y), float(s), attrs), box))
                break
    return [o for o, _ in placed]


def render_scene(cam: Camera, cond: Condition, objects: list[Obj], rng: np.random.Generator,
                 background: tuple | None = None, shown: list[float] | None = None
                 ) -> tuple[np.ndarray, list[tuple[Obj, Box]], list[Obj]]:
    """Draw the background and objects (far to near, water first), then light and weather.

    Returns the RGB image, each labeled object with its box, and every object in the frame.

    An object is in the frame when at least half its declared box is, and that part is MIN_BOX or
    more on each side (the world the camera frames: clips' event truth counts these). Its box is the
    declared one clipped to the frame: the whole object, hidden parts included (MOT's full-body boxes),
    so a box's bottom edge stays the object's ground point. It is labeled when, besides, at least
    MIN_VISIBLE of the pixels it draws (inside its box) show, not covered by nearer objects: nobody
    can label a rider hidden behind a bus. `shown`, when given, receives each labeled object's share of
    its drawn pixels that show (1.0: nothing in front of it), in the order of the labeled boxes.
    """
    bg, lamps, windows = background or render_background(cam)
    img = bg.copy()
    lights: list[Light] = list(lamps) + list(windows)
    flat = {c.name for c in registry().object_classes.values() if c.flat}
    order = sorted(objects, key=lambda o: (o.cls not in flat, o.y))
    S = cam.size
    sky = DISTRICTS[cam.district]["sky"]
    owner = np.full((S, S), -1, np.int32)  # which object each pixel shows (-1: the background)
    raw, drawn = [], []
    for k, o in enumerate(order):
        box = draw_object(img, o, lights, cond, sky)
        x0, y0, x1, y1 = (int(np.clip(np.floor(box[0]), 0, S)), int(np.clip(np.floor(box[1]), 0, S)),
                          int(np.clip(np.ceil(box[2]), 0, S)), int(np.clip(np.ceil(box[3]), 0, S)))
        mine = np.zeros((S, S), bool)  # its pixels inside its declared box (a clothesline's poles are not)
        for fill in (0, 255):  # drawn on black and on white: every pixel it paints differs on one of them
            canvas = np.full_like(img, fill)
            draw_object(canvas, o, [], cond, sky)
            mine[y0:y1, x0:x1] |= (canvas[y0:y1, x0:x1] != fill).any(-1)
        owner[mine] = k
        raw.append((o, box))
        drawn.append(int(mine.sum()))
    img = apply_condition(img, cam, cond, lights, rng)
    visible, present = [], []
    for k, (o, (x0, y0, x1, y1)) in enumerate(raw):
        cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(S), x1), min(float(S), y1)
        full = max(1e-6, (x1 - x0) * (y1 - y0))
        if cx1 - cx0 < MIN_BOX or cy1 - cy0 < MIN_BOX or (cx1 - cx0) * (cy1 - cy0) / full < 0.5:
            continue
        present.append(o)
        if (owner == k).sum() >= max(1, MIN_VISIBLE * drawn[k]):
            visible.append((o, (cx0, cy0, cx1, cy1)))
            if shown is not None:
                shown.append(float((owner == k).sum()) / max(1, drawn[k]))
    return img, visible, present


def frame_timestamp(cond: Condition, rng: np.random.Generator) -> datetime:
    """A time in the four weeks after EPOCH whose hour fits the condition."""
    lo, hi = HOURS[cond.name]
    hour = rng.uniform(lo, hi)
    return EPOCH + timedelta(days=int(rng.integers(0, 28)), hours=float(hour))


def make_cameras(domain: str, seed: int, size: int, n: int | None = None) -> list[Camera]:
    """The fixed camera set-ups of a domain for a seed."""
    rng = np.random.default_rng([seed, DOMAIN_IDS[domain], 7])
    n = n or DOMAINS[domain]["n_cameras"]
    return [make_camera(f"{domain}-cam{k:03d}", domain, size, rng) for k in range(n)]


def render_frame(domain: str, seed: int, index: int, size: int, cameras: list[Camera],
                 fmt: str = "jpg") -> Frame:
    """Frame `index` of a (domain, seed) dataset: fully determined by its arguments."""
    rng = np.random.default_rng([seed, DOMAIN_IDS[domain], index])
    cam = cameras[int(rng.integers(len(cameras)))]
    cond = sample_condition(domain, rng)
    objects = sample_objects(cam, cond, rng)
    shown: list[float] = []
    img, visible, _present = render_scene(cam, cond, objects, rng, _background(cam), shown)
    data = encode(img, fmt, cond.jpeg)
    name = f"{domain}-s{seed}-{index:06d}.{fmt}"
    boxes = [(o.cls, b, o.track_id) for o, b in visible]
    return Frame(name, data, boxes, cam, cond, frame_timestamp(cond, rng), shown)


_BG_CACHE: dict[tuple, tuple] = {}


def _background(cam: Camera) -> tuple:
    key = (cam.camera_id, cam.seed, cam.size)
    if key not in _BG_CACHE:
        if len(_BG_CACHE) > 256:
            _BG_CACHE.clear()
        _BG_CACHE[key] = render_background(cam)
    return _BG_CACHE[key]


def _render_chunk(args: tuple) -> list[Frame]:
    domain, seed, indices, size, cameras, fmt = args
    return [render_frame(domain, seed, i, size, cameras, fmt) for i in indices]


def iter_frames(domain: str, n: int, seed: int, size: int = 192, fmt: str = "jpg",
                workers: int = 1, chunk: int = 64) -> Iterator[Frame]:
    """Render frames 0..n-1 in order, in `workers` processes; output independent of `workers`."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {sorted(DOMAINS)}")
    cameras = make_cameras(domain, seed, size)
    jobs = [(domain, seed, range(a, min(n, a + chunk)), size, cameras, fmt) for a in range(0, n, chunk)]
    if workers <= 1:
        for job in jobs:
            yield from _render_chunk(job)
        return
    with ProcessPoolExecutor(workers) as pool:
        for frames in pool.map(_render_chunk, jobs):
            yield from frames


def coco_skeleton() -> dict:
    """An empty COCO dict with the platform's categories."""
    return {
        "info": {"description": "cityloop simulator", "version": "1"},
        "images": [], "annotations": [],
        "categories": [{"id": i, "name": c, "supercategory": "city"} for c, i in registry().category_ids.items()],
    }


def add_to_coco(coco: dict, file_name: str, size: int, boxes: list[tuple[str, Box, int]],
                extra: dict, shown: list[float] | None = None) -> None:
    """Append one image and its boxes (COCO xywh) to `coco`. With `shown` (render_scene's, one share per
    box), each box records it and a box under HIDDEN_BELOW shown is `iscrowd: 1` (ignored)."""
    image_id = len(coco["images"]) + 1
    coco["images"].append({"id": image_id, "file_name": file_name, "width": size, "height": size, **extra})
    for k, (cls, (x0, y0, x1, y1), track) in enumerate(boxes):
        w, h = x1 - x0, y1 - y0
        ann = {"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": registry().category_ids[cls],
               "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)], "area": round(w * h, 2),
               "iscrowd": 0, "track_id": track}
        if shown is not None:
            ann["shown"] = round(float(shown[k]), 3)
            ann["iscrowd"] = int(shown[k] < HIDDEN_BELOW)
        coco["annotations"].append(ann)


def frame_metadata(fr: Frame, domain: str, seed: int) -> dict:
    """One row of the metadata table the ingest reads."""
    return {
        "file_name": f"images/{fr.name}", "camera_id": fr.camera.camera_id, "district": fr.camera.district,
        "timestamp": fr.timestamp, "condition": fr.condition.name, "conditions": fr.condition.tags,
        "layout": fr.camera.layout, "camera_height": fr.camera.height, "jpeg_quality": fr.condition.jpeg,
        "domain": domain, "seed": seed,
    }


def generate_frames(domain: str, n: int, seed: int, out: Path, size: int = 192, fmt: str = "jpg",
                    workers: int = 1, progress: Callable[[int], None] | None = None) -> dict:
    """Write n frames of a domain to out/images, with annotations.coco.json and metadata.parquet.

    Returns a summary (frames, boxes per class, conditions).
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    coco, rows = coco_skeleton(), []
    for fr in iter_frames(domain, n, seed, size, fmt, workers):
        (out / "images" / fr.name).write_bytes(fr.data)
        meta = frame_metadata(fr, domain, seed)
        add_to_coco(coco, meta["file_name"], size, fr.boxes, {"camera_id": meta["camera_id"]}, fr.shown)
        rows.append(meta)
        if progress:
            progress(1)
    (out / "annotations.coco.json").write_text(json.dumps(coco))
    pd.DataFrame(rows).to_parquet(out / "metadata.parquet", index=False)
    cams = make_cameras(domain, seed, size)
    (out / "cameras.json").write_text(json.dumps([c.to_dict() for c in cams], indent=1))
    counts = pd.Series([a["category_id"] for a in coco["annotations"]]).value_counts()
    return {
        "frames": n,
        "boxes": {c: int(counts.get(i, 0)) for c, i in registry().category_ids.items()},
        "conditions": pd.Series([r["condition"] for r in rows]).value_counts().to_dict(),
        "out": str(out),
    }
