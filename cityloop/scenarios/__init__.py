"""The registered city scenarios: each one a unit, everything else derived from them.

Built-in units are the modules of `cityloop.scenarios.units`, found by listing the package (a new
module there is a new scenario: nothing else to edit), in the order of each module's `ORDER`.
Plugins come after them, in the order given: the `cityloop.scenarios` entry-point group of installed
packages, then `$CITYLOOP_SCENARIOS` (comma-separated `module` or `module:attribute`; a module's
attribute defaults to `SCENARIO`). The order fixes the class list, and with it the COCO category ids
and the detector's outputs: a new scenario's classes come after every existing one, never between.

    from cityloop.scenarios import registry
    reg = registry()
    reg.classes          # ('rider_helmet', 'rider_no_helmet', 'car', ...)
    reg.scenarios["illegal_parking"].title
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, is_dataclass
from functools import cache, cached_property
from importlib.metadata import entry_points

from cityloop.scenarios.base import (
    ClipSpec,
    ObjectClass,
    Scenario,
    ScenarioError,
    Window,
    ZoneKind,
    parse_windows,
)

CONDITIONS = ("day", "dusk", "night", "rain", "fog")  # governance.schema.CONDITIONS: the frames' conditions
ENV = "CITYLOOP_SCENARIOS"
ENTRY_POINTS = "cityloop.scenarios"


@dataclass(frozen=True)
class Registry:
    """The scenarios in order, and what derives from them."""

    scenarios: dict[str, Scenario]

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(self.scenarios)

    @cached_property
    def object_classes(self) -> dict[str, ObjectClass]:
        return {c.name: c for sc in self.scenarios.values() for c in sc.classes}

    @cached_property
    def classes(self) -> tuple[str, ...]:
        """Detector classes; COCO category ids are 1-based in this order."""
        return tuple(self.object_classes)

    @cached_property
    def category_ids(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.classes)}

    @cached_property
    def families(self) -> dict[str, str]:
        """class -> track family (classes a detector may flip between share one)."""
        return {c.name: c.track_family for c in self.object_classes.values()}

    @cached_property
    def confusions(self) -> dict[str, str]:
        """class -> what an annotator labels it as when they flip it."""
        return {c.name: c.confused_with for c in self.object_classes.values() if c.confused_with}

    @cached_property
    def cue_groups(self) -> tuple[tuple[tuple[int, ...], tuple[float, float]], ...]:
        """Families whose classes declare a `cue`: (their class indices, the cue point in the box), in
        class order. A detector predicts each group as one class and tells its members apart at the cue."""
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(self.object_classes.values()):
            if c.cue is not None:
                groups.setdefault(c.track_family, []).append(i)
        classes = list(self.object_classes.values())
        return tuple((tuple(ix), classes[ix[0]].cue) for ix in groups.values())

    @cached_property
    def zone_kinds(self) -> dict[str, tuple[str, ZoneKind]]:
        """zone kind -> (the scenario that declares it, its spec)."""
        return {z.name: (sc.name, z) for sc in self.scenarios.values() for z in sc.zones}

    @cached_property
    def rates(self) -> dict[str, float]:
        """The simulator's clip rates of every unit (events per minute), by key."""
        return {k: v for sc in self.scenarios.values() for k, v in sc.rates.items()}

    def object_class(self, name: str) -> ObjectClass:
        return self.object_classes[name]

    def order(self, name: str) -> int:
        return self.names.index(name)

    def get(self, name: str) -> Scenario:
        try:
            return self.scenarios[name]
        except KeyError:
            raise ScenarioError(f"unknown scenario {name!r} (registered: {', '.join(self.scenarios)})") from None


