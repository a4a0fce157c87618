"""Alerts confirmed or dismissed: the verdict is kept on the event, a dismissed alert's clean frame goes
to the center's inbox with reason `dismissed alert` (the next labeling round's end: tests/labeling)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.patrol import run_patrol
from cityloop.analysis.review import ReviewError, review_alert, review_of
from cityloop.analysis.store import EventStore
from cityloop.edge.inbox import InboxStore


@pytest.fixture
def reviewed(clips, tmp_path: Path):
    """A workspace folder whose event store holds a patrol's events with snapshots."""
    db = f"sqlite:///{tmp_path}/.cityloop/events/events.db"
    (tmp_path / ".cityloop" / "events").mkdir(parents=True)
    run_patrol(Path("."), clips["busy-rain"], "truth", AnalysisParams(), db, snapshots=tmp_path / "snaps")
    store = EventStore(db)
    yield tmp_path, store
    store.dispose()


def test_each_event_keeps_its_clean_frame_beside_the_snapshot(reviewed):
    root, store = reviewed
    ev = store.events()[0]
    frame, snap = Path(ev.extra["frame"]), Path(ev.snapshot)
    assert frame.is_file() and snap.is_file() and frame != snap
    clean, drawn = cv2.imread(str(frame)), cv2.imread(str(snap))
    assert clean.shape == drawn.shape
    # the snapshot differs from the clean frame along the event's drawn box, and (JPEG aside) nowhere else
    x0, y0, x1, y1 = (int(v) for v in ev.boxes[0][:4])
    ys, xs = np.nonzero(np.abs(clean.astype(int) - drawn.astype(int)).max(axis=2) > 60)
    assert len(ys) > 0
    on_edge = (np.minimum.reduce([np.abs(xs - x0), np.abs(xs - x1), np.abs(ys - y0), np.abs(ys - y1)]) <= 3)
    assert on_edge.mean() > 0.9


def test_a_dismissed_alert_becomes_one_hard_example_and_a_confirmed_one_does_not(reviewed):
    root, store = reviewed
    first, second = store.events()[:2]
    out = review_alert(store, root, first.id, "dismissed", by="officer-7", note="a helmet, seen at night")
    assert out["verdict"] == "dismissed" and out["hard_example"] and out["hard_example_error"] is None
    stored = store.get(first.id)
    assert review_of(stored.extra)["verdict"] == "dismissed" and review_of(stored.extra)["by"] == "officer-7"
    assert stored.extra["frame_index"] == first.extra["frame_index"]  # the rest of extra is kept
    inbox = InboxStore(root).examples()
    assert len(inbox) == 1 and inbox[0]["reason"] == "dismissed alert" and inbox[0]["camera_id"] == first.camera_id
    data = (InboxStore(root).images / f"{out['hard_example']}.jpg").read_bytes()
    assert hashlib.sha256(data).hexdigest() == out["hard_example"]
    assert data == Path(first.extra["frame"]).read_bytes()  # the clean frame, not the snapshot

    again = review_alert(store, root, first.id, "dismissed")  # twice: still one example, two reviews kept
    assert again["hard_example"] == out["hard_example"] and len(InboxStore(root).examples()) == 1
    assert len(store.get(first.id).extra["reviews"]) == 2

    ok = review_alert(store, root, second.id, "confirmed")
    assert ok["hard_example"] is None and review_of(store.get(second.id).extra)["verdict"] == "confirmed"
    assert len(InboxStore(root).examples()) == 1


def test_bad_reviews_are_refused_and_change_nothing(reviewed):
    root, store = reviewed
    ev = store.events()[0]
    with pytest.raises(ReviewError, match="verdict must be one of confirmed, dismissed"):
        review_alert(store, root, ev.id, "maybe")
    with pytest.raises(ReviewError, match="no event"):
        review_alert(store, root, "no-such-event", "dismissed")
    with pytest.raises(ReviewError, match="note"):
        review_alert(store, root, ev.id, "confirmed", note="x" * 600)
    assert review_of(store.get(ev.id).extra) is None and InboxStore(root).examples() == []


def test_a_dismissal_without_a_frame_keeps_the_verdict_and_says_why(reviewed):
    root, store = reviewed
    ev = store.events()[0]
    Path(ev.extra["frame"]).unlink()
    out = review_alert(store, root, ev.id, "dismissed")
    assert out["hard_example"] is None and "no clean frame" in out["hard_example_error"]
    assert review_of(store.get(ev.id).extra)["verdict"] == "dismissed"


def test_cli_lists_and_reviews_alerts(reviewed, monkeypatch):
    from cityloop.cli import app

    root, store = reviewed
    monkeypatch.setenv("CITYLOOP_ROOT", str(root))
    db = store.url
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["alerts", "list", "--db", db, "--json", "--limit", "3"]).stdout)
    assert len(listed) == 3 and all(r["review"] is None for r in listed)
    res = runner.invoke(app, ["alerts", "review", listed[0]["id"], "--dismiss", "--note", "false alarm", "--db", db])
    assert res.exit_code == 0 and "dismissed" in res.stdout and "inbox" in res.stdout
    left = json.loads(runner.invoke(app, ["alerts", "list", "--db", db, "--json", "--unreviewed"]).stdout)
    assert listed[0]["id"] not in {r["id"] for r in left}
    bad = runner.invoke(app, ["alerts", "review", "nope", "--confirm", "--db", db])
    assert bad.exit_code == 1 and "no event" in bad.stderr
