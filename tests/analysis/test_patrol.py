"""`cityloop patrol` end to end with the registered (weak) model, and the edge-node sink."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cityloop.cli import app


@pytest.mark.slow
def test_patrol_runs_a_model_and_prints_the_metrics(model_ws, clips, tmp_path: Path, monkeypatch):
    """Runs, scores and survives a corrupt frame (not a test of the tiny model's accuracy)."""
    streams = tmp_path / "streams"
    shutil.copytree(clips["busy-rain"], streams)
    bad = sorted((streams / "cam00" / "frames").iterdir())[5]
    bad.write_bytes(b"\x00not a jpeg")  # a broken camera frame
    monkeypatch.setenv("CITYLOOP_ROOT", str(model_ws.root))
    monkeypatch.setenv("COLUMNS", "160")
    out = tmp_path / "patrol.json"
    r = CliRunner().invoke(app, ["patrol", "--streams", str(streams), "--model", model_ws.model_id,
                                 "--db", f"sqlite:///{tmp_path}/events.db", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "event-level metrics" in r.output and "helmetless_rider" in r.output and "ttd p50 s" in r.output
    assert "1 corrupt frames skipped" in r.output
    res = json.loads(out.read_text())
    assert res["frames"] == 239 and res["corrupt"] == [str(bad)]  # every other frame was analysed
    assert set(res["metrics"]) >= {"helmetless_rider", "disorderly_crowd", "all"}
    assert all(e["model_version"] == model_ws.model_id for e in res["events"])


def test_patrol_reports_a_malformed_camera_config(tmp_path: Path, monkeypatch):
    (tmp_path / "cameras.json").write_text("{not json")
    monkeypatch.setenv("CITYLOOP_ROOT", str(tmp_path))
    r = CliRunner().invoke(app, ["patrol", "--streams", str(tmp_path), "--model", "truth",
                                 "--db", f"sqlite:///{tmp_path}/e.db"])
    assert r.exit_code == 1 and "cameras.json: not valid JSON" in r.output


def test_edge_nodes_plug_the_analyzer_in_as_their_sink(tmp_path: Path, monkeypatch):
    """The edge node's hand-off (dicts with box/score/cls) raises events into the workspace store."""
    from cityloop.analysis.sink import edge_sink
    from cityloop.analysis.store import EventStore

    monkeypatch.setenv("CITYLOOP_ROOT", str(tmp_path))
    sink = edge_sink(tmp_path / "node")
    for i in range(20):
        sink.on_detections("cam-7", 5000.0 + i / 2, i, [{"box": [10, 10, 40, 30], "score": 0.9, "label": 3,
                                                         "cls": "garbage"}], "cityloop-detector:v2")
    sink.close()
    events = EventStore(f"sqlite:///{tmp_path}/.cityloop/events/events.db").events()
    assert [(e.scenario, e.camera_id, e.model_version) for e in events] == [
        ("garbage_pile", "cam-7", "cityloop-detector:v2")]
