"""A season of a district: fixed cameras every day, clips dated across the weeks, helmet compliance
rising after enforcement, deterministic for a seed (small sizes: seconds, not minutes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cityloop.scenes.season import generate_season, p_no_helmet_on

SMALL = dict(weeks=2, cameras=2, clips_per_day=1, seconds=12.0, fps=2.0, seed=3, enforcement_week=2,
             p_no_helmet=(0.6, 0.0), ramp_days=0)
RATES = {"riders": 12.0}  # many riders in short clips: enough helmetless events to count


@pytest.fixture(scope="module")
def season(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("season")
    return out, generate_season(out, rates=RATES, workers=2, **SMALL)


def test_the_compliance_ramp():
    assert [p_no_helmet_on(d, 2, 0.4, 0.05, 7) for d in (0, 6)] == [0.4, 0.4]
    ramp = [p_no_helmet_on(d, 2, 0.4, 0.05, 7) for d in range(7, 14)]
    assert ramp == sorted(ramp, reverse=True) and ramp[-1] == pytest.approx(0.05) and ramp[0] < 0.4
    assert p_no_helmet_on(20, 2, 0.4, 0.05, 7) == 0.05
    assert p_no_helmet_on(7, 2, 0.4, 0.05, 0) == 0.05  # no ramp: enforcement overnight


def test_fixed_cameras_and_one_stream_folder_per_day(season):
    out, s = season
    assert len(s["streams"]) == 14 and s["weeks"] == ["2026-W45", "2026-W46"]
    assert json.loads((out / "season.json").read_text())["id"] == s["id"]
    seen = set()
    for st in s["streams"]:
        cams = json.loads((out / st["folder"] / "cameras.json").read_text())
        assert [(c["camera_id"], c["district"], c["layout"]) for c in cams] == [
            (c["camera_id"], c["district"], c["layout"]) for c in s["cameras"]], "the same cameras every day"
        for c in cams:
            assert c["start_ts"][:10] == st["date"], "a clip never leaves its day"
            assert len(list((out / st["folder"] / c["camera_id"] / "frames").glob("*.jpg"))) == c["frames"] == 24
            seen.add(c["condition"])
        assert (out / st["folder"] / "events.json").exists() and (out / st["folder"] / "metadata.parquet").exists()
    assert len(seen) >= 3, f"the field's mix of conditions stays, got {seen}"
    assert [st["p_no_helmet"] for st in s["streams"]] == [0.6] * 7 + [0.0] * 7


def test_true_helmetless_counts_fall_and_other_scenarios_stay(season):
    out, s = season
    before, after = s["truth"]["helmetless_rider"]
    assert before >= 10 and after == 0 and s["true_change_pct"] == -100.0
    events = [e for st in s["streams"] for e in json.loads((out / st["folder"] / "events.json").read_text())]
    assert sum(e["scenario"] == "helmetless_rider" for e in events) == before + after, "season.json counts events.json"
    others = {e["scenario"] for e in events} - {"helmetless_rider"}
    assert len(others) >= 2, f"the other scenarios keep their rates, got {others}"
    assert s["params"]["rates"]["riders"] == 12.0 and "p_no_helmet" not in s["params"]["rates"]


def test_same_seed_same_season_whatever_the_workers(season, tmp_path: Path):
    out, s = season
    small = {**SMALL, "weeks": 1}
    one = generate_season(tmp_path / "one", rates=RATES, workers=1, **small)

    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.name != "season.json":
                h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
        return h.hexdigest()

    assert one["truth"]["helmetless_rider"][0] == s["truth"]["helmetless_rider"][0]
    for st in one["streams"]:
        assert digest(tmp_path / "one" / st["folder"]) == digest(out / st["folder"]), st["folder"]


def test_bad_arguments_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="enforcement_week"):
        generate_season(tmp_path, weeks=1, enforcement_week=5)
    with pytest.raises(ValueError, match="p_no_helmet"):
        generate_season(tmp_path, weeks=1, rates={"p_no_helmet": 0.2})
    with pytest.raises(ValueError, match="unknown clip rates"):
        generate_season(tmp_path, weeks=1, rates={"ridres": 2.0})
