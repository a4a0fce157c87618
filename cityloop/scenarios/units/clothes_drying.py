"""Clothes drying along the street (city management): laundry hung out on a line (between two poles,
between a tree and a pole) or over a railing by the pavement, persisting for `t_s` on a sunny day. Flags
on poles and striped shop awnings (cloth in the wind too) are the confusers: never labeled.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cityloop.scenarios.base import Candidate, ClipSpec, ObjectClass, Scenario, Track, Window, dwell, per_track
from cityloop.scenes.draw import AA, CLOTH_COLORS, Box, Light, Obj, pt, shade

ORDER = 80

LAUNDRY_COLORS = [*CLOTH_COLORS, (250, 250, 250), (170, 210, 240), (250, 225, 120), (240, 170, 150),
                  (150, 200, 150)]
FLAG_COLORS = [(220, 30, 30), (250, 210, 30), (30, 80, 190), (250, 250, 250), (30, 150, 70), (240, 120, 20)]


@dataclass
class Params:
    t_s: float = 6.0  # laundry hanging out for T


def clothes_attrs(rng: np.random.Generator) -> dict:
    support = str(rng.choice(["poles", "tree", "railing"], p=[0.5, 0.25, 0.25]))
    n = int(rng.integers(3, 7))
    length = n * float(rng.uniform(0.26, 0.36)) + 0.3
    slots = [((i + 0.5) / n - 0.5) * 0.85 + float(rng.uniform(-0.2, 0.2)) / n for i in range(n)]
    items = []
    for u in slots:
        kind = str(rng.choice(["shirt", "trousers", "towel", "dress"], p=[0.4, 0.25, 0.25, 0.1]))
        c = LAUNDRY_COLORS[rng.integers(len(LAUNDRY_COLORS))]
        items.append({"u": float(u), "kind": kind, "color": c, "size": float(rng.uniform(0.85, 1.15)),
                      "stripe": LAUNDRY_COLORS[rng.integers(len(LAUNDRY_COLORS))] if rng.random() < 0.4 else None})
    return {"support": support, "len": length, "height": float(rng.uniform(1.1, 1.35)),
            "sag": float(rng.uniform(0.03, 0.09)), "items": items,
            "pole": (150, 150, 155) if rng.random() < 0.6 else (90, 70, 50),
            "rail": (60, 60, 65) if rng.random() < 0.5 else (170, 170, 175)}


def _garment(img, kind: str, cx: float, top: float, g: float, col, stripe) -> tuple[float, float, float, float]:
    """One garment hanging from the line at (cx, top), g px tall-ish; returns its box."""
    c, dark = shade(col), shade(col, 0.75)
    if kind == "shirt":  # a T: body and sleeves
        bw, bh, sl = 0.26 * g, 0.36 * g, 0.14 * g
        poly = np.array([pt(cx - bw / 2 - sl, top), pt(cx + bw / 2 + sl, top), pt(cx + bw / 2 + sl, top + 0.12 * g),
                         pt(cx + bw / 2, top + 0.12 * g), pt(cx + bw / 2, top + bh), pt(cx - bw / 2, top + bh),
                         pt(cx - bw / 2, top + 0.12 * g), pt(cx - bw / 2 - sl, top + 0.12 * g)], np.int32)
        cv2.fillPoly(img, [poly], c, AA)
        if stripe is not None:
            cv2.rectangle(img, pt(cx - bw / 2, top + 0.18 * g), pt(cx + bw / 2, top + 0.24 * g), shade(stripe), -1)
        cv2.line(img, pt(cx - 0.05 * g, top), pt(cx + 0.05 * g, top), dark, max(1, int(0.03 * g)))
        return cx - bw / 2 - sl, top, cx + bw / 2 + sl, top + bh
    if kind == "trousers":  # waistband and two legs
        ww, lh = 0.22 * g, 0.46 * g
        cv2.rectangle(img, pt(cx - ww / 2, top), pt(cx + ww / 2, top + 0.1 * g), c, -1)
        for sx in (-1, 1):
            leg = np.array([pt(cx + sx * 0.01 * g, top + 0.08 * g), pt(cx + sx * ww / 2, top + 0.08 * g),
                            pt(cx + sx * (ww / 2 + 0.02 * g), top + lh), pt(cx + sx * 0.03 * g, top + lh)], np.int32)
            cv2.fillPoly(img, [leg], c if sx < 0 else shade(col, 0.9), AA)
        return cx - ww / 2 - 0.02 * g, top, cx + ww / 2 + 0.02 * g, top + lh
    if kind == "dress":
        poly = np.array([pt(cx - 0.08 * g, top), pt(cx + 0.08 * g, top), pt(cx + 0.17 * g, top + 0.5 * g),
                         pt(cx - 0.17 * g, top + 0.5 * g)], np.int32)
        cv2.fillPoly(img, [poly], c, AA)
        return cx - 0.17 * g, top, cx + 0.17 * g, top + 0.5 * g
    tw, th = 0.24 * g, 0.4 * g  # a towel, a stripe across it
    cv2.rectangle(img, pt(cx - tw / 2, top), pt(cx + tw / 2, top + th), c, -1)
    if stripe is not None:
        cv2.rectangle(img, pt(cx - tw / 2, top + 0.7 * th), pt(cx + tw / 2, top + 0.8 * th), shade(stripe), -1)
    return cx - tw / 2, top, cx + tw / 2, top + th


def draw_clothes(img, o: Obj, lights: list[Light]) -> Box:
    """Laundry on a line between two poles (or a tree and a pole), or over a railing; the box holds the
    laundry and the line (or rail) it hangs on, what an annotator boxes as "clothes drying": not the poles
    down to the ground, nor a tree's crown (boxes of those were mostly empty street)."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    L = a["len"] * s
    xl, xr = x - L / 2, x + L / 2
    wt = max(1, int(round(0.035 * s)))
    if a["support"] == "railing":  # a low railing, the laundry folded over its top rail
        ytop = y - 0.55 * s
        for bx in np.linspace(xl, xr, max(3, int(L / (0.25 * s)) + 1)):
            cv2.line(img, pt(bx, y), pt(bx, ytop), shade(a["rail"], 0.85), wt)
        cv2.line(img, pt(xl, y - 0.12 * s), pt(xr, y - 0.12 * s), shade(a["rail"], 0.85), wt)
        sag = 0.0
    else:
        ytop = y - a["height"] * s
        sag = a["sag"] * s
        if a["support"] == "tree":  # left end: a trunk with a little crown
            tw = max(2, int(round(0.1 * s)))
            cv2.line(img, pt(xl, y), pt(xl, ytop - 0.15 * s), (95, 70, 45), tw)
            r = 0.22 * s
            cv2.circle(img, pt(xl, ytop - 0.15 * s - 0.6 * r), max(2, int(round(r))), (60, 125, 55), -1, AA)
        else:
            cv2.line(img, pt(xl, y), pt(xl, ytop - 0.05 * s), shade(a["pole"]), wt)
        cv2.line(img, pt(xr, y), pt(xr, ytop - 0.05 * s), shade(a["pole"]), wt)
        us = np.linspace(-0.5, 0.5, 9)
        line = np.array([pt(x + u * L, ytop + sag * (1 - 4 * u * u)) for u in us], np.int32)
        cv2.polylines(img, [line], False, (45, 45, 45), 1, AA)
    g = 0.9 * s
    parts = [(xl, ytop - wt, xr, ytop + sag + wt)]  # the line (or top rail), then each garment
    for it in a["items"]:
        cx = x + it["u"] * L
        top = ytop + sag * (1 - 4 * it["u"] ** 2)
        parts.append(_garment(img, it["kind"], cx, top, g * it["size"], it["color"], it["stripe"]))
    x0s, y0s, x1s, y1s = zip(*parts)
    return (min(x0s), min(y0s), max(x1s), max(y1s))


