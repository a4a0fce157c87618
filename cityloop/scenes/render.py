"""Drawing: street backgrounds, the seven object classes, distractors, light and weather.

Everything is drawn in RGB on uint8 numpy arrays with OpenCV primitives; an object's look is
fixed by its `attrs`, so the same object redraws identically in every frame of a clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from cityloop.scenes.world import DISTRICTS, Camera, Condition

AA = cv2.LINE_AA
Box = tuple[float, float, float, float]  # x0, y0, x1, y1
Light = tuple[float, float, float, tuple[float, float, float]]  # x, y, radius, RGB strength

HELMET_COLORS = [(240, 200, 30), (220, 40, 30), (235, 235, 235), (30, 90, 200), (250, 130, 20),
                 (70, 70, 75), (40, 160, 70)]
HAIR_COLORS = [(25, 20, 18), (60, 40, 25), (90, 70, 50), (40, 35, 35)]
SKIN_COLORS = [(230, 190, 160), (200, 150, 120), (160, 110, 80), (240, 210, 180)]
CLOTH_COLORS = [(200, 40, 40), (40, 60, 160), (30, 30, 30), (230, 230, 230), (60, 140, 60),
                (200, 170, 40), (120, 80, 150), (100, 100, 110), (230, 120, 160)]
CAR_COLORS = [(200, 30, 30), (240, 240, 240), (20, 20, 25), (120, 125, 130), (30, 60, 140),
              (190, 190, 200), (160, 120, 60), (40, 110, 70)]
BAG_COLORS = [(30, 30, 30), (40, 80, 45), (210, 210, 215), (60, 90, 150), (130, 100, 70),
              (170, 40, 40)]


@dataclass
class Obj:
    """One object in the scene, standing on the ground at (x, y) with person-height scale s."""

    cls: str
    x: float
    y: float
    s: float
    attrs: dict = field(default_factory=dict)
    track_id: int = -1


def _c(color, k: float = 1.0) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, v * k))) for v in color)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def sample_attrs(cls: str, rng: np.random.Generator, facing_options=(-1, 1)) -> dict:
    """Draw the look of an object of class `cls` (colors, size factors, variant)."""
    a: dict = {"facing": int(rng.choice(facing_options)), "k": float(rng.uniform(0.85, 1.15))}
    if cls in ("rider_helmet", "rider_no_helmet", "person"):
        a["shirt"] = CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))]
        a["pants"] = CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))]
        a["skin"] = SKIN_COLORS[rng.integers(len(SKIN_COLORS))]
        a["hair"] = HAIR_COLORS[rng.integers(len(HAIR_COLORS))]
        a["helmet"] = HELMET_COLORS[rng.integers(len(HELMET_COLORS))]
        a["bike"] = CAR_COLORS[rng.integers(len(CAR_COLORS))]
        a["box"] = bool(rng.random() < 0.3)  # delivery box on the rear rack
        a["phase"] = float(rng.uniform(0, 2 * np.pi))
    elif cls == "car":
        a["color"] = CAR_COLORS[rng.integers(len(CAR_COLORS))]
        a["rear"] = False
        a["len"] = float(rng.uniform(2.2, 2.9))
    elif cls == "garbage":
        n = int(rng.integers(3, 8))
        a["bags"] = [(float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0, 0.25)),
                      float(rng.uniform(0.12, 0.28)), float(rng.uniform(0.09, 0.2)),
                      BAG_COLORS[rng.integers(len(BAG_COLORS))]) for _ in range(n)]
        a["boxes"] = int(rng.integers(0, 3))
    elif cls == "vendor_stall":
        a["canopy"] = CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))]
        a["canopy2"] = (240, 240, 240) if rng.random() < 0.6 else CLOTH_COLORS[rng.integers(9)]
        a["table"] = (150, 110, 70) if rng.random() < 0.5 else (180, 180, 185)
        a["goods"] = [(float(rng.uniform(-0.6, 0.6)), CLOTH_COLORS[rng.integers(9)])
                      for _ in range(int(rng.integers(3, 7)))]
        a["width"] = float(rng.uniform(1.2, 1.7))
    elif cls == "water":
        a["w"] = float(rng.uniform(1.8, 4.0))
        a["h"] = float(rng.uniform(0.22, 0.45))
        a["wobble"] = [float(v) for v in rng.uniform(0.8, 1.15, 12)]
        a["shine"] = float(rng.uniform(0.3, 0.7))
    return a


# --------------------------------------------------------------------------- objects


def draw_person(img, o: Obj, lights: list[Light], walk: float | None = None) -> Box:
    """A pedestrian, standing or mid-stride."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    w = max(1, int(0.09 * s))
    stride = 0.12 * s * np.sin(a["phase"] if walk is None else walk)
    hip = (x, y - 0.5 * s)
    cv2.line(img, _pt(*hip), _pt(x - stride, y), _c(a["pants"]), w, AA)
    cv2.line(img, _pt(*hip), _pt(x + stride, y), _c(a["pants"], 0.85), w, AA)
    cv2.rectangle(img, _pt(x - 0.12 * s, y - 0.84 * s), _pt(x + 0.12 * s, y - 0.48 * s),
                  _c(a["shirt"]), -1)
    cv2.line(img, _pt(x - 0.12 * s, y - 0.8 * s), _pt(x - 0.15 * s - stride * 0.5, y - 0.5 * s),
             _c(a["shirt"], 0.8), max(1, w - 1), AA)
    cv2.line(img, _pt(x + 0.12 * s, y - 0.8 * s), _pt(x + 0.15 * s + stride * 0.5, y - 0.5 * s),
             _c(a["shirt"], 0.8), max(1, w - 1), AA)
    r = max(1.5, 0.075 * s)
    cv2.circle(img, _pt(x, y - 0.92 * s), int(round(r)), _c(a["skin"]), -1, AA)
    cv2.ellipse(img, _pt(x, y - 0.93 * s), (int(round(r)), int(round(r * 0.8))), 0, 180, 360,
                _c(a["hair"]), -1, AA)
    return (x - 0.17 * s - abs(stride) * 0.5, y - s, x + 0.17 * s + abs(stride) * 0.5, y)


