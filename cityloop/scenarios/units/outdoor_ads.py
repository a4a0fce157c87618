"""Illegal outdoor advertising (city management): a free-standing ad board (a roll-up banner, an A-frame
sandwich board, a sign on legs) standing on the pavement in a no-ads zone for `t_s`. Shop signs on the
building facades (printed faces, colour bands, lettering too, but fixed to a wall) are the confusers:
never labeled.
"""

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
    ZoneKind,
    dwell,
    ground,
    per_track,
)
from cityloop.scenes.draw import AA, Box, Light, Obj, pt, shade

ORDER = 70

AD_COLORS = [(230, 35, 35), (250, 200, 20), (25, 110, 225), (245, 120, 20), (30, 165, 75), (225, 40, 150),
             (250, 250, 250), (120, 40, 170), (20, 190, 200)]
FRAME_COLORS = [(40, 40, 45), (150, 105, 60), (235, 235, 235), (190, 190, 195)]


@dataclass
class Params:
    t_s: float = 6.0  # an ad board standing in a no-ads zone for T


def _lettering(rng: np.random.Generator, rows: int) -> list[tuple[float, list[tuple[float, float]]]]:
    """Rows of text-like marks: (row position 0..1, [(word start, word end) 0..1, ...])."""
    out = []
    for r in range(rows):
        words, x = [], float(rng.uniform(0.05, 0.2))
        while x < 0.85:
            w = float(rng.uniform(0.12, 0.4))
            words.append((x, min(0.92, x + w)))
            x += w + float(rng.uniform(0.06, 0.12))
        out.append(((r + 0.5) / rows, words))
    return out


def ad_attrs(rng: np.random.Generator) -> dict:
    kind = str(rng.choice(["banner", "aframe", "board"], p=[0.45, 0.4, 0.15]))
    face, band, band2 = (AD_COLORS[i] for i in rng.choice(len(AD_COLORS), 3, replace=False))
    if kind == "banner":
        w, h = float(rng.uniform(0.32, 0.48)), float(rng.uniform(0.95, 1.25))
    elif kind == "aframe":
        w, h = float(rng.uniform(0.38, 0.55)), float(rng.uniform(0.55, 0.75))
    else:
        w, h = float(rng.uniform(0.6, 0.9)), float(rng.uniform(0.95, 1.2))
    dark = (max(face) + sum(face)) / 2 > 330  # a light face gets dark lettering
    return {"kind": kind, "w": w, "h": h, "face": face, "band": band, "band2": band2,
            "ink": (25, 25, 30) if dark else (250, 250, 245), "frame": FRAME_COLORS[rng.integers(len(FRAME_COLORS))],
            "text": _lettering(rng, int(rng.integers(2, 5))), "logo": bool(rng.random() < 0.5),
            "bands": float(rng.uniform(0.18, 0.32)), "lit": bool(rng.random() < 0.4)}


def draw_face(img, x0: float, y0: float, x1: float, y1: float, a: dict, s: float, vertical: bool = True) -> None:
    """A printed face: a colour band at the top (and one at the bottom), lettering between, maybe a logo."""
    cv2.rectangle(img, pt(x0, y0), pt(x1, y1), shade(a["face"]), -1)
    h, w = y1 - y0, x1 - x0
    top = y0 + a["bands"] * h
    cv2.rectangle(img, pt(x0, y0), pt(x1, top), shade(a["band"]), -1)
    if vertical:
        cv2.rectangle(img, pt(x0, y1 - 0.6 * a["bands"] * h), pt(x1, y1), shade(a["band2"]), -1)
        lo, hi = top + 0.08 * h, y1 - 0.7 * a["bands"] * h
    else:
        lo, hi = top + 0.1 * h, y1 - 0.1 * h
    if a["logo"]:
        r = max(1, int(round(min(w, top - y0) * 0.32)))
        cv2.circle(img, pt(x0 + 0.5 * w if vertical else x0 + 0.15 * w, (y0 + top) / 2), r, shade(a["band2"]), -1, AA)
    thick = max(1, int(round(0.022 * s)))
    for ry, words in a["text"]:
        yy = lo + ry * (hi - lo)
        for wa, wb in words:
            cv2.line(img, pt(x0 + wa * w, yy), pt(x0 + wb * w, yy), shade(a["ink"]), thick)


