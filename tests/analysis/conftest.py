"""Simulated camera clips for the analysis tests (session-scoped, read-only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.patrol import PatrolResult, TruthNoise, run_patrol
from cityloop.scenes.video import generate_video

BUSY = {"riders": 6.0, "p_no_helmet": 0.5, "cars": 4.0, "pedestrians": 4.0, "parking": 2.0, "garbage": 2.0,
        "vending": 3.0, "waterlogging": 3.0, "crowds": 2.0, "queues": 0.0}
DETECTOR_NOISE = TruthNoise(drop=0.05, jitter_px=0.5, flip=0.05, seed=0)  # what a decent detector looks like


def _clip(root: Path, name: str, rates: dict, condition: str, seed: int) -> Path:
    out = root / name
    generate_video("field", 2, 60, 2, seed, out, rates=rates, condition=condition, workers=1)
    return out


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """busy-rain (all but vending) and busy-night (vending too). Each scenario's silence on its look-alikes
    is tests/scenarios/test_contract.py's, on the unit's own confuser clip."""
    root = tmp_path_factory.mktemp("clips")
    return {"busy-rain": _clip(root, "busy-rain", BUSY, "rain", 21),
            "busy-night": _clip(root, "busy-night", BUSY, "night", 12)}


def truth_events(clip: Path) -> list[dict]:
    return json.loads((clip / "events.json").read_text())


@pytest.fixture(scope="session")
def patrols(clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, PatrolResult]:
    """Each clip patrolled with the simulator's boxes degraded like a detector's."""
    out = {}
    for name, clip in clips.items():
        db = tmp_path_factory.mktemp(f"db-{name}") / "events.db"
        out[name] = run_patrol(Path("."), clip, "truth", AnalysisParams(), f"sqlite:///{db}", noise=DETECTOR_NOISE)
    return out
