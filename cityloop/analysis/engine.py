"""Detections in, events out: per-camera tracking, the scenario rules, dedup and cooldown.

`Analyzer` is an edge node detection sink (`on_detections(camera_id, ts, frame_index,
detections, model_version)`); `analysis.sink:edge_sink` builds one for `cityloop edge run --sink`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cityloop.analysis.alerts import Dispatcher
from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.rules import CameraContext, Candidate, evaluate_rules
from cityloop.analysis.store import Event
from cityloop.analysis.tracker import Box, Tracker, centre, to_dets
from cityloop.core.images import ImageRefused, decode_image
from cityloop.scenarios.zones import CameraZones

Assignment = Callable[[str, float], Collection[str] | None]  # (camera, ts) -> scenarios to run (None: all)

log = logging.getLogger("cityloop.analysis")
RETRY_EVERY_S = 5.0  # wall seconds between passes over pending alert deliveries


@dataclass
class _Open:
    """An event whose condition was last seen at `last_ts` (still open, or cooling down)."""

    event: Event
    keys: set[str]  # every subject (track, crowd) that was this event
    last_ts: float
    box: Box
    velocity: tuple[float, float]
    closed: bool = False


@dataclass
class CameraState:
    tracker: Tracker
    ctx: CameraContext
    district: str | None = None
    events: list[_Open] = field(default_factory=list)


def _near(o: _Open, c: Candidate, ts: float) -> bool:
    """Whether candidate c is plausibly the subject of event o again (after a broken track)."""
    dt = ts - o.last_ts
    px, py = centre(o.box)
    px, py = px + o.velocity[0] * dt, py + o.velocity[1] * dt
    cx, cy = centre(c.boxes[0]) if len(c.boxes) == 1 else (
        sum(centre(b)[0] for b in c.boxes) / len(c.boxes), sum(centre(b)[1] for b in c.boxes) / len(c.boxes))
    size = max(o.box[2] - o.box[0], o.box[3] - o.box[1], 4.0)
    return ((px - cx) ** 2 + (py - cy) ** 2) ** 0.5 <= 1.5 * size


def _union(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


class Analyzer:
    """Tracks, rules and deduplicated events for any number of cameras."""

    def __init__(self, params: AnalysisParams, dispatcher: Dispatcher, zones: dict[str, CameraZones] | None = None,
                 cameras: dict[str, dict[str, Any]] | None = None, snapshots: Path | None = None,
                 assignment: Assignment | None = None) -> None:
        self.p, self.dispatcher = params, dispatcher
        self.assignment = assignment  # a schedule's (camera, ts) -> scenarios; None: every scenario everywhere
        self.zones, self.cameras = zones or {}, cameras or {}
        self.snapshots = Path(snapshots) if snapshots else None
        self.state: dict[str, CameraState] = {}
        self.raised: list[Event] = []
        self.deduplicated = 0  # candidates that joined an existing event instead of raising a new one
        self._last_retry = time.monotonic()

    def _camera(self, camera_id: str) -> CameraState:
        if camera_id not in self.state:
            meta = self.cameras.get(camera_id, {})
            size = float(meta.get("size", 192))
            ctx = CameraContext(camera_id, self.zones.get(camera_id, CameraZones(camera_id)), size * size,
                                condition=meta.get("condition"))
            self.state[camera_id] = CameraState(Tracker(self.p.tracker), ctx, meta.get("district"))
        return self.state[camera_id]

    def on_detections(self, camera_id: str, ts: float, frame_index: int, detections: list[Any],
                      model_version: str, image: np.ndarray | bytes | None = None) -> list[Event]:
        """One frame's detections (edge sink dicts, runtime Detections or tracker Dets); returns new events."""
        cam = self._camera(camera_id)
        seen = cam.tracker.update(ts, to_dets(detections, self.p.tracker.min_score))
        new = []
        only = self.assignment(camera_id, ts) if self.assignment else None
        for c in evaluate_rules(seen, ts, self.p.scenarios, cam.ctx, only):
            ev = self._candidate(cam, c, ts, model_version, frame_index, image)
            if ev is not None:
                new.append(ev)
        self._close(cam, ts)
        if time.monotonic() - self._last_retry >= RETRY_EVERY_S:  # alerts a sink refused earlier
            self._last_retry = time.monotonic()
            self.dispatcher.retry_soon()  # the dispatcher's worker sends them: the frame loop never waits
        return new

    def _candidate(self, cam: CameraState, c: Candidate, ts: float, model_version: str, frame_index: int,
                   image: np.ndarray | bytes | None) -> Event | None:
        box = _union(c.boxes)
        for o in cam.events:
            if o.event.scenario == c.scenario and c.key in o.keys and not o.closed:
                o.last_ts, o.box, o.velocity = ts, box, c.velocity
                return None
        for o in cam.events:  # cooldown: the same subject again (a broken track, a crowd re-forming)
            same = c.key in o.keys or (not any(self._seen_now(cam, k, ts) for k in o.keys) and _near(o, c, ts))
            if o.event.scenario == c.scenario and ts - o.last_ts <= self.p.cooldown_s and same:
                o.last_ts, o.box, o.velocity, o.closed = ts, box, c.velocity, False
                o.keys.add(c.key)
                self.deduplicated += 1
                return None
        ev = Event(id=uuid.uuid4().hex, scenario=c.scenario, camera_id=cam.ctx.camera_id, start_ts=c.since_ts,
                   end_ts=ts, first_detected_ts=ts, model_version=model_version, score=round(c.score, 4),
                   boxes=[[round(v, 1) for v in b] for b in c.boxes], district=cam.district,
                   extra={"frame_index": frame_index, "key": c.key, **c.detail})
        ev.snapshot = self._snapshot(ev, image)
        self.dispatcher.raise_event(ev)
        cam.events.append(_Open(ev, {c.key}, ts, box, c.velocity))
        self.raised.append(ev)
        return ev

    @staticmethod
    def _seen_now(cam: CameraState, key: str, ts: float) -> bool:
        """Whether an event's subject (a track, a crowd) was seen in this very frame: then a candidate
        with another key is another object, not the same one again."""
        if key.startswith("c"):
            return any(c["key"] == key and c["last_ts"] >= ts for c in cam.ctx.memory.get("crowds", {}).get("open", []))
        tr = cam.tracker.tracks.get(int(key[1:]))
        return tr is not None and tr.last_ts >= ts

    def _close(self, cam: CameraState, ts: float) -> None:
        for o in cam.events:
            if not o.closed and ts - o.last_ts > self.p.close_after_s:
                o.closed = True
                self._finish(o)
        cam.events = [o for o in cam.events if not o.closed or ts - o.last_ts <= self.p.cooldown_s]

    def _finish(self, o: _Open) -> None:
        o.event.end_ts = o.last_ts
        self.dispatcher.store.update(o.event.id, end_ts=o.last_ts)

    def close(self) -> None:
        """End of the streams: record every open event's end, retry pending alerts once."""
        for cam in self.state.values():
            for o in cam.events:
                if not o.closed:
                    o.closed = True
                    self._finish(o)
        self.dispatcher.stop()  # the queued alerts delivered (bounded wait), then one more pass
        self.dispatcher.retry_pending()

    def _snapshot(self, ev: Event, image: np.ndarray | bytes | None) -> str | None:
        """The frame with the event's boxes drawn, as JPEG under the snapshots folder; beside it the
        clean frame (`<id>.frame.jpg`, `extra["frame"]`): a dismissed alert sends that one to labeling,
        never a frame with boxes drawn into its pixels."""
        if self.snapshots is None or image is None:
            return None
        try:  # encoded bytes: the header is checked (format, limits.max_image_pixels) before decoding
            img = decode_image(image) if isinstance(image, bytes) else np.ascontiguousarray(image[..., ::-1])
        except ImageRefused as exc:
            log.warning("event %s: no snapshot, its frame was refused: %s", ev.id, exc)
            return None
        self.snapshots.mkdir(parents=True, exist_ok=True)
        frame = self.snapshots / f"{ev.id}.frame.jpg"
        if isinstance(image, bytes) and image[:2] == b"\xff\xd8":
            frame.write_bytes(image)  # the camera's own JPEG, not a second encoding of it
        else:
            cv2.imwrite(str(frame), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        ev.extra["frame"] = str(frame)
        for b in ev.boxes:
            cv2.rectangle(img, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (0, 0, 255), 1)
        path = self.snapshots / f"{ev.id}.jpg"
        cv2.imwrite(str(path), img)
        return str(path)
