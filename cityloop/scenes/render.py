"""Drawing a scene: street backgrounds, the registered scenarios' objects and scenery, light and weather.

Everything is drawn in RGB on uint8 numpy arrays with OpenCV primitives; an object's look is
fixed by its `attrs`, so the same object redraws identically in every frame of a clip. How each
class looks is its scenario unit's (cityloop.scenarios.units.*); this module draws what is common.
"""

from __future__ import annotations

import cv2
import numpy as np

from cityloop.scenes.draw import AA, Box, Light, Obj
from cityloop.scenes.draw import pt as _pt
from cityloop.scenes.draw import shade as _c
from cityloop.scenes.world import DISTRICTS, Camera, Condition


def sample_attrs(cls: str, rng: np.random.Generator) -> dict:
    """Draw the look of an object of class `cls` (its unit's `attrs`, plus a facing and a size factor)."""
    from cityloop.scenarios import registry

    a: dict = {"facing": int(rng.choice((-1, 1))), "k": float(rng.uniform(0.85, 1.15))}
    a.update(registry().object_class(cls).attrs(rng))
    return a


def draw_object(img, o: Obj, lights: list[Light], cond: Condition, sky: tuple) -> Box:
    """Draw `o` onto img (in place) and return its box."""
    from cityloop.scenarios import registry

    try:
        spec = registry().object_class(o.cls)
    except KeyError:
        raise ValueError(f"unknown class {o.cls!r}") from None
    return tuple(spec.draw(img, o, lights, cond, sky))


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
    from cityloop.scenarios import registry

    for sc in registry().scenarios.values():  # each unit's unlabeled look-alikes and site furniture
        if sc.scenery is not None:
            sc.scenery(img, cam, np.random.default_rng([cam.seed, registry().order(sc.name)]))
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
