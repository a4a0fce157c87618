"""Illegal parking (roads): a car that stays in a no-parking zone (its ground point moving less than
`max_move` box widths) for `t_s`, in the early morning when the kerbs must be clear. Through traffic is
the confuser."""

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
    ground,
    per_track,
    visible_times,
)
from cityloop.scenes.draw import AA, CAR_COLORS, Box, Light, Obj, pt, shade

ORDER = 20


@dataclass
class Params:
    t_s: float = 8.0  # stationary in a no-parking zone for T
    max_move: float = 0.15  # box widths the ground point may wander while "stationary"


def car_attrs(rng: np.random.Generator) -> dict:
    return {"color": CAR_COLORS[rng.integers(len(CAR_COLORS))], "rear": False, "len": float(rng.uniform(2.2, 2.9))}


def seen_from_behind(attrs: dict, cam, rng: np.random.Generator) -> None:
    """On roads that run away from the camera most cars are seen from behind."""
    if cam.layout == "perspective":
        attrs["rear"] = bool(rng.random() < 0.7)


def draw_car(img, o: Obj, lights: list[Light], on: bool) -> Box:
    """A car from the side, or from behind on perspective roads."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    body = shade(a["color"])
    glass = (70, 90, 110)
    if a.get("rear"):
        w = 1.05 * s
        cv2.rectangle(img, pt(x - 0.45 * w, y - 0.12 * s), pt(x + 0.45 * w, y), (20, 20, 20), -1)
        cv2.rectangle(img, pt(x - w / 2, y - 0.58 * s), pt(x + w / 2, y - 0.1 * s), body, -1)
        cv2.rectangle(img, pt(x - 0.38 * w, y - 0.88 * s), pt(x + 0.38 * w, y - 0.58 * s),
                      shade(a["color"], 0.9), -1)
        cv2.rectangle(img, pt(x - 0.32 * w, y - 0.84 * s), pt(x + 0.32 * w, y - 0.62 * s), glass, -1)
        for sx in (-1, 1):
            cv2.rectangle(img, pt(x + sx * 0.46 * w, y - 0.45 * s), pt(x + sx * 0.32 * w, y - 0.36 * s),
                          (200, 20, 20), -1)
            if on:
                lights.append((x + sx * 0.39 * w, y - 0.4 * s, 0.1 * s, (1.0, 0.15, 0.1)))
        return (x - w / 2, y - 0.88 * s, x + w / 2, y)
    f, L = a["facing"], a["len"] * s
    cv2.rectangle(img, pt(x - L / 2, y - 0.55 * s), pt(x + L / 2, y - 0.14 * s), body, -1)
    cab = np.array([pt(x - 0.32 * L * f, y - 0.55 * s), pt(x - 0.22 * L * f, y - 0.88 * s),
                    pt(x + 0.12 * L * f, y - 0.88 * s), pt(x + 0.28 * L * f, y - 0.55 * s)], np.int32)
    cv2.fillPoly(img, [cab], body, AA)
    win = np.array([pt(x - 0.27 * L * f, y - 0.57 * s), pt(x - 0.2 * L * f, y - 0.82 * s),
                    pt(x + 0.1 * L * f, y - 0.82 * s), pt(x + 0.22 * L * f, y - 0.57 * s)], np.int32)
    cv2.fillPoly(img, [win], glass, AA)
    r = 0.15 * s
    for dx in (-0.3, 0.3):
        cv2.circle(img, pt(x + dx * L, y - r), int(round(r)), (20, 20, 20), -1, AA)
        cv2.circle(img, pt(x + dx * L, y - r), max(1, int(round(r * 0.45))), (150, 150, 150), -1, AA)
    hx = x + 0.48 * L * f
    cv2.rectangle(img, pt(hx - 0.03 * L, y - 0.48 * s), pt(hx + 0.03 * L, y - 0.4 * s), (250, 240, 180), -1)
    if on:
        lights.append((hx + 0.06 * L * f, y - 0.44 * s, 0.22 * s, (1.0, 0.95, 0.75)))
        lights.append((x - 0.49 * L * f, y - 0.44 * s, 0.08 * s, (0.9, 0.1, 0.05)))
    return (x - L / 2, y - 0.88 * s, x + L / 2, y)


def _draw(img, o: Obj, lights: list[Light], cond, sky) -> Box:
    return draw_car(img, o, lights, cond.lights)


def rule(tr: Track, ts: float, p: Params, ctx) -> Candidate | None:
    if tr.family != "car" or not tr.held(ts, p.t_s):
        return None
    window = tr.since(ts - p.t_s)
    if len(window) < 3 or not all(ctx.zones.inside("no_parking", *ground(o.box)) for o in window):
        return None
    gx, gy = ground(tr.box)
    tol = p.max_move * (tr.box[2] - tr.box[0]) + 1.0
    if any(abs(ground(o.box)[0] - gx) > tol or abs(ground(o.box)[1] - gy) > tol for o in window):
        return None
    return Candidate("illegal_parking", f"t{tr.track_id}", window[0].ts, [tr.box],
                     sum(o.score for o in window) / len(window))


def site(cam, rng, domain: str, force: bool) -> dict:
    """The kerb strip where stopping is forbidden, from the road's geometry."""
    size, horizon = cam.size, cam.horizon
    ground_h = size - horizon
    if cam.layout == "straight":
        a, b = cam.road
        zone = (size * 0.05, a, size * 0.95, a + (b - a) * 0.35)
    elif cam.layout == "perspective":
        zone = (0.0, horizon + ground_h * 0.5, size, size)
    else:
        zone = (size * 0.1, horizon + ground_h * 0.4, size * 0.9, size)
    return {"no_parking": [round(float(v), 2) for v in zone]}


