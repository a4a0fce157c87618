"""Street vending late at night (city management): a vendor's stall standing in a vending zone for
`t_s` during the night window. The same stall at noon is not an event."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cityloop.scenarios.base import (
    Candidate,
    ClipSpec,
    ObjectClass,
    Scenario,
    Track,
    Window,
    ZoneKind,
    dwell,
    ground,
    per_track,
)
from cityloop.scenes.draw import AA, CLOTH_COLORS, Box, Light, Obj, pt, shade

ORDER = 40


@dataclass
class Params:
    t_s: float = 4.0  # a stall standing in a vending zone for T


def stall_attrs(rng: np.random.Generator) -> dict:
    return {"canopy": CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))],
            "canopy2": (240, 240, 240) if rng.random() < 0.6 else CLOTH_COLORS[rng.integers(9)],
            "table": (150, 110, 70) if rng.random() < 0.5 else (180, 180, 185),
            "goods": [(float(rng.uniform(-0.6, 0.6)), CLOTH_COLORS[rng.integers(9)])
                      for _ in range(int(rng.integers(3, 7)))],
            "width": float(rng.uniform(1.2, 1.7))}


def draw_stall(img, o: Obj, lights: list[Light], on: bool) -> Box:
    """A street vendor's cart: table with goods under a striped canopy."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    w = a["width"] * s
    leg = max(1, int(0.04 * s))
    for dx in (-0.45, 0.45):
        cv2.line(img, pt(x + dx * w, y), pt(x + dx * w, y - 0.45 * s), (60, 60, 60), leg)
    cv2.rectangle(img, pt(x - w / 2, y - 0.5 * s), pt(x + w / 2, y - 0.38 * s), shade(a["table"]), -1)
    for gx, col in a["goods"]:
        cv2.circle(img, pt(x + gx * w / 2, y - 0.55 * s), max(1, int(0.06 * s)), shade(col), -1, AA)
    cv2.line(img, pt(x, y - 0.5 * s), pt(x, y - 1.15 * s), (90, 90, 90), leg)
    top = y - 1.3 * s
    n = 6
    for i in range(n):
        xa, xb = x - 0.75 * w + i * 1.5 * w / n, x - 0.75 * w + (i + 1) * 1.5 * w / n
        poly = np.array([pt(x + (xa - x) * 0.35, top), pt(x + (xb - x) * 0.35, top),
                         pt(xb, y - 1.08 * s), pt(xa, y - 1.08 * s)], np.int32)
        cv2.fillPoly(img, [poly], shade(a["canopy"] if i % 2 == 0 else a["canopy2"]), AA)
    if on:
        lights.append((x, y - 1.0 * s, 0.35 * s, (1.0, 0.8, 0.45)))
    return (x - 0.75 * w, top, x + 0.75 * w, y)


def _draw(img, o: Obj, lights: list[Light], cond, sky) -> Box:
    return draw_stall(img, o, lights, cond.lights)


def rule(tr: Track, ts: float, p: Params, ctx) -> Candidate | None:
    if not ctx.zones.inside("vending", *ground(tr.box)):
        return None
    return dwell(tr, ts, "vendor_stall", "street_vending", p.t_s)


def plan(p, rates: dict) -> None:
    """Stalls are set up after dark."""
    if p.cond.name in ("dusk", "night"):
        p.static("vendor_stall", "street_vending", rates["vending"])


SCENARIO = Scenario(
    name="street_vending", title="Street vending at night", agency="city management",
    kind="zone dwell, night window", alert="Street vending on {camera_id} ({district})",
    rule=per_track(rule), params=Params,
    classes=(ObjectClass("vendor_stall", _draw, stall_attrs, where="walk", rate=0.3,
                         rate_by_condition={"night": 0.7, "dusk": 0.7}, extent=(1.1, 1.3), confused_with="garbage"),),
    uses=("vendor_stall",), windows=(Window(hours=(17.0, 6.0)),),
    zones=(ZoneKind("vending", doc="where vending is forbidden; none configured: the whole frame"),),
    rates={"vending": 0.8}, plan=plan,
    positive=ClipSpec("night", 22.0, {"vending": 3.0}),
    confuser=ClipSpec("night", 23.0, {"vending": 0.0}),
    fps=0.5, min_fps=0.25, priority=1,
)
