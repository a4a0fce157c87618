"""The scenarios' rules over a camera's tracks. A rule returns *candidates* (the condition holds now
for a subject); `analysis.engine` turns candidates into deduplicated events.

Each rule lives in its scenario's unit (cityloop.scenarios.units.*, `cityloop scenarios list` shows
them); this module runs the ones that apply to a camera at a time: enabled in params.yaml
`scenarios:`, inside the scenario's windows (hours, weather) and, when a schedule is applied,
assigned to the camera.
"""

from __future__ import annotations

from collections.abc import Collection

from cityloop.scenarios.base import CameraContext, Candidate, Track, active
from cityloop.scenarios.settings import ScenarioConfig

__all__ = ["CameraContext", "Candidate", "evaluate_rules", "runnable"]


def runnable(settings: dict[str, ScenarioConfig], ts: float, condition: str | None,
             only: Collection[str] | None = None) -> list[ScenarioConfig]:
    """The scenarios to evaluate at ts: enabled, in their windows, and in `only` when given (a schedule)."""
    return [c for c in settings.values() if c.enabled and (only is None or c.name in only)
            and active(c.windows, ts, condition)]


def evaluate_rules(seen: list[Track], ts: float, settings: dict[str, ScenarioConfig], ctx: CameraContext,
                   only: Collection[str] | None = None) -> list[Candidate]:
    """Every applicable scenario's rule over the tracks seen in this frame."""
    out: list[Candidate] = []
    for c in runnable(settings, ts, ctx.condition, only):
        out += c.scenario.rule(seen, ts, c.params, ctx)
    return out
