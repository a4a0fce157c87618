"""Each registered scenario's positive and confuser clips (its unit's ClipSpecs), rendered once per
session and patrolled with the simulator's boxes degraded like a decent detector's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.patrol import PatrolResult, TruthNoise, run_patrol
from cityloop.scenarios import registry
from cityloop.scenarios.base import ClipSpec
from cityloop.scenes.video import generate_video

DETECTOR_NOISE = TruthNoise(drop=0.05, jitter_px=0.5, flip=0.05, seed=0)  # what a decent detector looks like
SEED = 21


def render(root: Path, name: str, spec: ClipSpec, seed: int = SEED) -> Path:
    out = root / name
    generate_video("field", spec.cameras, spec.seconds, 2, seed + spec.seed, out, rates=dict(spec.rates),
                   condition=spec.condition, hour=spec.hour, sites=spec.sites, workers=2)
    return out


def truth_events(clip: Path) -> list[dict]:
    return json.loads((clip / "events.json").read_text())


@pytest.fixture(scope="session")
def scenario_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[Path, PatrolResult]]:
    """(scenario, "positive" | "confuser") -> (clip folder, its patrol with degraded truth boxes)."""
    root = tmp_path_factory.mktemp("scenario-clips")
    out = {}
    for name, sc in registry().scenarios.items():
        for label in ("positive", "confuser"):
            spec = getattr(sc, label)
            if spec is None:
                continue
            clip = render(root, f"{name}-{label}", spec)
            res = run_patrol(Path("."), clip, "truth", AnalysisParams(), f"sqlite:///{root}/{name}-{label}.db",
                             noise=DETECTOR_NOISE)
            out[(name, label)] = (clip, res)
    return out
