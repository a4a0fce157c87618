"""Event-level evaluation against the simulator's ground-truth events (events.json).

A raised event matches a ground-truth event of the same camera and scenario when it was first
detected inside the truth's interval (± `tolerance_s`) and, where the truth's objects are
visible in that frame, its boxes overlap theirs. The first match of a truth event is a hit;
further matches of the same truth are duplicate alerts; an event matching nothing is a false alarm.

- precision: raised events that match a real event / raised events
- recall: truth events hit / truth events
- duplicate-alert rate: duplicate alerts / raised events that match a real event
- time to discovery: first detection - truth start, stream seconds (median and p95)
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cityloop.analysis.store import Event
from cityloop.core.geometry import Box, iou
from cityloop.scenarios import registry


@dataclass
class ScenarioMetrics:
    scenario: str
    truth: int
    raised: int
    hits: int
    duplicates: int
    false_alarms: int
    precision: float | None
    recall: float | None
    duplicate_rate: float | None
    ttd_median_s: float | None
    ttd_p95_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def truth_boxes(streams: Path) -> dict[str, dict[tuple[int, int], Box]]:
    """camera -> (frame_index, track_id) -> xyxy box, from each camera's COCO file."""
    out: dict[str, dict[tuple[int, int], Box]] = {}
    for coco_path in sorted(Path(streams).glob("*/annotations.coco.json")):
        coco = json.loads(coco_path.read_text())
        frame = {im["id"]: im["frame_index"] for im in coco["images"]}
        boxes = out.setdefault(coco_path.parent.name, {})
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            boxes[(frame[a["image_id"]], a["track_id"])] = (x, y, x + w, y + h)
    return out


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def evaluate_events(truth: list[dict[str, Any]], raised: list[Event], cameras: list[dict[str, Any]],
                    gt_boxes: dict[str, dict[tuple[int, int], Box]] | None = None,
                    tolerance_s: float = 2.0) -> dict[str, ScenarioMetrics]:
    """Per-scenario metrics (plus "all") of raised events against ground truth."""
    start = {c["camera_id"]: unix(c["start_ts"]) for c in cameras}
    by_key: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for t in truth:
        by_key[(t["camera_id"], t["scenario"])].append(t)
    first: dict[str, float] = {}
    matched = defaultdict(lambda: [0, 0, 0])  # scenario -> raised, hits+dups (matched), duplicates
    for ev in sorted(raised, key=lambda e: e.first_detected_ts):
        s = ev.first_detected_ts - start.get(ev.camera_id, 0.0)
        stats = matched[ev.scenario]
        stats[0] += 1
        best = _best_truth(ev, s, by_key.get((ev.camera_id, ev.scenario), []), first,
                           (gt_boxes or {}).get(ev.camera_id), tolerance_s)
        if best is None:
            continue
        stats[1] += 1
        if best["id"] in first:
            stats[2] += 1
        else:
            first[best["id"]] = s - best["start_s"]
    out = {}
    for sc in (*registry().names, "all"):
        ts = [t for t in truth if sc in ("all", t["scenario"])]
        raised_n, match_n, dup_n = (sum(matched[x][i] for x in registry().names) for i in range(3)) if sc == "all" \
            else matched[sc]
        ttd = [max(0.0, first[t["id"]]) for t in ts if t["id"] in first]
        out[sc] = ScenarioMetrics(
            sc, len(ts), raised_n, len(ttd), dup_n, raised_n - match_n, _ratio(match_n, raised_n),
            _ratio(len(ttd), len(ts)), _ratio(dup_n, match_n),
            round(float(np.median(ttd)), 2) if ttd else None,
            round(float(np.percentile(ttd, 95)), 2) if ttd else None)
    return out


def _best_truth(ev: Event, s: float, cands: list[dict], first: dict[str, float],
                boxes: dict[tuple[int, int], Box] | None, tol: float) -> dict | None:
    """The truth event ev matches best: unmatched truths first, then the largest overlap."""
    frame = (ev.extra or {}).get("frame_index")
    best, best_key = None, None
    for t in cands:
        if not t["start_s"] - tol <= s <= t["end_s"] + tol:
            continue
        overlap, visible = 1.0, False
        if boxes is not None and frame is not None and ev.boxes:
            tb = [boxes[(frame, tid)] for tid in t.get("track_ids", []) if (frame, tid) in boxes]
            if tb:
                overlap, visible = max(iou(tuple(p), g) for p in ev.boxes for g in tb), True
                if overlap <= 0.05:
                    continue
        # a truth whose objects are visible under the event's boxes beats one not yet (or no longer) in view,
        # even when that one is still unmatched: otherwise a second pile appearing later steals the first's hit
        key = (visible, t["id"] not in first, overlap)
        if best_key is None or key > best_key:
            best, best_key = t, key
    return best


def metrics_table(metrics: dict[str, ScenarioMetrics]) -> list[dict[str, Any]]:
    """Rows for printing / JSON."""
    return [m.to_dict() for m in metrics.values()]
