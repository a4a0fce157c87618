"""A small multi-object tracker: greedy IoU matching against constant-velocity predictions.

Why not supervision's ByteTrack: supervision requires `opencv-python`, which would be installed
beside (and overwrite) the `opencv-python-headless` that label-studio-sdk pins. The scenes are
a few dozen objects per frame at a few frames per second, where greedy matching on predicted
boxes with a centre-distance fallback is enough and is 100 lines we can read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cityloop.analysis.params import TrackerParams
from cityloop.core.geometry import Box, iou  # Box: x0, y0, x1, y1 in frame px
from cityloop.scenarios import registry
from cityloop.scenarios.base import Det, Observation, Track

__all__ = ["Box", "Det", "Observation", "Track", "Tracker", "centre", "family", "to_dets"]



def family(cls: str) -> str:
    """The track family of a class (classes a detector may flip between, such as a rider with and
    without a helmet, share one track)."""
    return registry().families.get(cls, cls)


def centre(b: Box) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _affinity(pred: Box, box: Box, reach: float) -> float:
    """IoU, or (for small fast objects that no longer overlap) a centre-distance score below it:
    within `reach` box diagonals (wide while a track's velocity is still unknown)."""
    v = iou(pred, box)
    if v > 0:
        return v
    (px, py), (bx, by) = centre(pred), centre(box)
    diag = max(1.0, ((pred[2] - pred[0]) ** 2 + (pred[3] - pred[1]) ** 2) ** 0.5)
    d = ((px - bx) ** 2 + (py - by) ** 2) ** 0.5 / diag
    return 0.2 * (1 - d / reach) if d < reach else 0.0


def to_dets(detections: Iterable[Any], min_score: float = 0.0) -> list[Det]:
    """Normalize the edge sink's dicts ({"box", "score", "cls"}), COCO-like or runtime Detections."""
    out = []
    for d in detections:
        if isinstance(d, Det):
            det = d
        elif isinstance(d, dict):
            det = Det(Box(*map(float, d["box"])), float(d.get("score", 1.0)), d.get("cls"))
        else:  # models.runtime.Detection
            det = Det(Box(d.x0, d.y0, d.x1, d.y1), float(d.score), d.cls)
        if det.cls and det.score >= min_score:
            out.append(det)
    return out


class Tracker:
    """Tracks of one camera. `update` once per frame, in time order."""

    def __init__(self, params: TrackerParams | None = None) -> None:
        self.p = params or TrackerParams()
        self.tracks: dict[int, Track] = {}
        self._next = 1

    def update(self, ts: float, dets: list[Det]) -> list[Track]:
        """Match this frame's detections to live tracks; returns the tracks seen in this frame."""
        pairs = []
        for tid, tr in self.tracks.items():
            pred, reach = tr.predict(ts), 1.5 if len(tr.history) == 1 else 0.8
            for j, d in enumerate(dets):
                if family(d.cls) == tr.family:
                    a = _affinity(pred, d.box, reach)
                    if a > 0 and (a >= self.p.iou or a < 0.2):
                        pairs.append((a, tid, j))
        used_t, used_d, seen = set(), set(), []
        for _a, tid, j in sorted(pairs, reverse=True):
            if tid in used_t or j in used_d:
                continue
            used_t.add(tid)
            used_d.add(j)
            seen.append(self._extend(self.tracks[tid], ts, dets[j]))
        for j, d in enumerate(dets):
            if j not in used_d:
                seen.append(self._start(ts, d))
        for tid in [t for t, tr in self.tracks.items() if ts - tr.last_ts > self.p.max_age_s]:
            del self.tracks[tid]
        return seen

    def _start(self, ts: float, d: Det) -> Track:
        tr = Track(self._next, family(d.cls), first_ts=ts, last_ts=ts)
        tr.history.append(Observation(ts, d.box, d.cls, d.score))
        self.tracks[tr.track_id] = tr
        self._next += 1
        return tr

    def _extend(self, tr: Track, ts: float, d: Det) -> Track:
        dt = ts - tr.last_ts
        if dt > 0:
            (ox, oy), (nx, ny) = centre(tr.box), centre(d.box)
            vx, vy = (nx - ox) / dt, (ny - oy) / dt
            w = 1.0 if len(tr.history) == 1 else 0.5  # first step: take the measured velocity
            tr.velocity = ((1 - w) * tr.velocity[0] + w * vx, (1 - w) * tr.velocity[1] + w * vy)
        tr.history.append(Observation(ts, d.box, d.cls, d.score))
        tr.last_ts = ts
        return tr
