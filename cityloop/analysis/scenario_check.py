"""Each registered scenario against its own clips: the positive clip (its event staged) and the
confuser clip (its look-alikes only), rendered by the simulator and patrolled with the simulator's
boxes degraded like a decent detector's (5% of boxes dropped, 0.5 px jitter, 5% helmet flips).

This is the rules' ceiling, not the detector's accuracy: what `cityloop scenarios check` prints and
the README lists per scenario (precision, recall, median time to discovery, false alarms on the
confusers). tests/scenarios/test_contract.py holds every unit to the same bar.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.patrol import TruthNoise, run_patrol
from cityloop.scenarios import registry
from cityloop.scenarios.base import ClipSpec
from cityloop.scenes.video import generate_video

DETECTOR_NOISE = TruthNoise(drop=0.05, jitter_px=0.5, flip=0.05, seed=0)


@dataclass
class ScenarioCheck:
    scenario: str
    seed: int
    truth: int
    raised: int
    hits: int
    precision: float | None
    recall: float | None
    ttd_median_s: float | None
    confuser_raised: int  # events of this scenario raised on its confuser clip (should be 0)

    @property
    def ok(self) -> bool:
        return (self.truth > 0 and (self.precision or 0) >= 0.8 and (self.recall or 0) >= 0.7
                and self.ttd_median_s is not None and self.ttd_median_s <= 10.0 and self.confuser_raised == 0)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def render_clip(out: Path, spec: ClipSpec, seed: int, workers: int = 1) -> Path:
    generate_video("field", spec.cameras, spec.seconds, 2, seed + spec.seed, out, rates=dict(spec.rates),
                   condition=spec.condition, hour=spec.hour, sites=spec.sites, workers=workers)
    return out


def check_scenario(name: str, seed: int, work: Path, params: AnalysisParams | None = None,
                   workers: int = 1) -> ScenarioCheck:
    """Render and patrol one scenario's positive and confuser clips under `work`."""
    sc, params = registry().get(name), params or AnalysisParams()
    runs = {}
    for label in ("positive", "confuser"):
        spec = getattr(sc, label)
        clip = render_clip(work / f"{name}-{label}-s{seed}", spec, seed, workers)
        runs[label] = run_patrol(Path("."), clip, "truth", params, f"sqlite:///{work}/{name}-{label}-s{seed}.db",
                                 noise=DETECTOR_NOISE)
    m = runs["positive"].metrics[name]
    false = sum(1 for e in runs["confuser"].events if e["scenario"] == name)
    return ScenarioCheck(name, seed, m["truth"], m["raised"], m["hits"], m["precision"], m["recall"],
                         m["ttd_median_s"], false)


def check_all(seeds: list[int], names: list[str] | None = None, params: AnalysisParams | None = None,
              advance: Callable[[str], None] | None = None) -> list[ScenarioCheck]:
    """Every registered scenario (or `names`) on each seed's clips."""
    out = []
    with tempfile.TemporaryDirectory(prefix="cityloop-scenarios-") as tmp:
        for name in names or list(registry().names):
            for seed in seeds:
                out.append(check_scenario(name, seed, Path(tmp), params))
                if advance:
                    advance(name)
    return out
