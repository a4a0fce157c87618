"""Playing a season through the platform: each day patrolled into one event store, then the weekly
report of the last week, whose 4-week trend is what the demo's headline prints.

`model="truth"` with TruthNoise stands for the model (missed boxes, jitter, helmet class flips): it keeps
the test fast and deterministic. The real detector's gap is measured by the demo (README: "Four weeks
of a district")."""

from __future__ import annotations

from pathlib import Path

import pytest

from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.patrol import TruthNoise
from cityloop.analysis.season import play_season
from cityloop.analysis.store import EventStore
from cityloop.scenes.season import generate_season

NOISE = TruthNoise(drop=0.05, jitter_px=0.5, flip=0.05, seed=0)  # tests/analysis/conftest.py's decent detector


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, str, Path]:
    root = tmp_path_factory.mktemp("season-ws")
    season_dir = root / "season"
    season = generate_season(season_dir, weeks=4, cameras=2, seconds=18.0, fps=2.0, seed=11, enforcement_week=2,
                             p_no_helmet=(0.4, 0.05), rates={"riders": 20.0}, workers=2)
    db = f"sqlite:///{root / 'events.db'}"
    res = play_season(root, season_dir, "truth", db, root / "snapshots", params=AnalysisParams(), noise=NOISE,
                      report_out=root / "reports", pdf=False)
    return season, res, db, season_dir


@pytest.mark.slow
def test_the_measured_four_week_drop_is_within_5_points_of_the_truth(played):
    season, res, _, _ = played
    assert season["truth"]["helmetless_rider"][0] >= 20, "enough events in week 1 that the drop is not noise"
    assert res["true_change_pct"] == season["true_change_pct"] < -70
    assert res["measured_change_pct"] is not None
    print(f"helmetless truth {season['truth']['helmetless_rider']}, measured {res['measured']['helmetless_rider']}, "
          f"change {res['true_change_pct']}% true vs {res['measured_change_pct']}% measured")
    assert res["gap_points"] <= 5.0, res
    assert res["streams_played"] == 28 and res["report"] and Path(res["report"]).exists()


@pytest.mark.slow
def test_the_report_holds_the_four_weeks_the_headline_is_about(played):
    season, res, _, _ = played
    assert res["four_weeks_from"] == "report", "weekly_report's summary has `four_weeks` (report.py's contract)"
    row = res["four_weeks"]
    assert row["weeks"] == season["weeks"] and row["counts"] == res["measured"]["helmetless_rider"]
    assert row["change_pct"] == res["measured_change_pct"]
    assert any("without helmet" in h and "fell" in h for h in res["headline"]), res["headline"]


@pytest.mark.slow
def test_events_carry_the_cameras_districts_and_days(played, tmp_path: Path):
    season, res, db, season_dir = played
    store = EventStore(db)
    try:
        events = store.events()
    finally:
        store.dispose()
    districts = {c["camera_id"]: c["district"] for c in season["cameras"]}
    assert events and all(e.district == districts[e.camera_id] for e in events)
    assert all(e.extra["season"] == season["id"] and e.extra["stream"][:10] in {s["date"] for s in season["streams"]}
               for e in events)
    # a second play on the same store skips the days already there: the season is never counted twice
    again = play_season(tmp_path, season_dir, "truth", db, None,
                        params=AnalysisParams(), noise=NOISE, report_out=tmp_path / "reports", pdf=False)
    assert again["streams_played"] == 0 and again["measured"] == res["measured"]


def test_the_cli_renders_and_plays_a_season(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`cityloop scenes season` then `cityloop patrol-season` in a bare workspace (params.yaml only)."""
    import json

    import yaml
    from typer.testing import CliRunner

    from cityloop.cli import app

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["report"]["pdf"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("CITYLOOP_ROOT", str(tmp_path))
    runner = CliRunner(env={"COLUMNS": "200"})
    res = runner.invoke(app, ["scenes", "season", "--weeks", "1", "--cameras", "1", "--seconds", "6", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "true helmetless riders per week" in res.output
    season = json.loads((tmp_path / ".cityloop" / "season" / "season.json").read_text())
    assert len(season["streams"]) == 7 and season["params"]["weeks"] == 1
    res = runner.invoke(app, ["patrol-season", "--model", "truth", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["streams_played"] == 7 and out["season"] == season["id"] and out["report"]
    res = runner.invoke(app, ["patrol-season", "--season", str(tmp_path / "nowhere"), "--model", "truth"])
    assert res.exit_code == 1 and "not a season folder" in res.output