def draw_ad(img, o: Obj, lights: list[Light], on: bool) -> Box:
    """A free-standing ad on the pavement: a roll-up banner, an A-frame board or a sign on two legs."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    w, h = a["w"] * s, a["h"] * s
    line = max(1, int(round(0.03 * s)))
    if a["kind"] == "banner":
        foot = max(1.0, 0.05 * s)
        cv2.rectangle(img, pt(x - 0.58 * w, y - foot), pt(x + 0.58 * w, y), (60, 60, 65), -1)
        draw_face(img, x - w / 2, y - h, x + w / 2, y - foot, a, s)
        cv2.line(img, pt(x - w / 2, y - h), pt(x + w / 2, y - h), (50, 50, 55), line)
        box = (x - 0.58 * w, y - h - line / 2, x + 0.58 * w, y)
    elif a["kind"] == "aframe":
        f = a["facing"]
        back = np.array([pt(x - 0.4 * w * f, y - h), pt(x + 0.55 * w * f, y), pt(x + 0.45 * w * f, y)], np.int32)
        cv2.fillPoly(img, [back], shade(a["frame"], 0.6), AA)
        outer = np.array([pt(x - 0.42 * w, y - h), pt(x + 0.42 * w, y - h), pt(x + 0.5 * w, y), pt(x - 0.5 * w, y)],
                         np.int32)
        cv2.fillPoly(img, [outer], shade(a["frame"]), AA)
        m = 0.07 * w
        draw_face(img, x - 0.42 * w + m, y - h + m, x + 0.42 * w - m, y - 0.08 * h, a, s)
        box = (x - 0.55 * w, y - h, x + 0.55 * w, y)
    else:  # a sign board on two legs
        panel = 0.5 * h
        for dx in (-0.38, 0.38):
            cv2.line(img, pt(x + dx * w, y), pt(x + dx * w, y - h + panel / 2), shade(a["frame"], 0.7), line + 1)
        cv2.rectangle(img, pt(x - w / 2 - line, y - h - line), pt(x + w / 2 + line, y - h + panel + line),
                      shade(a["frame"]), -1)
        draw_face(img, x - w / 2, y - h, x + w / 2, y - h + panel, a, s, vertical=False)
        box = (x - w / 2 - line, y - h - line, x + w / 2 + line, y)
    if on and a["lit"]:  # a lightbox at night
        lights.append((x, y - 0.6 * h, 0.3 * max(w, 0.5 * h), (0.35, 0.35, 0.3)))
    return box


def _draw(img, o: Obj, lights: list[Light], cond, sky) -> Box:
    return draw_ad(img, o, lights, cond.lights)


def rule(tr: Track, ts: float, p: Params, ctx) -> Candidate | None:
    if tr.family != "ad_board" or not ctx.zones.inside("no_ads", *ground(tr.box)):
        return None
    return dwell(tr, ts, "ad_board", "outdoor_advertising", p.t_s)


def scenery(img, cam, rng: np.random.Generator) -> None:
    """Shop signs on the facades along the horizon (market streets have many): never labeled."""
    from cityloop.scenes.world import DISTRICTS

    S, hz = cam.size, cam.horizon
    lam = {"buji-market": 5.0, "longgang-old": 4.0, "longcheng-plaza": 3.0}.get(cam.district, 1.5)
    sky = np.asarray(DISTRICTS[cam.district]["sky"], float)
    for _ in range(int(rng.poisson(lam * rng.uniform(0.5, 1.5)))):
        sw, sh = float(rng.uniform(0.08, 0.24)) * S, float(rng.uniform(0.025, 0.05)) * S
        sx = float(rng.uniform(-0.05, 0.95)) * S
        sy = hz - float(rng.uniform(0.08, 0.35)) * hz  # the sign's bottom edge, over the ground floor
        a = ad_attrs(rng)
        probe = img[int(np.clip(sy - sh / 2, 0, S - 1)), int(np.clip(sx + sw / 2, 0, S - 1))].astype(float)
        if np.abs(probe - sky * probe.mean() / max(1.0, sky.mean())).max() < 14:
            continue  # a gap between buildings: sky, no facade
        m = max(1, int(round(0.006 * S)))
        cv2.rectangle(img, pt(sx - m, sy - sh - m), pt(sx + sw + m, sy + m), shade(a["frame"], 0.8), -1)
        draw_face(img, sx, sy - sh, sx + sw, sy, a, cam.scale(hz + 0.3 * (S - hz)), vertical=False)


def plan(p, rates: dict) -> None:
    """Ad boards are put out on the pavement and stay."""
    p.static("ad_board", "outdoor_advertising", rates["ads"])


SCENARIO = Scenario(
    name="outdoor_advertising", title="Illegal outdoor advertising", agency="city management",
    kind="zone dwell", alert="Illegal ad board on {camera_id} ({district})",
    rule=per_track(rule), params=Params,
    classes=(ObjectClass("ad_board", _draw, ad_attrs, where="walk", rate=0.3, extent=(0.35, 1.0),
                         confused_with="vendor_stall"),),
    uses=("ad_board",),
    zones=(ZoneKind("no_ads", doc="where free-standing ads are forbidden; none configured: the whole frame"),),
    rates={"ads": 0.5}, plan=plan, scenery=scenery,
    positive=ClipSpec("dusk", 18.0, {"ads": 6.0}),
    confuser=ClipSpec("dusk", 19.0, {"ads": 0.0, "vending": 3.0}),
    fps=0.5, min_fps=0.25, priority=1,
)
