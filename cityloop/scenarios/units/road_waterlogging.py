"""Road waterlogging in rain (roads): standing water covering at least `min_area` of the frame for
`t_s`. Wet, shining asphalt without a pool is the confuser."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cityloop.scenarios.base import Candidate, ClipSpec, ObjectClass, Scenario, Track, Window, per_track
from cityloop.scenes.draw import AA, Box, Light, Obj, pt, shade

ORDER = 50


@dataclass
class Params:
    min_area: float = 0.002  # water box area as a share of the frame ...
    t_s: float = 2.0  # ... for T


def water_attrs(rng: np.random.Generator) -> dict:
    return {"w": float(rng.uniform(1.8, 4.0)), "h": float(rng.uniform(0.22, 0.45)),
            "wobble": [float(v) for v in rng.uniform(0.8, 1.15, 12)], "shine": float(rng.uniform(0.3, 0.7))}


def draw_water(img, o: Obj, lights: list[Light], sky: tuple) -> Box:
    """Standing water on the road: an irregular, sky-reflecting puddle."""
    s, x, y, a = o.s, o.x, o.y, o.attrs
    rw, rh = max(6.0, a["w"] * s / 2), max(3.0, a["h"] * s / 2)  # never thinner than a labelable box
    cy = y - rh
    ang = np.linspace(0, 2 * np.pi, len(a["wobble"]), endpoint=False)
    pts = np.stack([x + rw * np.cos(ang) * a["wobble"], cy + rh * np.sin(ang) * a["wobble"]], 1)
    under = img[int(max(0, min(img.shape[0] - 1, cy))), int(max(0, min(img.shape[1] - 1, x)))]
    col = np.asarray(under, float) * (1 - a["shine"]) + np.asarray(sky, float) * a["shine"] * 0.8
    cv2.fillPoly(img, [np.round(pts).astype(np.int32)], shade(col), AA)
    cv2.ellipse(img, pt(x - rw * 0.2, cy - rh * 0.2), (max(1, int(rw * 0.5)), max(1, int(rh * 0.25))),
                0, 0, 360, shade(col, 1.25), -1, AA)
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def _draw(img, o: Obj, lights: list[Light], cond, sky) -> Box:
    return draw_water(img, o, lights, sky)


def rule(tr: Track, ts: float, p: Params, ctx) -> Candidate | None:
    if tr.family != "water":
        return None

    def area(b) -> float:
        return (b[2] - b[0]) * (b[3] - b[1]) / ctx.frame_area

    big = [o for o in tr.history if area(o.box) >= p.min_area]
    if not big or ts - big[0].ts < p.t_s - 1e-6 or area(tr.box) < p.min_area:
        return None
    return Candidate("road_waterlogging", f"t{tr.track_id}", tr.first_ts, [tr.box],
                     sum(o.score for o in big) / len(big))


def plan(p, rates: dict) -> None:
    """Water pools on the road when it rains, growing over 20 s."""
    if p.cond.name == "rain":
        p.static("water", "road_waterlogging", rates["waterlogging"], on_road=True, grow=20.0)


SCENARIO = Scenario(
    name="road_waterlogging", title="Road waterlogging", agency="roads",
    kind="area dwell, rain window", alert="Water standing on the road at {camera_id} ({district})",
    rule=per_track(rule), params=Params,
    classes=(ObjectClass("water", _draw, water_attrs, where="road", rate=0.25, rate_by_condition={"rain": 0.9},
                         extent=(1.5, 0.3), confused_with="garbage", flat=True),),
    uses=("water",), windows=(Window(conditions=("rain",)),),
    rates={"waterlogging": 0.8}, plan=plan,
    positive=ClipSpec("rain", 15.0, {"waterlogging": 3.0}),
    confuser=ClipSpec("rain", 16.0, {"waterlogging": 0.0}),
    fps=1.0, min_fps=0.25, priority=2,
)
