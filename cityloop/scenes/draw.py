"""Drawing primitives the scenario units share: the object a scene holds, light sources, colours,
and the two helpers every drawing uses (a clamped colour, a rounded point)."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2

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


def shade(color, k: float = 1.0) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, v * k))) for v in color)


def pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))

