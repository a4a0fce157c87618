"""A toy tenth scenario, registered only as a plugin (`CITYLOOP_SCENARIOS=tests.scenarios.toy_unit`):
traffic cones left on the carriageway (roads). A cluster of orange cones standing on the road for `t_s`.

It lives under tests/, never in `cityloop.scenarios.units`, so the built-ins stay as they are;
tests/scenarios/test_tenth_scenario.py checks that this one module is all a new scenario needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cityloop.scenarios.base import Candidate, ClipSpec, ObjectClass, Scenario, Track, dwell, per_track
from cityloop.scenes.draw import AA, Box, Light, Obj, pt, shade

ORANGE = (245, 105, 20)
WHITE = (245, 245, 240)


@dataclass
class Params:
    t_s: float = 6.0  # cones standing on the road for T


def cone_attrs(rng: np.random.Generator) -> dict:
    n = int(rng.integers(2, 5))
    return {"cones": [(float(i - (n - 1) / 2) * 0.28 + float(rng.uniform(-0.04, 0.04)),
                       float(rng.uniform(0.85, 1.1))) for i in range(n)],
            "tint": float(rng.uniform(0.85, 1.1))}


def draw_cones(img, o: Obj) -> Box:
    """2-4 orange traffic cones side by side, each with a white band and a dark base."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    x0, y0, x1, y1 = 1e9, 1e9, -1e9, -1e9
    for dx, k in a["cones"]:
        cx, h, half = x + dx * s, 0.4 * s * k, 0.1 * s * k
        top = y - h
        base_h = max(1.0, 0.05 * s)
        cv2.rectangle(img, pt(cx - half * 1.3, y - base_h), pt(cx + half * 1.3, y), (40, 40, 40), -1)
        body = np.array([pt(cx - half * 0.2, top), pt(cx + half * 0.2, top), pt(cx + half, y - base_h),
                         pt(cx - half, y - base_h)], np.int32)
        cv2.fillPoly(img, [body], shade(ORANGE, a["tint"]), AA)
        ya, yb = top + 0.4 * h, top + 0.58 * h  # the reflective band
        wa, wb = half * (0.2 + 0.8 * 0.4), half * (0.2 + 0.8 * 0.58)
        band = np.array([pt(cx - wa, ya), pt(cx + wa, ya), pt(cx + wb, yb), pt(cx - wb, yb)], np.int32)
        cv2.fillPoly(img, [band], WHITE, AA)
        x0, y0, x1, y1 = min(x0, cx - half * 1.3), min(y0, top), max(x1, cx + half * 1.3), max(y1, y)
    return (x0, y0, x1, y1)


def _draw(img, o: Obj, lights: list[Light], cond, sky) -> Box:
    return draw_cones(img, o)


def rule(tr: Track, ts: float, p: Params, ctx) -> Candidate | None:
    return dwell(tr, ts, "cone_cluster", "traffic_cone_left", p.t_s)


def plan(p, rates: dict) -> None:
    """Cones are set down on the road and left there."""
    p.static("cone_cluster", "traffic_cone_left", rates["cones"], on_road=True)


SCENARIO = Scenario(
    name="traffic_cone_left", title="Traffic cones left on the road", agency="roads",
    kind="dwell", alert="Cones left on the road at {camera_id} ({district})",
    rule=per_track(rule), params=Params,
    classes=(ObjectClass("cone_cluster", _draw, cone_attrs, where="road", rate=0.5, extent=(0.55, 0.42)),),
    uses=("cone_cluster",), rates={"cones": 0.5}, plan=plan,
    positive=ClipSpec("day", 12.0, {"cones": 2.0}),
    confuser=ClipSpec("day", 12.0, {"cones": 0.0}),
    fps=0.5, min_fps=0.25, priority=1,
)