def draw_rider(img, o: Obj, lights: list[Light], on: bool) -> Box:
    """An e-bike rider seen from the side; the head is a helmet or bare hair."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    f = a["facing"]
    wr = 0.17 * s
    wt = max(1, int(0.04 * s))
    for dx in (-0.36, 0.36):
        cv2.circle(img, _pt(x + dx * s * f, y - wr), int(round(wr)), (25, 25, 25), wt + 1, AA)
    frame = _c(a["bike"])
    cv2.line(img, _pt(x - 0.36 * s * f, y - wr), _pt(x - 0.05 * s * f, y - 0.42 * s), frame, wt + 1, AA)
    cv2.line(img, _pt(x - 0.05 * s * f, y - 0.42 * s), _pt(x + 0.36 * s * f, y - wr), frame, wt + 1, AA)
    cv2.line(img, _pt(x + 0.36 * s * f, y - wr), _pt(x + 0.3 * s * f, y - 0.62 * s), frame, wt, AA)
    cv2.rectangle(img, _pt(x - 0.25 * s, y - 0.45 * s), _pt(x + 0.2 * s, y - 0.36 * s), frame, -1)
    if a.get("box"):
        bx = x - 0.42 * s * f
        cv2.rectangle(img, _pt(bx - 0.13 * s, y - 0.72 * s), _pt(bx + 0.13 * s, y - 0.44 * s),
                      (230, 200, 40), -1)
    # rider: leg, torso, arm, head
    tw = max(2, int(0.13 * s))
    seat = (x - 0.08 * s * f, y - 0.48 * s)
    shoulder = (x + 0.02 * s * f, y - 0.78 * s)
    cv2.line(img, _pt(*seat), _pt(x + 0.08 * s * f, y - 0.28 * s), _c(a["pants"]), tw - 1, AA)
    cv2.line(img, _pt(*seat), _pt(*shoulder), _c(a["shirt"]), tw, AA)
    cv2.line(img, _pt(*shoulder), _pt(x + 0.28 * s * f, y - 0.62 * s), _c(a["shirt"], 0.8),
             max(1, tw // 2), AA)
    hx, hy, r = x + 0.05 * s * f, y - 0.87 * s, max(1.5, 0.075 * s)
    cv2.circle(img, _pt(hx, hy), int(round(r)), _c(a["skin"]), -1, AA)
    if o.cls == "rider_helmet":
        rh = r * 1.35
        cv2.ellipse(img, _pt(hx, hy - 0.1 * r), (int(round(rh)), int(round(rh * 0.95))), 0, 180, 360,
                    _c(a["helmet"]), -1, AA)
        cv2.line(img, _pt(hx - rh, hy), _pt(hx + rh, hy), _c(a["helmet"], 0.7), max(1, int(r * 0.4)), AA)
        top = hy - rh * 1.05
    else:
        cv2.ellipse(img, _pt(hx - 0.2 * r * f, hy - 0.15 * r), (int(round(r)), int(round(r * 0.75))), 0,
                    180, 360, _c(a["hair"]), -1, AA)
        top = hy - r
    if on:
        lights.append((x + 0.34 * s * f, y - 0.6 * s, 0.12 * s, (1.0, 0.95, 0.7)))
    return (x - 0.55 * s, min(top, y - 0.95 * s), x + 0.55 * s, y)


def draw_car(img, o: Obj, lights: list[Light], on: bool) -> Box:
    """A car from the side, or from behind on perspective roads."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    body = _c(a["color"])
    glass = (70, 90, 110)
    if a.get("rear"):
        w = 1.05 * s
        cv2.rectangle(img, _pt(x - 0.45 * w, y - 0.12 * s), _pt(x + 0.45 * w, y), (20, 20, 20), -1)
        cv2.rectangle(img, _pt(x - w / 2, y - 0.58 * s), _pt(x + w / 2, y - 0.1 * s), body, -1)
        cv2.rectangle(img, _pt(x - 0.38 * w, y - 0.88 * s), _pt(x + 0.38 * w, y - 0.58 * s),
                      _c(a["color"], 0.9), -1)
        cv2.rectangle(img, _pt(x - 0.32 * w, y - 0.84 * s), _pt(x + 0.32 * w, y - 0.62 * s), glass, -1)
        for sx in (-1, 1):
            cv2.rectangle(img, _pt(x + sx * 0.46 * w, y - 0.45 * s), _pt(x + sx * 0.32 * w, y - 0.36 * s),
                          (200, 20, 20), -1)
            if on:
                lights.append((x + sx * 0.39 * w, y - 0.4 * s, 0.1 * s, (1.0, 0.15, 0.1)))
        return (x - w / 2, y - 0.88 * s, x + w / 2, y)
    f, L = a["facing"], a["len"] * s
    cv2.rectangle(img, _pt(x - L / 2, y - 0.55 * s), _pt(x + L / 2, y - 0.14 * s), body, -1)
    cab = np.array([_pt(x - 0.32 * L * f, y - 0.55 * s), _pt(x - 0.22 * L * f, y - 0.88 * s),
                    _pt(x + 0.12 * L * f, y - 0.88 * s), _pt(x + 0.28 * L * f, y - 0.55 * s)], np.int32)
    cv2.fillPoly(img, [cab], body, AA)
    win = np.array([_pt(x - 0.27 * L * f, y - 0.57 * s), _pt(x - 0.2 * L * f, y - 0.82 * s),
                    _pt(x + 0.1 * L * f, y - 0.82 * s), _pt(x + 0.22 * L * f, y - 0.57 * s)], np.int32)
    cv2.fillPoly(img, [win], glass, AA)
    r = 0.15 * s
    for dx in (-0.3, 0.3):
        cv2.circle(img, _pt(x + dx * L, y - r), int(round(r)), (20, 20, 20), -1, AA)
        cv2.circle(img, _pt(x + dx * L, y - r), max(1, int(round(r * 0.45))), (150, 150, 150), -1, AA)
    hx = x + 0.48 * L * f
    cv2.rectangle(img, _pt(hx - 0.03 * L, y - 0.48 * s), _pt(hx + 0.03 * L, y - 0.4 * s), (250, 240, 180), -1)
    if on:
        lights.append((hx + 0.06 * L * f, y - 0.44 * s, 0.22 * s, (1.0, 0.95, 0.75)))
        lights.append((x - 0.49 * L * f, y - 0.44 * s, 0.08 * s, (0.9, 0.1, 0.05)))
    return (x - L / 2, y - 0.88 * s, x + L / 2, y)


