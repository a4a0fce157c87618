"""The weekly report makes a simulated drop in helmetless riding obvious."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cityloop.analysis.alerts import Dispatcher, LogSink
from cityloop.analysis.engine import Analyzer
from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.patrol import patrol_camera
from cityloop.analysis.report import week_start
from cityloop.analysis.store import EventStore
from cityloop.cli import app
from cityloop.scenarios.zones import load_zones, read_cameras
from cityloop.scenes.video import generate_video
from tests.analysis.conftest import BUSY

WEEK = "2026-W43"


def _patrol_in_week(analyzer: Analyzer, clip: Path, monday: datetime, day: int) -> None:
    """Patrol a clip as if it had been recorded on `day` of the week starting `monday`."""
    for cam in read_cameras(clip):
        cam = {**cam, "start_ts": (monday + timedelta(days=day, hours=9)).isoformat()}
        patrol_camera(analyzer, clip, cam, "truth", "cityloop-detector:v1", "report-test")


@pytest.fixture(scope="module")
def two_weeks(clips, tmp_path_factory) -> Path:
    """Before: many helmetless riders (busy clips, 3 days). After reporting: few (1 day)."""
    tmp = tmp_path_factory.mktemp("weeks")
    few = tmp / "few"
    generate_video("field", 2, 60, 2, 31, few, rates={**BUSY, "p_no_helmet": 0.08}, condition="rain")
    store = EventStore(f"sqlite:///{tmp}/events.db")
    analyzer = Analyzer(AnalysisParams(), Dispatcher(store, [LogSink()]), load_zones(read_cameras(clips["busy-rain"])))
    this = week_start(WEEK)
    for day in range(3):
        _patrol_in_week(analyzer, clips["busy-rain"], this - timedelta(days=7), day)
    _patrol_in_week(analyzer, few, this, 1)
    analyzer.close()
    return tmp


def test_weekly_report_shows_the_drop_in_helmetless_riding(two_weeks: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CITYLOOP_ROOT", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "140")
    r = CliRunner().invoke(app, ["report", "weekly", "--week", WEEK, "--db", f"sqlite:///{two_weeks}/events.db",
                                 "--out", str(tmp_path / "weekly")])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "weekly" / WEEK / "index.html").read_text()
    row = page[page.index("<td>E-bike rider without helmet</td>"):].split("</tr>")[0]
    assert 'class="down">▼' in row  # the drop is shown, in the "down" style
    pct = float(row.split("▼")[1].split("%")[0])
    assert pct >= 50.0
    headline = f"E-bike rider without helmet fell {pct:.1f}%"  # human scenario names (the unit's title)
    assert headline in page and headline in r.output
    for png in ("scenarios.png", "daily.png"):
        assert (tmp_path / "weekly" / WEEK / png).read_bytes()[:4] == b"\x89PNG"
    assert "cityloop-detector:v1" in page  # model versions in use
    hot = page[page.index("<h2>Hotspots</h2>"):page.index("<h2>Per district</h2>")]
    assert "<td>cam0" in hot  # the cameras with most events this week


def test_a_bad_week_is_a_clear_error(two_weeks: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CITYLOOP_ROOT", str(tmp_path))
    r = CliRunner().invoke(app, ["report", "weekly", "--week", "last", "--db", f"sqlite:///{two_weeks}/events.db",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2 and "2026-W42" in r.output