def _draw(img, o: Obj, lights: list[Light], cond, sky) -> Box:
    return draw_clothes(img, o, lights)


def rule(tr: Track, ts: float, p: Params, ctx) -> Candidate | None:
    return dwell(tr, ts, "clothes", "clothes_drying", p.t_s)


def scenery(img, cam, rng: np.random.Generator) -> None:
    """Flags on poles along the far pavement and striped awnings over shop fronts: never labeled."""
    S, hz = cam.size, cam.horizon
    for _ in range(int(rng.poisson(rng.uniform(0.3, 2.0)))):  # flags
        fx, fy = float(rng.uniform(0.05, 0.95)) * S, hz + float(rng.uniform(3, 14)) * S / 192
        s = cam.scale(fy) * 2.0 + 8 * S / 192
        top = fy - s
        cv2.line(img, pt(fx, fy), pt(fx, top), (200, 200, 205), max(1, int(s * 0.025)))
        fw, fh = float(rng.uniform(0.3, 0.45)) * s, float(rng.uniform(0.18, 0.26)) * s
        side = 1 if rng.random() < 0.5 else -1
        cols = [FLAG_COLORS[i] for i in rng.choice(len(FLAG_COLORS), 3, replace=False)]
        bands = int(rng.integers(1, 4))
        for b in range(bands):  # horizontal bands, a little wave in the cloth
            ya, yb = top + b * fh / bands, top + (b + 1) * fh / bands
            poly = np.array([pt(fx, ya), pt(fx + side * fw, ya + 0.08 * fh), pt(fx + side * fw, yb + 0.08 * fh),
                             pt(fx, yb)], np.int32)
            cv2.fillPoly(img, [poly], cols[b], AA)
        if bands == 1:
            cv2.circle(img, pt(fx + side * 0.25 * fw, top + 0.35 * fh), max(1, int(0.12 * fh)), cols[1], -1, AA)
    for _ in range(int(rng.poisson(rng.uniform(0.5, 3.0)))):  # striped awnings over the ground floor
        aw, ah = float(rng.uniform(0.08, 0.2)) * S, float(rng.uniform(0.025, 0.045)) * S
        ax = float(rng.uniform(-0.05, 0.95)) * S
        ay = hz - float(rng.uniform(0.02, 0.1)) * hz  # the awning's lower edge
        c1 = FLAG_COLORS[rng.integers(len(FLAG_COLORS))]
        c2 = (250, 250, 250) if rng.random() < 0.7 else FLAG_COLORS[rng.integers(len(FLAG_COLORS))]
        n = int(rng.integers(4, 9))
        for i in range(n):
            xa, xb = ax + i * aw / n, ax + (i + 1) * aw / n
            lean_a, lean_b = 0.1 * aw * (0.5 - i / n), 0.1 * aw * (0.5 - (i + 1) / n)  # narrower at the wall
            poly = np.array([pt(xa + lean_a, ay - ah), pt(xb + lean_b, ay - ah), pt(xb, ay), pt(xa, ay)], np.int32)
            cv2.fillPoly(img, [poly], c1 if i % 2 == 0 else c2, AA)
        cv2.line(img, pt(ax, ay), pt(ax + aw, ay), shade(c1, 0.7), 1)


def plan(p, rates: dict) -> None:
    """Laundry is hung out on sunny days."""
    if p.cond.name == "day":
        p.static("clothes", "clothes_drying", rates["clothes"])


SCENARIO = Scenario(
    name="clothes_drying", title="Clothes drying along the street", agency="city management",
    kind="dwell, sunny-day window", alert="Clothes hung out to dry on {camera_id} ({district})",
    rule=per_track(rule), params=Params,
    classes=(ObjectClass("clothes", _draw, clothes_attrs, where="walk", rate=0.25,
                         rate_by_condition={"day": 0.5, "night": 0.05, "rain": 0.05}, extent=(0.9, 1.35),
                         confused_with="vendor_stall", unboxed="the poles, tree or railing the laundry hangs on"),),
    uses=("clothes",), windows=(Window(hours=(7.0, 18.0), conditions=("day",)),),
    rates={"clothes": 0.5}, plan=plan, scenery=scenery,
    positive=ClipSpec("day", 11.0, {"clothes": 8.0}),
    confuser=ClipSpec("day", 12.0, {"clothes": 0.0}),
    fps=0.5, min_fps=0.25, priority=1,
)
