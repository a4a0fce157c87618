"""Garbage piles (city management): a garbage track that persists for `t_s`. Bins and cones in the
background are the confusers (never labeled)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cityloop.scenarios.base import Candidate, ClipSpec, ObjectClass, Scenario, Track, dwell, per_track
from cityloop.scenes.draw import AA, BAG_COLORS, Box, Light, Obj, pt, shade

ORDER = 30


@dataclass
class Params:
    t_s: float = 6.0  # a pile persisting for T


def garbage_attrs(rng: np.random.Generator) -> dict:
    n = int(rng.integers(3, 8))
    return {"bags": [(float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0, 0.25)), float(rng.uniform(0.12, 0.28)),
                      float(rng.uniform(0.09, 0.2)), BAG_COLORS[rng.integers(len(BAG_COLORS))]) for _ in range(n)],
            "boxes": int(rng.integers(0, 3))}


def draw_garbage(img, o: Obj, lights: list[Light]) -> Box:
    """A pile of bags and cardboard dumped on the pavement."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    x0, y0, x1, y1 = 1e9, 1e9, -1e9, -1e9
    for i in range(a["boxes"]):
        bx = x + (i - 0.5) * 0.35 * s
        cv2.rectangle(img, pt(bx - 0.15 * s, y - 0.3 * s), pt(bx + 0.15 * s, y), (160, 120, 75), -1)
        x0, y0, x1, y1 = min(x0, bx - 0.15 * s), min(y0, y - 0.3 * s), max(x1, bx + 0.15 * s), y
    for dx, dy, rw, rh, col in a["bags"]:
        cx, cy = x + dx * s, y - rh * s - dy * s * 0.5
        cv2.ellipse(img, pt(cx, cy), (max(1, int(rw * s)), max(1, int(rh * s))), 0, 0, 360,
                    shade(col), -1, AA)
        cv2.ellipse(img, pt(cx - rw * s * 0.3, cy - rh * s * 0.4), (max(1, int(rw * s * 0.3)),
                    max(1, int(rh * s * 0.2))), 0, 0, 360, shade(col, 1.4), -1, AA)
        x0, y0 = min(x0, cx - rw * s), min(y0, cy - rh * s)
        x1, y1 = max(x1, cx + rw * s), max(y1, cy + rh * s)
    return (x0, y0, x1, max(y1, y))


def _draw(img, o: Obj, lights: list[Light], cond, sky) -> Box:
    return draw_garbage(img, o, lights)


def rule(tr: Track, ts: float, p: Params, ctx) -> Candidate | None:
    return dwell(tr, ts, "garbage", "garbage_pile", p.t_s)


def plan(p, rates: dict) -> None:
    """Garbage is dumped on the pavement and stays."""
    p.static("garbage", "garbage_pile", rates["garbage"])


SCENARIO = Scenario(
    name="garbage_pile", title="Garbage pile", agency="city management",
    kind="dwell", alert="Garbage dumped on {camera_id} ({district})",
    rule=per_track(rule), params=Params,
    classes=(ObjectClass("garbage", _draw, garbage_attrs, where="walk", rate=0.4, extent=(0.6, 0.45),
                         confused_with="vendor_stall"),),
    uses=("garbage",), rates={"garbage": 0.6}, plan=plan,
    positive=ClipSpec("rain", 12.0, {"garbage": 2.0}),
    confuser=ClipSpec("night", 22.0, {"garbage": 0.0}),
    fps=0.5, min_fps=0.25, priority=1,
)