def draw_garbage(img, o: Obj, lights: list[Light]) -> Box:
    """A pile of bags and cardboard dumped on the pavement."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    x0, y0, x1, y1 = 1e9, 1e9, -1e9, -1e9
    for i in range(a["boxes"]):
        bx = x + (i - 0.5) * 0.35 * s
        cv2.rectangle(img, _pt(bx - 0.15 * s, y - 0.3 * s), _pt(bx + 0.15 * s, y), (160, 120, 75), -1)
        x0, y0, x1, y1 = min(x0, bx - 0.15 * s), min(y0, y - 0.3 * s), max(x1, bx + 0.15 * s), y
    for dx, dy, rw, rh, col in a["bags"]:
        cx, cy = x + dx * s, y - rh * s - dy * s * 0.5
        cv2.ellipse(img, _pt(cx, cy), (max(1, int(rw * s)), max(1, int(rh * s))), 0, 0, 360,
                    _c(col), -1, AA)
        cv2.ellipse(img, _pt(cx - rw * s * 0.3, cy - rh * s * 0.4), (max(1, int(rw * s * 0.3)),
                    max(1, int(rh * s * 0.2))), 0, 0, 360, _c(col, 1.4), -1, AA)
        x0, y0 = min(x0, cx - rw * s), min(y0, cy - rh * s)
        x1, y1 = max(x1, cx + rw * s), max(y1, cy + rh * s)
    return (x0, y0, x1, max(y1, y))


def draw_stall(img, o: Obj, lights: list[Light], on: bool) -> Box:
    """A street vendor's cart: table with goods under a striped canopy."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    w = a["width"] * s
    leg = max(1, int(0.04 * s))
    for dx in (-0.45, 0.45):
        cv2.line(img, _pt(x + dx * w, y), _pt(x + dx * w, y - 0.45 * s), (60, 60, 60), leg)
    cv2.rectangle(img, _pt(x - w / 2, y - 0.5 * s), _pt(x + w / 2, y - 0.38 * s), _c(a["table"]), -1)
    for gx, col in a["goods"]:
        cv2.circle(img, _pt(x + gx * w / 2, y - 0.55 * s), max(1, int(0.06 * s)), _c(col), -1, AA)
    cv2.line(img, _pt(x, y - 0.5 * s), _pt(x, y - 1.15 * s), (90, 90, 90), leg)
    top = y - 1.3 * s
    n = 6
    for i in range(n):
        xa, xb = x - 0.75 * w + i * 1.5 * w / n, x - 0.75 * w + (i + 1) * 1.5 * w / n
        poly = np.array([_pt(x + (xa - x) * 0.35, top), _pt(x + (xb - x) * 0.35, top),
                         _pt(xb, y - 1.08 * s), _pt(xa, y - 1.08 * s)], np.int32)
        cv2.fillPoly(img, [poly], _c(a["canopy"] if i % 2 == 0 else a["canopy2"]), AA)
    if on:
        lights.append((x, y - 1.0 * s, 0.35 * s, (1.0, 0.8, 0.45)))
    return (x - 0.75 * w, top, x + 0.75 * w, y)