def plan(p, rates: dict) -> None:
    """Through traffic, and cars that pull into the no-parking zone and stay."""
    cam = p.cam
    for _ in range(p.count(rates["cars"])):
        keys, d = p.crossing(p.rng.uniform(-3, p.seconds), p.rng.uniform(35, 70), p.road_y())
        p.add("car", keys, facing=d)
    zx0, zy0, zx1, zy1 = cam.zones.get("no_parking") or (0, 0, 0, 0)
    for _ in range(p.count(rates["parking"])):
        y = float(p.rng.uniform(max(zy0, p.y0), min(zy1, p.y1))) if zy1 > max(zy0, p.y0) else p.road_y()
        xs = float(p.rng.uniform(zx0 + 0.1 * (zx1 - zx0), zx1 - 0.1 * (zx1 - zx0)))
        t_in = float(p.rng.uniform(0, p.seconds * 0.6))
        start = -2.0 * cam.scale(y) if p.rng.random() < 0.5 else cam.size + 2.0 * cam.scale(y)
        t_stop = t_in + abs(xs - start) / (30 * p.unit)
        t_leave = t_stop + float(p.rng.uniform(30, 120))
        t_gone = t_leave + abs(xs - start) / (30 * p.unit)
        keys = [(t_in, start, y), (t_stop, xs, y), (t_leave, xs, y), (t_gone, start, y)]
        p.add("car", keys, "illegal_parking", facing=1 if start < xs else -1, extra={"stop": (t_stop, t_leave)})


def truth(cam, actors, frames) -> list[dict]:
    """A parked car is an event while it stands still (visible, between stopping and leaving)."""
    seen = visible_times(frames)
    out = []
    for a in actors:
        if a.scenario != "illegal_parking" or not seen.get(a.track_id):
            continue
        t_stop, t_leave = a.extra["stop"]
        start, end = max(seen[a.track_id][0], t_stop), min(seen[a.track_id][-1], t_leave)
        if end - start >= 1.0:
            out.append({"scenario": "illegal_parking", "start_s": start, "end_s": end, "track_ids": [a.track_id]})
    return out


SCENARIO = Scenario(
    name="illegal_parking", title="Illegal parking", agency="roads",
    kind="zone dwell (stationary)", alert="Car parked in a no-parking zone on {camera_id} ({district})",
    rule=per_track(rule), params=Params,
    classes=(ObjectClass("car", _draw, car_attrs, where="road", rate=1.2, extent=(1.3, 1.0),
                         confused_with="vendor_stall", adapt=seen_from_behind),),
    uses=("car",), windows=(Window(hours=(5.0, 10.0)),),
    zones=(ZoneKind("no_parking", doc="where stopping is forbidden; none configured: the whole frame"),),
    rates={"cars": 4.0, "parking": 0.8}, plan=plan, truth=truth, site=site,
    positive=ClipSpec("day", 6.0, {"parking": 2.0, "cars": 3.0}, seconds=90),
    confuser=ClipSpec("fog", 7.0, {"parking": 0.0, "cars": 8.0}),
    fps=0.5, min_fps=0.25, priority=2,
)
