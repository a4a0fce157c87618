"""E-bike riders without helmets (traffic police): a rider track classed rider_no_helmet in k of its
last n frames. Riders with helmets are the confusers, and the detector's hardest call: the head."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cityloop.scenarios.base import Candidate, ClipSpec, ObjectClass, Scenario, Track, per_track
from cityloop.scenes.draw import (
    AA,
    CAR_COLORS,
    CLOTH_COLORS,
    HAIR_COLORS,
    HELMET_COLORS,
    SKIN_COLORS,
    Box,
    Light,
    Obj,
    pt,
    shade,
)

ORDER = 10


@dataclass
class Params:
    k: int = 3  # rider_no_helmet in k ...
    n: int = 5  # ... of the last n frames of a track


def person_attrs(rng: np.random.Generator) -> dict:
    """The look of a person (riders and pedestrians share it)."""
    return {"shirt": CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))],
            "pants": CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))],
            "skin": SKIN_COLORS[rng.integers(len(SKIN_COLORS))],
            "hair": HAIR_COLORS[rng.integers(len(HAIR_COLORS))],
            "helmet": HELMET_COLORS[rng.integers(len(HELMET_COLORS))],
            "bike": CAR_COLORS[rng.integers(len(CAR_COLORS))],
            "box": bool(rng.random() < 0.3),  # delivery box on the rear rack
            "phase": float(rng.uniform(0, 2 * np.pi))}


def draw_rider(img, o: Obj, lights: list[Light], on: bool) -> Box:
    """An e-bike rider seen from the side; the head is a helmet or bare hair."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    f = a["facing"]
    wr = 0.17 * s
    wt = max(1, int(0.04 * s))
    for dx in (-0.36, 0.36):
        cv2.circle(img, pt(x + dx * s * f, y - wr), int(round(wr)), (25, 25, 25), wt + 1, AA)
    frame = shade(a["bike"])
    cv2.line(img, pt(x - 0.36 * s * f, y - wr), pt(x - 0.05 * s * f, y - 0.42 * s), frame, wt + 1, AA)
    cv2.line(img, pt(x - 0.05 * s * f, y - 0.42 * s), pt(x + 0.36 * s * f, y - wr), frame, wt + 1, AA)
    cv2.line(img, pt(x + 0.36 * s * f, y - wr), pt(x + 0.3 * s * f, y - 0.62 * s), frame, wt, AA)
    cv2.rectangle(img, pt(x - 0.25 * s, y - 0.45 * s), pt(x + 0.2 * s, y - 0.36 * s), frame, -1)
    if a.get("box"):
        bx = x - 0.42 * s * f
        cv2.rectangle(img, pt(bx - 0.13 * s, y - 0.72 * s), pt(bx + 0.13 * s, y - 0.44 * s),
                      (230, 200, 40), -1)
    # rider: leg, torso, arm, head
    tw = max(2, int(0.13 * s))
    seat = (x - 0.08 * s * f, y - 0.48 * s)
    shoulder = (x + 0.02 * s * f, y - 0.78 * s)
    cv2.line(img, pt(*seat), pt(x + 0.08 * s * f, y - 0.28 * s), shade(a["pants"]), tw - 1, AA)
    cv2.line(img, pt(*seat), pt(*shoulder), shade(a["shirt"]), tw, AA)
    cv2.line(img, pt(*shoulder), pt(x + 0.28 * s * f, y - 0.62 * s), shade(a["shirt"], 0.8),
             max(1, tw // 2), AA)
    hx, hy, r = x + 0.05 * s * f, y - 0.87 * s, max(1.5, 0.075 * s)
    cv2.circle(img, pt(hx, hy), int(round(r)), shade(a["skin"]), -1, AA)
    if o.cls == "rider_helmet":
        rh = r * 1.35
        cv2.ellipse(img, pt(hx, hy - 0.1 * r), (int(round(rh)), int(round(rh * 0.95))), 0, 180, 360,
                    shade(a["helmet"]), -1, AA)
        cv2.line(img, pt(hx - rh, hy), pt(hx + rh, hy), shade(a["helmet"], 0.7), max(1, int(r * 0.4)), AA)
        top = hy - rh * 1.05
    else:
        cv2.ellipse(img, pt(hx - 0.2 * r * f, hy - 0.15 * r), (int(round(r)), int(round(r * 0.75))), 0,
                    180, 360, shade(a["hair"]), -1, AA)
        top = hy - r
    if on:
        lights.append((x + 0.34 * s * f, y - 0.6 * s, 0.12 * s, (1.0, 0.95, 0.7)))
    return (x - 0.55 * s, min(top, y - 0.95 * s), x + 0.55 * s, y)


def _draw(img, o: Obj, lights: list[Light], cond, sky) -> Box:
    return draw_rider(img, o, lights, cond.lights)


def rule(tr: Track, ts: float, p: Params, ctx) -> Candidate | None:
    if tr.family != "rider":
        return None
    last = list(tr.history)[-p.n:]
    bad = [o for o in last if o.cls == "rider_no_helmet"]
    if len(bad) < p.k:
        return None
    return Candidate("helmetless_rider", f"t{tr.track_id}", tr.first_ts, [tr.box],
                     sum(o.score for o in bad) / len(bad), tr.velocity)


def plan(p, rates: dict) -> None:
    """Riders cross the road; a share of them without helmets."""
    for _ in range(p.count(rates["riders"])):
        no_helmet = p.rng.random() < rates["p_no_helmet"]
        keys, d = p.crossing(p.rng.uniform(-2, p.seconds), p.rng.uniform(25, 50), p.road_y())
        p.add("rider_no_helmet" if no_helmet else "rider_helmet", keys,
              "helmetless_rider" if no_helmet else None, facing=d)


HEAD = (0.5, 0.08)  # the head in a rider's box (draw_rider: y - 0.87 s of a box ~0.95 s tall)

SCENARIO = Scenario(
    name="helmetless_rider", title="E-bike rider without helmet", agency="traffic police",
    kind="attribute, k of n frames", alert="Rider without a helmet on {camera_id} ({district})",
    rule=per_track(rule), params=Params,
    classes=(
        ObjectClass("rider_helmet", _draw, person_attrs, family="rider", where="road", rate=0.8,
                    extent=(0.55, 1.0), confused_with="rider_no_helmet", cue=HEAD),
        ObjectClass("rider_no_helmet", _draw, person_attrs, family="rider", where="road", rate=0.8,
                    extent=(0.55, 1.0), confused_with="rider_helmet", cue=HEAD),
    ),
    uses=("rider_helmet", "rider_no_helmet"),
    rates={"riders": 5.0, "p_no_helmet": 0.4}, plan=plan,
    positive=ClipSpec("day", 10.0, {"riders": 6.0, "p_no_helmet": 0.5}),
    confuser=ClipSpec("rain", 14.0, {"riders": 8.0, "p_no_helmet": 0.0}),
    fps=2.0, min_fps=1.0, priority=3,
)