def draw_water(img, o: Obj, lights: list[Light], sky: tuple) -> Box:
    """Standing water on the road: an irregular, sky-reflecting puddle."""
    s, x, y, a = o.s, o.x, o.y, o.attrs
    rw, rh = max(6.0, a["w"] * s / 2), max(3.0, a["h"] * s / 2)  # never thinner than a labelable box
    cy = y - rh
    ang = np.linspace(0, 2 * np.pi, len(a["wobble"]), endpoint=False)
    pts = np.stack([x + rw * np.cos(ang) * a["wobble"], cy + rh * np.sin(ang) * a["wobble"]], 1)
    under = img[int(max(0, min(img.shape[0] - 1, cy))), int(max(0, min(img.shape[1] - 1, x)))]
    col = np.asarray(under, float) * (1 - a["shine"]) + np.asarray(sky, float) * a["shine"] * 0.8
    cv2.fillPoly(img, [np.round(pts).astype(np.int32)], _c(col), AA)
    cv2.ellipse(img, _pt(x - rw * 0.2, cy - rh * 0.2), (max(1, int(rw * 0.5)), max(1, int(rh * 0.25))),
                0, 0, 360, _c(col, 1.25), -1, AA)
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def draw_object(img, o: Obj, lights: list[Light], cond: Condition, sky: tuple) -> Box:
    """Draw `o` onto img (in place) and return its box."""
    on = cond.lights
    if o.cls == "person":
        return draw_person(img, o, lights, o.attrs.get("walk"))
    if o.cls in ("rider_helmet", "rider_no_helmet"):
        return draw_rider(img, o, lights, on)
    if o.cls == "car":
        return draw_car(img, o, lights, on)
    if o.cls == "garbage":
        return draw_garbage(img, o, lights)
    if o.cls == "vendor_stall":
        return draw_stall(img, o, lights, on)
    if o.cls == "water":
        return draw_water(img, o, lights, sky)
    raise ValueError(f"unknown class {o.cls!r}")


