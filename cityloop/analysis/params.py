"""The `analysis:` section of params.yaml as typed settings (rules, dedup, tracker, sinks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cityloop.core.settings import from_section, load_section


@dataclass
class TrackerParams:
    """IoU tracker: match threshold and how long an unseen track is kept alive."""

    iou: float = 0.25
    max_age_s: float = 3.0
    min_score: float = 0.3


@dataclass
class RuleParams:
    """One parameter set per scenario (see analysis.rules for what each means)."""

    helmet_k: int = 3  # rider_no_helmet in k ...
    helmet_n: int = 5  # ... of the last n frames of a track
    parking_t_s: float = 8.0  # stationary in a no-parking zone for T
    parking_max_move: float = 0.15  # box widths the ground point may wander while "stationary"
    garbage_t_s: float = 6.0
    vending_t_s: float = 4.0
    night_hours: tuple[float, float] = (17.0, 6.0)  # local hours [from, to) counted as night
    water_min_area: float = 0.002  # water box area as a share of the frame
    water_t_s: float = 2.0
    crowd_n: int = 4  # at least N persons ...
    crowd_radius: float = 0.8  # ... within R person-heights of their centre ...
    crowd_t_s: float = 3.0  # ... for T
    crowd_max_speed: float = 0.15  # person-heights per second: faster members are walking past


@dataclass
class AnalysisParams:
    """Everything the analysis layer reads from params.yaml `analysis:`."""

    tracker: TrackerParams = field(default_factory=TrackerParams)
    rules: RuleParams = field(default_factory=RuleParams)
    cooldown_s: float = 30.0  # a new candidate near a just-ended event of the same kind joins it
    close_after_s: float = 5.0  # an event whose condition is unseen this long is closed
    sinks: list[dict[str, Any]] = field(default_factory=lambda: [{"type": "log"}])
    db: str = "sqlite:///{root}/.cityloop/events/events.db"
    zones: dict[str, dict[str, Any]] = field(default_factory=dict)  # camera_id -> zone overrides
    match_tolerance_s: float = 2.0  # evaluation: slack around a ground-truth event's interval

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AnalysisParams:
        """Build from the yaml mapping; unknown keys are an error naming their section (no silent typo)."""
        d = dict(d or {})
        tracker = from_section(TrackerParams, d.pop("tracker", {}), "analysis.tracker")
        rules = from_section(RuleParams, d.pop("rules", {}), "analysis.rules")
        rules.night_hours = tuple(rules.night_hours)
        top = from_section(cls, d, "analysis")
        top.tracker, top.rules = tracker, rules
        return top


def analysis_params(root: Path) -> AnalysisParams:
    """params.yaml `analysis:` (defaults where it has none)."""
    return load_section(root, "analysis", AnalysisParams)


def store_url(root: Path, db: str | None = None) -> str:
    """--db, else params `analysis.db` with {root} filled in."""
    from cityloop.analysis.store import default_url

    return default_url(root, db or analysis_params(root).db)