def validate(scenarios: list[Scenario]) -> Registry:
    """A registry from scenarios in order; any inconsistency is a ScenarioError naming the scenario and key."""
    seen: dict[str, Scenario] = {}
    classes: dict[str, str] = {}
    rates: dict[str, str] = {}
    kinds: dict[str, str] = {}
    for sc in scenarios:
        if not isinstance(sc, Scenario):
            raise ScenarioError(f"{sc!r}: not a cityloop.scenarios.base.Scenario")
        at = f"scenario {sc.name}"
        if not sc.name.isidentifier():
            raise ScenarioError(f"{at}: name must be an identifier (snake_case)")
        if sc.name in seen:
            raise ScenarioError(f"{at}: registered twice")
        for c in sc.classes:
            if c.name in classes:
                raise ScenarioError(f"{at}: classes: {c.name!r} is already defined by scenario {classes[c.name]}")
            if c.where not in ("road", "walk", "any"):
                raise ScenarioError(f"{at}: classes.{c.name}.where: {c.where!r} is not road, walk or any")
            classes[c.name] = sc.name
        for k in sc.rates:
            if k in rates:
                raise ScenarioError(f"{at}: rates.{k}: already a rate of scenario {rates[k]}")
            rates[k] = sc.name
        for z in sc.zones:
            if z.name in kinds:
                raise ScenarioError(f"{at}: zones.{z.name}: already a zone kind of scenario {kinds[z.name]}")
            if z.shape not in ("polygon", "line"):
                raise ScenarioError(f"{at}: zones.{z.name}.shape: {z.shape!r} is not polygon or line")
            kinds[z.name] = sc.name
        if not is_dataclass(sc.params):
            raise ScenarioError(f"{at}: params: expected a dataclass of the rule's parameters")
        parse_windows(list(sc.windows), f"{at}: windows", CONDITIONS)
        if not 0 < sc.min_fps <= sc.fps:
            raise ScenarioError(f"{at}: fps/min_fps: need 0 < min_fps <= fps, got {sc.min_fps} and {sc.fps}")
        seen[sc.name] = sc
    known = set(classes)
    cues: dict[str, list[tuple[str, tuple[float, float]]]] = {}
    for sc in scenarios:
        for c in sc.classes:
            if c.cue is not None:
                cues.setdefault(c.track_family, []).append((c.name, c.cue))
    for fam, members in cues.items():
        if len({cue for _, cue in members}) > 1 or len(members) < 2:
            raise ScenarioError(f"family {fam}: a cue tells two or more classes of one family apart at one point; "
                                f"got {members}")
    for sc in scenarios:
        at = f"scenario {sc.name}"
        for c in sc.uses:
            if c not in known:
                raise ScenarioError(f"{at}: uses: unknown class {c!r} (known: {', '.join(classes)})")
        for c in sc.classes:
            if c.cue is not None and not all(0.0 <= v <= 1.0 for v in c.cue):
                raise ScenarioError(f"{at}: classes.{c.name}.cue: {c.cue} is not a point inside the box (0..1, 0..1)")
            if c.confused_with and c.confused_with not in known:
                raise ScenarioError(f"{at}: classes.{c.name}.confused_with: unknown class {c.confused_with!r}")
        for label, clip in (("positive", sc.positive), ("confuser", sc.confuser)):
            if clip is None:
                continue
            bad = [k for k in clip.rates if k not in rates]
            if bad:
                raise ScenarioError(f"{at}: {label}.rates: unknown {bad} (known: {', '.join(rates)})")
            if clip.condition not in CONDITIONS:
                raise ScenarioError(f"{at}: {label}.condition: {clip.condition!r} is not one of {CONDITIONS}")
            bad_sites = [s for s in clip.sites if s not in kinds]
            if bad_sites:
                raise ScenarioError(f"{at}: {label}.sites: unknown zone kinds {bad_sites}")
    return Registry(seen)


def _builtin() -> list[Scenario]:
    from cityloop.scenarios import units

    mods = [importlib.import_module(f"{units.__name__}.{m.name}") for m in pkgutil.iter_modules(units.__path__)
            if not m.name.startswith("_")]
    mods.sort(key=lambda m: (getattr(m, "ORDER", 1000), m.__name__))
    return [m.SCENARIO for m in mods]


def _load(spec: str, where: str) -> Scenario:
    mod, _, attr = spec.strip().partition(":")
    try:
        obj = getattr(importlib.import_module(mod), attr or "SCENARIO")
    except (ImportError, AttributeError) as exc:
        raise ScenarioError(f"{where}: cannot load scenario {spec!r}: {exc}") from exc
    return obj


def _plugins() -> list[Scenario]:
    out = [ep.load() for ep in sorted(entry_points(group=ENTRY_POINTS), key=lambda e: e.name)]
    out += [_load(s, f"${ENV}") for s in os.environ.get(ENV, "").split(",") if s.strip()]
    return out


@cache
def registry() -> Registry:
    """The registered scenarios (built-ins, then plugins), validated once per process."""
    return validate(_builtin() + _plugins())


__all__ = ["CONDITIONS", "ClipSpec", "ObjectClass", "Registry", "Scenario", "ScenarioError", "Window", "ZoneKind",
           "registry", "validate"]