# ----------------------------------------------------------------------- background


def render_background(cam: Camera) -> tuple[np.ndarray, list[Light], list[Light]]:
    """The static view of a camera: sky, buildings, ground, road, trees, lamps, bins, cones.

    Returns the image and two light lists: street lamps, and lit windows (both only shine
    in low light).
    """
    rng = np.random.default_rng(cam.seed)
    pal = DISTRICTS[cam.district]
    S, hz = cam.size, int(round(cam.horizon))
    img = np.empty((S, S, 3), np.uint8)
    sky = np.asarray(pal["sky"], float)
    rows = np.linspace(0.85, 1.1, max(hz, 1))[:, None]
    img[:hz] = np.clip(sky[None, None, :] * rows[..., None], 0, 255).astype(np.uint8)
    img[hz:] = pal["walk"]
    lamps: list[Light] = []
    windows: list[Light] = []
    x = -rng.uniform(0, 20)
    while x < S:  # buildings along the horizon
        bw = rng.uniform(0.12, 0.3) * S
        bh = rng.uniform(0.25, 0.9) * max(hz, 8)
        col = pal["buildings"][rng.integers(len(pal["buildings"]))]
        top = hz - bh
        cv2.rectangle(img, _pt(x, top), _pt(x + bw, hz + 2), _c(col, rng.uniform(0.85, 1.1)), -1)
        ww, wh = max(2, int(bw / 7)), max(2, int(bh / 8))
        for wy in np.arange(top + wh, hz - wh, wh * 2):
            for wx in np.arange(x + ww, x + bw - ww, ww * 2):
                cv2.rectangle(img, _pt(wx, wy), _pt(wx + ww * 0.8, wy + wh * 0.8), _c(col, 0.55), -1)
                if rng.random() < 0.35:
                    windows.append((wx + ww * 0.4, wy + wh * 0.4, ww * 0.4, (0.5, 0.42, 0.25)))
        x += bw + rng.uniform(0, 6)
    _draw_ground(img, cam, pal, rng)
    y0, y1 = cam.ground_range(10)
    for _ in range(int(rng.poisson(pal["trees"] * 3))):  # trees on the far pavement
        tx, ty = rng.uniform(0, S), hz + rng.uniform(2, 10)
        s = cam.scale(ty) * 1.8 + 6
        cv2.line(img, _pt(tx, ty), _pt(tx, ty - 0.5 * s), (80, 60, 40), max(1, int(s * 0.06)))
        cv2.circle(img, _pt(tx, ty - 0.65 * s), max(2, int(s * 0.25)), (50, 110 + int(rng.integers(40)), 50), -1, AA)
    for i in range(pal["lamps"]):  # lamp posts
        lx = (i + rng.uniform(0.2, 0.8)) * S / max(1, pal["lamps"])
        ly = hz + rng.uniform(4, 14)
        s = cam.scale(ly) * 2.2 + 8
        cv2.line(img, _pt(lx, ly), _pt(lx, ly - s), (70, 70, 75), max(1, int(s * 0.03)))
        cv2.circle(img, _pt(lx, ly - s), max(1, int(s * 0.05)), (235, 235, 200), -1)
        lamps.append((lx, ly - s, max(3.0, s * 0.25), (1.0, 0.85, 0.55)))
    for _ in range(int(rng.integers(0, 3))):  # distractors: bins and cones, never labeled
        bx, by = rng.uniform(0, S), rng.uniform(y0, y1)
        if cam.on_road(bx, by) and cam.layout != "plaza":
            continue
        s = cam.scale(by)
        if rng.random() < 0.5:
            cv2.rectangle(img, _pt(bx - 0.12 * s, by - 0.38 * s), _pt(bx + 0.12 * s, by), (40, 110, 60), -1)
        else:
            tri = np.array([_pt(bx, by - 0.3 * s), _pt(bx - 0.1 * s, by), _pt(bx + 0.1 * s, by)], np.int32)
            cv2.fillPoly(img, [tri], (240, 110, 20), AA)
    return img, lamps, windows


