"""Which frames are worth labeling: low confidence, disagreement between versions, novelty.

All three are cheap enough to run on every frame of an edge node. The hourly budget is
enforced by the node against the outbox (so it survives restarts).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cityloop.core import geometry
from cityloop.core.images import ImageRefused, decode_image
from cityloop.core.settings import from_section


@dataclass
class SelectParams:
    """The `edge.select:` section of params.yaml."""

    low_conf_min: float = 0.15  # a detection scored in [min, max] is one the model is unsure of
    low_conf_max: float = 0.45
    disagreement_max: float = 0.6  # agreement (IoU 0.5 box F1) between versions below this: select
    novelty_min: float = 0.35  # distance of the frame's thumbnail to every recent one above this: select
    novelty_memory: int = 256  # thumbnails remembered per camera
    budget_per_hour: int = 120  # hard examples a node may select per hour (0: no cap)

    @classmethod
    def from_dict(cls, d: dict | None) -> SelectParams:
        return from_section(cls, d, "edge.select")


def match_count(a: list[dict], b: list[dict], thr: float = 0.5) -> int:
    """One-to-one matches of two detection lists ({"box": xyxy, "cls", ...}): same class, IoU >= thr,
    cityloop.core.geometry's matching (greedy by IoU), the one annotator quality uses too."""
    return len(geometry.match([d["box"] for d in a], [d["box"] for d in b], thr,
                              a_cls=[d["cls"] for d in a], b_cls=[d["cls"] for d in b]))


def agreement(a: list[dict], b: list[dict], thr: float = 0.5) -> float:
    """Box F1 between two detection lists (1.0 when both are empty)."""
    return geometry.f1(match_count(a, b, thr), len(a), len(b))


def thumbnail(image: bytes) -> np.ndarray | None:
    """A 16x16 grey, standardized thumbnail of encoded image bytes (None: undecodable, or refused by
    its header before decoding: cityloop.core.images)."""
    try:
        img = decode_image(image, flags=cv2.IMREAD_REDUCED_GRAYSCALE_4)
    except ImageRefused:
        return None
    t = cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    return (t - t.mean()) / (t.std() + 1e-6)


class Selector:
    """Decides per frame whether (and why) it is a hard example."""

    def __init__(self, params: SelectParams) -> None:
        self.p = params
        self.memory: dict[str, np.ndarray] = {}  # camera -> (novelty_memory, 256) ring of thumbnails
        self.filled: dict[str, int] = {}  # thumbnails stored per camera so far

    def low_confidence(self, dets: list[dict]) -> float | None:
        """Uncertainty in (0, 1] of the least certain detection inside the band, or None."""
        band = [d["score"] for d in dets if self.p.low_conf_min <= d["score"] <= self.p.low_conf_max]
        return max(1 - 2 * abs(s - 0.5) for s in band) if band else None

    def novelty(self, camera_id: str, image: bytes) -> float | None:
        """Distance of this frame to the camera's recent frames when above the threshold, else None."""
        t = thumbnail(image)
        if t is None:
            return None
        size = self.p.novelty_memory
        if size <= 0:  # nothing remembered: every frame is new
            return 1.0 if 1.0 >= self.p.novelty_min else None
        mem = self.memory.setdefault(camera_id, np.empty((size, t.size), np.float32))
        n = self.filled.get(camera_id, 0)
        seen = mem[: min(n, size)]  # one array operation over the remembered thumbnails (not a loop)
        dist = float(np.sqrt(np.mean((seen - t) ** 2, axis=1)).min()) / 2 if len(seen) else 1.0
        mem[n % size] = t
        self.filled[camera_id] = n + 1
        return dist if dist >= self.p.novelty_min else None

    def select(self, camera_id: str, image: bytes, dets: list[dict],
               other: list[dict] | None = None) -> tuple[str, float] | None:
        """(reason, score) for a hard example, or None. `other`: another version's detections."""
        if other is not None:
            agree = agreement(dets, other)
            if agree < self.p.disagreement_max:
                self.novelty(camera_id, image)  # keep the memory current
                return "disagreement", 1 - agree
        nov = self.novelty(camera_id, image)
        low = self.low_confidence(dets)
        if low is not None:
            return "low_confidence", low
        if nov is not None:
            return "novelty", nov
        return None
