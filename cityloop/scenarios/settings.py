"""params.yaml `scenarios:`: each scenario's rule parameters, windows and whether it runs.

    scenarios:
      helmetless_rider: {k: 3, n: 5}
      street_vending: {t_s: 4.0, windows: [{hours: [17, 6]}]}
      clothes_drying: {enabled: false}

A scenario not named keeps its unit's defaults. Unknown scenarios and keys are errors naming
`scenarios.<name>.<key>`; so are windows that overlap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cityloop.core.settings import from_section
from cityloop.scenarios import CONDITIONS, Registry, registry
from cityloop.scenarios.base import Scenario, ScenarioError, Window, parse_windows


@dataclass
class ScenarioConfig:
    """One scenario as configured: its unit, its rule's parameters, its windows, on or off."""

    scenario: Scenario
    params: Any
    windows: tuple[Window, ...]
    enabled: bool = True

    @property
    def name(self) -> str:
        return self.scenario.name


def scenario_settings(section: dict[str, Any] | None = None, reg: Registry | None = None) -> dict[str, ScenarioConfig]:
    """Every registered scenario's configuration, the section's overrides applied."""
    reg = reg or registry()
    section = dict(section or {})
    unknown = [k for k in section if k not in reg.scenarios]
    if unknown:
        raise ScenarioError(f"scenarios: unknown scenario(s) {unknown} (registered: {', '.join(reg.scenarios)})")
    out = {}
    for name, sc in reg.scenarios.items():
        d = section.get(name) or {}
        if not isinstance(d, dict):
            raise ScenarioError(f"scenarios.{name}: expected a mapping of parameters, got {d!r}")
        d = dict(d)
        windows = parse_windows(d.pop("windows"), f"scenarios.{name}.windows", CONDITIONS) if "windows" in d \
            else sc.windows
        enabled = d.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ScenarioError(f"scenarios.{name}.enabled: expected true or false, got {enabled!r}")
        try:
            params = from_section(sc.params, d, f"scenarios.{name}")
        except ValueError as exc:
            raise ScenarioError(str(exc)) from exc
        out[name] = ScenarioConfig(sc, params, windows, enabled)
    return out


@dataclass
class ScenariosSection:
    """params.yaml `scenarios:` as `cityloop params check | show` read it (through `scenario_settings`)."""

    settings: dict[str, ScenarioConfig]

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ScenariosSection:
        return cls(scenario_settings(d))

    def to_dict(self) -> dict[str, Any]:
        """Each scenario's effective parameters, windows and switch (params.yaml's shape)."""
        return {name: {**asdict(c.params), "windows": [w.to_dict() for w in c.windows], "enabled": c.enabled}
                for name, c in self.settings.items()}
