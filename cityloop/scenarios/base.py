"""What a scenario is: its object classes, how the simulator draws and stages them, its rule, its
parameters, the windows in which it is active, its zones and its alert text.

A scenario is one module under `cityloop.scenarios.units` (or a plugin, see `cityloop.scenarios`)
that defines one `Scenario`. Everything else (the class list, the detector's head, the gate's
required classes, Label Studio's label config, the annotators' confusions, the rules the engine
runs, the report's rows) derives from the registered scenarios.

The rule side works on plain track data (`Track`, `Observation`), so a rule needs nothing from the
tracker that builds them (cityloop.analysis.tracker) and this package stays on the ground floor.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cityloop.core.geometry import Box


class ScenarioError(ValueError):
    """A scenario definition or setting that cannot be used; the message names the scenario and the key."""


# ------------------------------------------------------------------------------------ tracks


@dataclass
class Det:
    """One detection of one frame."""

    box: Box
    score: float
    cls: str


@dataclass
class Observation:
    ts: float
    box: Box
    cls: str
    score: float


@dataclass
class Track:
    """One object followed over frames; `history` holds its recent observations."""

    track_id: int
    family: str
    history: deque = field(default_factory=lambda: deque(maxlen=256))
    first_ts: float = 0.0
    last_ts: float = 0.0
    velocity: tuple[float, float] = (0.0, 0.0)  # px/s of the box centre

    @property
    def box(self) -> Box:
        return self.history[-1].box

    @property
    def cls(self) -> str:
        return self.history[-1].cls

    def predict(self, ts: float) -> Box:
        """Where the box should be at ts (constant velocity)."""
        dt = ts - self.last_ts
        x0, y0, x1, y1 = self.box
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        return Box(x0 + dx, y0 + dy, x1 + dx, y1 + dy)

    def since(self, ts: float) -> list[Observation]:
        """Observations at or after ts."""
        return [o for o in self.history if o.ts >= ts]

    def held(self, ts: float, t: float) -> bool:
        """The track has lived at least t seconds (a little slack for frame spacing)."""
        return ts - self.first_ts >= t - 1e-6


def visible_times(frames: Sequence[Mapping[str, Any]]) -> dict[int, list[float]]:
    """track id -> the clip times (s) of the rendered frames it is visible in (the simulator's per-frame truth)."""
    seen: dict[int, list[float]] = {}
    for fr in frames:
        for tid in fr["centres"]:
            seen.setdefault(tid, []).append(fr["t"])
    return seen


def ground(b: Sequence[float]) -> tuple[float, float]:
    """The ground point of an object: its box's bottom centre."""
    return (b[0] + b[2]) / 2, b[3]


# ------------------------------------------------------------------------------------ rules


@dataclass
class Candidate:
    """The condition of `scenario` holds at `ts` for subject `key` (a track, a crowd)."""

    scenario: str
    key: str
    since_ts: float  # when the condition (or its subject) began: the event's start
    boxes: list[Box]
    score: float
    velocity: tuple[float, float] = (0.0, 0.0)
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. a crossing's direction, a crowd's form


@dataclass
class CameraContext:
    """What a rule knows of one camera besides its tracks: zones, frame size, its own memory."""

    camera_id: str
    zones: Any  # cityloop.scenarios.zones.CameraZones
    frame_area: float = 192.0 * 192.0
    condition: str | None = None  # the camera's current weather/light (None: unknown)
    memory: dict[str, Any] = field(default_factory=dict)  # per-scenario state (crowds, crossings seen)


Rule = Callable[[list[Track], float, Any, CameraContext], list[Candidate]]


def per_track(fn: Callable[[Track, float, Any, CameraContext], Candidate | None]) -> Rule:
    """A rule from a function of one track (most rules)."""
    @functools.wraps(fn)
    def rule(seen: list[Track], ts: float, p: Any, ctx: CameraContext) -> list[Candidate]:
        return [c for tr in seen if (c := fn(tr, ts, p, ctx)) is not None]
    return rule


def dwell(tr: Track, ts: float, family: str, scenario: str, t: float) -> Candidate | None:
    """A track of `family` that has persisted at least t seconds."""
    if tr.family != family or not tr.held(ts, t):
        return None
    obs = tr.since(ts - t)
    return Candidate(scenario, f"t{tr.track_id}", tr.first_ts, [tr.box], sum(o.score for o in obs) / len(obs))


# ------------------------------------------------------------------------------------ windows


def local_hour(ts: float) -> float:
    """Hour of day (0..24) of unix time ts. Camera clocks are UTC in the simulator; a site with
    another timezone sets its cameras' `start_ts` with its offset (ISO), which the stream keeps."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.hour + dt.minute / 60 + dt.second / 3600


@dataclass(frozen=True)
class Window:
    """When a scenario is active: hours of the day [from, to) (wrapping midnight) and/or conditions.

    `hours=None`: any hour; `conditions=()`: any weather/light (an unknown condition counts as any)."""

    hours: tuple[float, float] | None = None
    conditions: tuple[str, ...] = ()

    def contains(self, hour: float, condition: str | None) -> bool:
        if self.hours is not None:
            lo, hi = self.hours
            if not (lo <= hour < hi if lo < hi else hour >= lo or hour < hi):
                return False
        return not self.conditions or condition is None or condition in self.conditions

    def spans(self) -> list[tuple[float, float]]:
        """The hour intervals covered, split at midnight."""
        if self.hours is None:
            return [(0.0, 24.0)]
        lo, hi = self.hours
        return [(lo, hi)] if lo < hi else [(lo, 24.0), (0.0, hi)]

    def describe(self) -> str:
        hours = "any hour" if self.hours is None else f"{self.hours[0]:g}h-{self.hours[1]:g}h"
        return hours + (f" in {'/'.join(self.conditions)}" if self.conditions else "")

    def to_dict(self) -> dict[str, Any]:
        return {"hours": list(self.hours) if self.hours else None, "conditions": list(self.conditions)}


def parse_windows(spec: Any, where: str, conditions: Sequence[str]) -> tuple[Window, ...]:
    """`[{hours: [from, to], conditions: [...]}, ...]` -> windows; overlapping windows are refused
    (two windows that cover the same hour in the same condition say one thing twice, or a typo)."""
    if spec is None:
        return ()
    if not isinstance(spec, list | tuple):
        raise ScenarioError(f"{where}: expected a list of {{hours: [from, to], conditions: [...]}}, got {spec!r}")
    out = []
    for i, w in enumerate(spec):
        at = f"{where}[{i}]"
        if isinstance(w, Window):
            out.append(w)
            continue
        if not isinstance(w, Mapping) or set(w) - {"hours", "conditions"}:
            raise ScenarioError(f"{at}: expected {{hours: [from, to], conditions: [...]}}, got {w!r}")
        hours = w.get("hours")
        if hours is not None:
            if (not isinstance(hours, list | tuple) or len(hours) != 2
                    or not all(isinstance(h, int | float) and 0 <= h <= 24 for h in hours) or hours[0] == hours[1]):
                raise ScenarioError(f"{at}.hours: expected [from, to] with 0 <= hour <= 24 and from != to, "
                                    f"got {hours!r}")
            hours = (float(hours[0]), float(hours[1]))
        conds = tuple(w.get("conditions") or ())
        unknown = [c for c in conds if c not in conditions]
        if unknown:
            raise ScenarioError(f"{at}.conditions: unknown {unknown} (known: {', '.join(conditions)})")
        out.append(Window(hours, conds))
    for i, a in enumerate(out):
        for j, b in enumerate(out[:i]):
            same_weather = not a.conditions or not b.conditions or set(a.conditions) & set(b.conditions)
            if same_weather and any(lo1 < hi2 and lo2 < hi1 for lo1, hi1 in a.spans() for lo2, hi2 in b.spans()):
                raise ScenarioError(f"{where}[{i}]: overlaps {where}[{j}] ({a.describe()} and {b.describe()})")
    return tuple(out)


def active(windows: Sequence[Window], ts: float, condition: str | None) -> bool:
    """Whether a scenario with these windows is active at ts (no windows: always)."""
    if not windows:
        return True
    hour = local_hour(ts)
    return any(w.contains(hour, condition) for w in windows)


# ------------------------------------------------------------------------------------ zones


@dataclass(frozen=True)
class ZoneKind:
    """A kind of zone a scenario's rule reads from the camera's configuration.

    shape "polygon": `[x0, y0, x1, y1]` or `[[x, y], ...]`, a list of them allowed; a camera with no zone
    of this kind means the whole frame (`default_whole=True`) or nowhere.
    shape "line": `{line: [[x, y], [x, y]], gate: [x0, y0, x1, y1]}`: crossings from the line's left to
    its right (walking from its first point to its second) are "in", the others "out"; crossings whose
    ground point lies in the gate rectangle are the allowed way through.
    """

    name: str
    shape: str = "polygon"  # polygon | line
    default_whole: bool = True
    doc: str = ""


# ------------------------------------------------------------------------------------ simulation


@dataclass(frozen=True)
class ObjectClass:
    """One detector class: how the simulator draws it and places it in still frames.

    `draw(img, obj, lights, cond, sky) -> box` draws in place (RGB uint8) and returns the object's
    box; `attrs(rng) -> dict` fixes its look (so it redraws identically in every frame of a clip).
    """

    name: str
    draw: Callable[..., Sequence[float]]
    attrs: Callable[[np.random.Generator], dict]
    family: str = ""  # classes a detector may flip between share a family (one track); default: the name
    where: str = "any"  # still frames: road | walk | any
    rate: float = 0.5  # mean objects per still frame (Poisson)
    rate_by_condition: Mapping[str, float] = field(default_factory=dict)  # overrides of `rate`
    extent: tuple[float, float] = (0.5, 1.0)  # half-width and height in person-heights (placement)
    confused_with: str | None = None  # what an annotator labels it as when they flip its class
    flat: bool = False  # lies on the ground and is drawn under everything else (a puddle)
    adapt: Callable[..., None] | None = None  # adapt(attrs, cam, rng): a look that depends on the camera
    unboxed: str = ""  # what the drawing holds outside the box, unlabeled (a clothesline's poles); "" = nothing
    # Where in its box (x, y as fractions of width and height) the cue lies that tells this class from the
    # other classes of its family (a rider's head: helmet or hair). Classes of one family that declare a cue
    # are one detector class plus an attribute read at that point (cityloop.models' Detector, `cue_groups`).
    cue: tuple[float, float] | None = None

    @property
    def track_family(self) -> str:
        return self.family or self.name


@dataclass(frozen=True)
class ClipSpec:
    """A clip that shows a scenario (or its confusers): the contract test and demos render these."""

    condition: str
    hour: float
    rates: Mapping[str, float]
    seconds: float = 60.0
    cameras: int = 2
    seed: int = 0
    sites: tuple[str, ...] = ()  # sites (zone kinds) every camera of the clip must have


# ------------------------------------------------------------------------------------ the unit


@dataclass(frozen=True)
class Scenario:
    """One city scenario: classes, simulation, rule, parameters, windows, zones and alert text."""

    name: str
    title: str  # a human name: "E-bike rider without helmet"
    agency: str  # who acts on it: traffic police | city management | roads | public health
    kind: str  # the rule's kind, for people: "attribute k of n", "zone dwell", "line crossing", ...
    alert: str  # alert text, str.format'ed with the event's fields: {camera_id} {district} {score} ...
    rule: Rule
    params: type  # a dataclass of the rule's parameters (params.yaml `scenarios.<name>.<key>`)
    classes: tuple[ObjectClass, ...] = ()  # the classes this unit defines
    uses: tuple[str, ...] = ()  # classes (defined by this or another unit) the rule reads
    windows: tuple[Window, ...] = ()  # when it is active (none: always)
    zones: tuple[ZoneKind, ...] = ()
    rates: Mapping[str, float] = field(default_factory=dict)  # simulator clip rates (events per minute)
    plan: Callable[..., None] | None = None  # plan(planner, rates): stage the clip's actors
    truth: Callable[..., list[dict]] | None = None  # truth(cam, actors, frames) -> events; default: visibility
    site: Callable[..., dict] | None = None  # site(cam, rng) -> {zone kind: config} for a simulated camera
    scenery: Callable[..., None] | None = None  # scenery(img, cam, rng): unlabeled confusers in the background
    positive: ClipSpec | None = None  # a clip in which the rule must fire
    confuser: ClipSpec | None = None  # a clip of look-alikes in which it must stay silent
    fps: float = 2.0  # frames per second its rule needs (the scheduler samples cameras at this rate)
    min_fps: float = 0.5  # the least it can work with (a dwell of minutes needs little)
    priority: int = 1  # the scheduler drops lower priorities first when a node is full

    def describe_windows(self) -> str:
        return ", ".join(w.describe() for w in self.windows) or "always"
