"""Each scenario's rule fires on a clip that contains the event and stays silent on one that does not."""

from __future__ import annotations

import pytest

from cityloop.analysis.rules import SCENARIOS
from tests.analysis.conftest import truth_events

POSITIVE = {"helmetless_rider": "busy-rain", "illegal_parking": "busy-rain", "garbage_pile": "busy-rain",
            "road_waterlogging": "busy-rain", "crowd_gathering": "busy-rain", "street_vending": "busy-night"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rule_fires_on_a_clip_with_the_event(scenario: str, clips, patrols):
    clip = POSITIVE[scenario]
    truth = [e for e in truth_events(clips[clip]) if e["scenario"] == scenario]
    assert truth, f"simulated clip {clip} should contain {scenario}"
    m = patrols[clip].metrics[scenario]
    assert m["hits"] >= max(1, int(0.7 * len(truth))), m  # found most real events
    assert m["precision"] >= 0.8, m  # and raised few false alarms
    assert m["ttd_median_s"] <= 10.0, m  # within seconds of stream time


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rule_is_silent_on_a_clip_without_the_event(scenario: str, clips, patrols):
    for clip in ("quiet-rain", "quiet-night"):
        assert not [e for e in truth_events(clips[clip]) if e["scenario"] == scenario]
        raised = [e for e in patrols[clip].events if e["scenario"] == scenario]
        assert raised == [], f"{scenario} raised on {clip}: {raised}"


def test_vending_needs_night(clips, tmp_path):
    """The same stall clip, its clock moved to midday, raises no street_vending."""
    import json
    import shutil
    from datetime import datetime, timedelta
    from pathlib import Path

    from cityloop.analysis.params import AnalysisParams
    from cityloop.analysis.patrol import run_patrol

    day = tmp_path / "day"
    shutil.copytree(clips["busy-night"], day)
    cams = json.loads((day / "cameras.json").read_text())
    for c in cams:
        t = datetime.fromisoformat(c["start_ts"])
        c["start_ts"] = (t.replace(hour=12, minute=0) + timedelta(days=0)).isoformat()
    (day / "cameras.json").write_text(json.dumps(cams))
    res = run_patrol(Path("."), day, "truth", AnalysisParams(), f"sqlite:///{tmp_path}/e.db")
    assert not [e for e in res.events if e["scenario"] == "street_vending"]
    assert [e for e in res.events if e["scenario"] == "garbage_pile"]  # other rules still run


def test_events_follow_the_contract_and_have_snapshots(patrols):
    keys = {"id", "scenario", "camera_id", "start_ts", "end_ts", "first_detected_ts", "alerted_ts",
            "model_version", "score", "boxes", "snapshot"}
    events = patrols["busy-rain"].events
    assert events
    for e in events:
        assert keys <= set(e)
        assert e["start_ts"] <= e["first_detected_ts"] <= e["end_ts"] + 1e-6
        assert e["alerted_ts"] is not None and e["boxes"]
        assert e["snapshot"] is None or e["snapshot"].endswith(".jpg")
