"""The `schedule:` section of params.yaml: slots, horizon, node budgets, where plans live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cityloop.core.settings import from_section


@dataclass
class ScheduleParams:
    """What `cityloop schedule plan | apply` and the `replan` flow read from params.yaml `schedule:`."""

    slot_min: int = 60  # one plan row per slot; must divide a day (1440 min)
    horizon_h: int = 24  # the plan covers this many hours (a multiple of 24) and then repeats day by day
    default_budget_fps: float = 4.0  # a node's frames/s when neither params nor its status give one
    headroom: float = 0.8  # a measured budget: this share of 1000 / the node's p50 latency (ms per frame)
    budget_step: float = 0.5  # measured budgets are floored to this step (noise makes no new plan version)
    nodes: dict[str, Any] = field(default_factory=dict)  # node -> budget fps (null: measured / default)
    cameras: str = "data/raw/field-video"  # stream folder whose cameras.json lists the cameras (or --streams)
    forecast: dict[str, Any] = field(default_factory=dict)  # camera id or district -> condition, or a list of
    #   {hours: [from, to], condition: rain}: the expected weather/light (default: the camera's cameras.json one)
    model: str = "cityloop-detector"  # cityloop's own model: its production version (else its latest) serves
    partners: bool = True  # admitted partner models may serve scenarios cityloop's model does not cover
    serve: dict[str, str] = field(default_factory=dict)  # scenario -> model version pinned to serve it
    store: str = ".cityloop/schedule"  # plan-vN.json, current, applied (relative to the workspace)
    cron: str = "0 * * * *"  # the Prefect deployment `replan/hourly`

    @classmethod
    def from_dict(cls, d: dict | None) -> ScheduleParams:
        p = from_section(cls, d, "schedule")
        if p.slot_min <= 0 or 1440 % p.slot_min:
            raise ValueError(f"schedule.slot_min: must divide a day (1440 minutes), got {p.slot_min}")
        if p.horizon_h <= 0 or p.horizon_h % 24:
            raise ValueError(f"schedule.horizon_h: a multiple of 24 (the plan repeats day by day), got {p.horizon_h}")
        if p.default_budget_fps <= 0:
            raise ValueError(f"schedule.default_budget_fps: must be > 0, got {p.default_budget_fps}")
        if not 0 < p.headroom <= 1:
            raise ValueError(f"schedule.headroom: must be in (0, 1], got {p.headroom}")
        if p.budget_step <= 0:
            raise ValueError(f"schedule.budget_step: must be > 0, got {p.budget_step}")
        for name, budget in p.nodes.items():
            if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float)
                                       or budget <= 0):
                raise ValueError(f"schedule.nodes.{name}: a budget in frames/s > 0 (or null: measured), "
                                 f"got {budget!r}")
        return p