def _draw_ground(img, cam: Camera, pal: dict, rng: np.random.Generator) -> None:
    S, hz = cam.size, cam.horizon
    road = _c(pal["road"])
    mark = (225, 225, 215)
    if cam.layout == "straight":
        a, b = cam.road
        cv2.rectangle(img, _pt(0, a), _pt(S, b), road, -1)
        cv2.line(img, _pt(0, a), _pt(S, a), _c(pal["walk"], 0.7), max(1, int((b - a) * 0.03)))
        mid, dash = (a + b) / 2, max(4, S // 16)
        for xd in range(int(-rng.uniform(0, dash)), S, dash * 2):
            cv2.line(img, (xd, int(mid)), (xd + dash, int(mid)), mark, max(1, int((b - a) * 0.025)))
    elif cam.layout == "perspective":
        lo, hi = cam.road_x_range(S)
        poly = np.array([_pt(cam.vanish_x - 1, hz), _pt(cam.vanish_x + 1, hz), _pt(hi, S), _pt(lo, S)],
                        np.int32)
        cv2.fillPoly(img, [poly], road, AA)
        for t0 in np.arange(0.05, 1.0, 0.12):
            ya, yb = hz + t0 * (S - hz), hz + (t0 + 0.06) * (S - hz)
            cv2.line(img, _pt(cam.vanish_x, ya), _pt(cam.vanish_x, yb), mark, max(1, int(t0 * 3)))
    else:  # plaza: paving tiles
        for yy in np.arange(hz, S, max(3, (S - hz) / 10)):
            cv2.line(img, _pt(0, yy), _pt(S, yy), _c(pal["walk"], 0.9), 1)
        for xx in range(0, S, S // 10):
            cv2.line(img, _pt(cam.vanish_x + (xx - cam.vanish_x) * 0.2, hz), _pt(xx, S), _c(pal["walk"], 0.9), 1)


# ------------------------------------------------------------------------- effects


def apply_condition(img: np.ndarray, cam: Camera, cond: Condition, lights: list[Light],
                    rng: np.random.Generator) -> np.ndarray:
    """Light, weather and camera effects on a rendered scene; returns uint8 RGB."""
    S, hz = cam.size, cam.horizon
    f = img.astype(np.float32) * (cond.gain * np.asarray(cond.tint, np.float32))
    if cond.lights and lights:
        glow = np.zeros_like(f)
        for lx, ly, r, col in lights:
            cv2.circle(glow, _pt(lx, ly), max(1, int(round(r))), tuple(float(c) * 255 for c in col), -1)
        sigma = max(1.0, S / 96)
        f += cv2.GaussianBlur(glow, (0, 0), sigma) * (1.0 - cond.gain) * 1.3
    if cond.fog > 0:
        rows = np.arange(S, dtype=np.float32)
        depth = np.clip((rows - hz) / (S - hz), 0, 1)
        w = (cond.fog * (1.0 - 0.75 * depth))[:, None, None]
        f = f * (1 - w) + np.float32(205 * cond.gain) * w
    if cond.rain > 0:
        streaks = np.zeros((S, S), np.float32)
        n = int(cond.rain * S * 1.2)
        xs, ys = rng.uniform(0, S, n), rng.uniform(0, S, n)
        ln = rng.uniform(4, 10, n) * S / 192
        for x, y, L in zip(xs, ys, ln):
            cv2.line(streaks, _pt(x, y), _pt(x - 0.25 * L, y + L), 1.0, 1)
        f = f * 0.92 + streaks[..., None] * 60.0 * cond.rain
    if cond.noise > 0:
        f += rng.normal(0.0, cond.noise, f.shape).astype(np.float32)
    if cond.blur:
        k = np.zeros((cond.blur, cond.blur), np.float32)
        k[cond.blur // 2, :] = 1.0 / cond.blur
        f = cv2.filter2D(f, -1, k)
    return np.clip(f, 0, 255).astype(np.uint8)


def encode(img: np.ndarray, fmt: str, quality: int) -> bytes:
    """Encode RGB uint8 to JPEG (at the camera's quality) or PNG bytes."""
    bgr = np.ascontiguousarray(img[..., ::-1])
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("image encoding failed")
    return buf.tobytes()


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """What the camera's encoder leaves of the frame (used before saving as PNG)."""
    buf = encode(img, "jpg", quality)
    return cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
