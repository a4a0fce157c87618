"""The `analysis:` section of params.yaml as typed settings (dedup, tracker, sinks), plus `scenarios:`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cityloop.core.settings import from_section, load_params, load_section
from cityloop.scenarios.settings import ScenarioConfig, ScenariosSection, scenario_settings


@dataclass
class TrackerParams:
    """IoU tracker: match threshold and how long an unseen track is kept alive."""

    iou: float = 0.25
    max_age_s: float = 3.0
    min_score: float = 0.3


@dataclass
class AnalysisParams:
    """Everything the analysis layer reads from params.yaml `analysis:`."""

    tracker: TrackerParams = field(default_factory=TrackerParams)
    scenarios: dict[str, ScenarioConfig] = field(default_factory=scenario_settings)  # params.yaml `scenarios:`
    cooldown_s: float = 30.0  # a new candidate near a just-ended event of the same kind joins it
    close_after_s: float = 5.0  # an event whose condition is unseen this long is closed
    sinks: list[dict[str, Any]] = field(default_factory=lambda: [{"type": "log"}])
    db: str = "sqlite:///{root}/.cityloop/events/events.db"
    zones: dict[str, dict[str, Any]] = field(default_factory=dict)  # camera_id -> zone overrides
    match_tolerance_s: float = 2.0  # evaluation: slack around a ground-truth event's interval
    timezone: str = "Asia/Shanghai"  # the district's clock (IANA name); a camera's cameras.json entry may override it

    def to_dict(self, with_scenarios: bool = False) -> dict[str, Any]:
        """The `analysis:` section's values as plain data; `with_scenarios`: also the scenarios' settings
        (the `scenarios:` section's shape) for a process that rebuilds the params with `from_dict`."""
        out = {f.name: asdict(self.tracker) if f.name == "tracker" else getattr(self, f.name)
               for f in fields(self) if f.name != "scenarios"}
        if with_scenarios:
            out["scenarios"] = ScenariosSection(self.scenarios).to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AnalysisParams:
        """Build from the yaml mapping; unknown keys are an error naming their section (no silent typo)."""
        d = dict(d or {})
        tracker = from_section(TrackerParams, d.pop("tracker", {}), "analysis.tracker")
        if "rules" in d:
            raise ValueError("analysis.rules: the scenarios' rule parameters moved to the `scenarios:` section "
                             "(scenarios.<name>.<key>; `cityloop scenarios list` shows them)")
        scenarios = d.pop("scenarios", None)  # to_dict(with_scenarios=True): another process's settings
        top = from_section(cls, d, "analysis")
        top.tracker = tracker
        if scenarios is not None:
            top.scenarios = scenario_settings(scenarios)
        return top


def analysis_params(root: Path) -> AnalysisParams:
    """params.yaml `analysis:` (defaults where it has none), with the `scenarios:` section's settings."""
    p = load_section(root, "analysis", AnalysisParams)
    p.scenarios = scenario_settings(load_params(root).get("scenarios"))
    return p


def store_url(root: Path, db: str | None = None) -> str:
    """--db, else params `analysis.db` with {root} filled in."""
    from cityloop.analysis.store import default_url

    return default_url(root, db or analysis_params(root).db)
