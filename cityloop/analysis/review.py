"""Alerts confirmed or dismissed by the people who act on them.

A review is stored on the event (`extra["review"] = {"verdict", "by", "ts", "note"}`), so the
dashboard, the weekly report (the precision of a scenario's alerts) and the loop read one record.
A dismissed alert is the loop's feedback from the street: its frame goes to the center's inbox
as a hard example with reason `dismissed alert`, and the next labeling round takes it first.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from cityloop.analysis.store import Event, EventStore
from cityloop.labeling.select import DISMISSED_ALERT

log = logging.getLogger("cityloop.review")

VERDICTS = ("confirmed", "dismissed")


class ReviewError(ValueError):
    """A review that cannot be recorded: unknown event or verdict (the message says which)."""


MAX_NOTE = 500


def review_alert(store: EventStore, root: Path, event_id: str, verdict: str, by: str = "dashboard",
                 note: str = "") -> dict[str, Any]:
    """Record `verdict` (confirmed | dismissed) on an event; a dismissed one's frame becomes a hard
    example. Returns {"event_id", "verdict", "by", "ts", "note", "hard_example": sha256 or None,
    "hard_example_error": why there is none, or None}.

    The review is written before the frame goes to the inbox, so a full disk or a missing frame never
    loses the verdict; the inbox is idempotent by content, so dismissing twice stores one example."""
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {', '.join(VERDICTS)}, not {str(verdict)[:40]!r}")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise ReviewError(f"note must be text of at most {MAX_NOTE} characters")
    if not isinstance(by, str) or not 0 < len(by) <= 100 or not by.isprintable():
        raise ReviewError("by must be printable text of 1..100 characters")
    ev = store.get(event_id)
    if ev is None:
        raise ReviewError(f"no event {str(event_id)[:80]!r} in the event store")
    rec = {"verdict": verdict, "by": by, "ts": round(time.time(), 3), "note": note}
    extra = dict(ev.extra or {})
    history = [*extra.get("reviews", []), rec][-20:]  # who said what, latest last (a verdict can change)
    store.update(ev.id, extra={**extra, "review": rec, "reviews": history})
    out: dict[str, Any] = {"event_id": ev.id, **rec, "hard_example": None, "hard_example_error": None}
    if verdict == "dismissed":
        try:
            out["hard_example"] = send_to_labeling(root, ev)
        except (OSError, ValueError) as exc:
            out["hard_example_error"] = str(exc)
            log.warning("event %s dismissed, but its frame did not reach the inbox: %s", ev.id, exc)
    return out


def send_to_labeling(root: Path, ev: Event) -> str:
    """The event's clean frame into the center's inbox (`data/inbox/edge`) with reason `dismissed alert`;
    the next `hard-examples` ingest pools it and the next labeling batch takes it first. Returns its sha256."""
    from cityloop.edge.inbox import InboxStore

    frame = (ev.extra or {}).get("frame")
    if not frame or not Path(frame).is_file():
        raise ValueError(f"event {ev.id} has no clean frame on disk (only events raised with snapshots keep one)")
    data = Path(frame).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    InboxStore(Path(root)).put({
        "sha256": sha, "image": base64.b64encode(data).decode(), "camera_id": ev.camera_id,
        "model_version": ev.model_version or "unknown", "reason": DISMISSED_ALERT, "score": float(ev.score or 0.0),
        "ts": float(ev.first_detected_ts), "frame_index": int((ev.extra or {}).get("frame_index") or 0),
    }, node="review")
    return sha


def review_of(extra: dict[str, Any] | None) -> dict[str, Any] | None:
    """The review stored in an event's extra, or None."""
    r = (extra or {}).get("review")
    return r if isinstance(r, dict) else None
