"""The schedule plan: pure functions from inputs (cameras, nodes, models, scenario settings) to a `Plan`.

For each time slot of the day, each camera's *active* scenarios are those enabled, watched by the
camera, inside their windows (hours overlapping the slot, the camera's expected condition in it) and
served by a model version (one whose classes cover the scenario's `uses`; cityloop's own preferred,
partners allowed). A camera needs max(fps of its active scenarios) frames per second (never more than
its stream delivers); a camera with nothing active gets no task. Cameras are packed onto nodes,
largest demand first, each onto the least-loaded node that fits (the node it had in the previous slot
when that one fits: a stream stays put). Where a node's demand exceeds its budget, its cameras'
rates are degraded toward their scenarios' `min_fps`; if even that does not fit, the lowest-priority
scenarios whose removal frees budget are dropped, and each drop is recorded as unserved, with its
reason. Nothing here reads files: `inputs.py` gathers the inputs, `store.py` keeps the versions.

What a node does with a plan is at the end: `assignment_for(plan, node)` (the scenarios to run on a
camera at a time, for `Analyzer(assignment=...)`), `Sampler` (which frames to process), and
`NodeSchedule`, which bundles both with the counts a node reports.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cityloop.scenarios.base import ScenarioError, Window, local_hour, parse_windows

OWN_VENDOR = "cityloop"  # cityloop.models.store.OWN_VENDOR (this module stays free of the repository's imports)
STAGE_RANK = {"production": 0, "staging": 1, "candidate": 2}  # retired versions never serve
EPS = 1e-9


class ScheduleError(ValueError):
    """An input the planner cannot use; the message names the camera, node, scenario or model."""


# ------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class CameraSpec:
    """A camera to plan: where it is, what weather/light to expect, what its stream delivers.

    `forecast`: (from_hour, to_hour, condition) spans overriding `condition` (hours wrap midnight).
    `scenarios`: the scenarios this camera is installed for (None: every scenario).
    `zones`: the zone kinds configured for it (a scenario whose zone has no whole-frame default, such
    as a checkpoint line, runs only where one is configured)."""

    camera_id: str
    district: str | None = None
    condition: str | None = None
    forecast: tuple[tuple[float, float, str], ...] = ()
    fps: float | None = None  # the stream's frame rate (None: unknown, no cap)
    scenarios: tuple[str, ...] | None = None
    zones: tuple[str, ...] = ()

    def condition_at(self, hour: float) -> str | None:
        for lo, hi, cond in self.forecast:
            if (lo <= hour < hi) if lo < hi else (hour >= lo or hour < hi):
                return cond
        return self.condition


@dataclass(frozen=True)
class NodeSpec:
    """An edge node and the frames per second it can infer (`source`: params, measured or default)."""

    name: str
    budget_fps: float
    source: str = "params"


@dataclass(frozen=True)
class ScenarioSpec:
    """What the planner needs of a scenario: its windows, frame rates, priority and classes."""

    name: str
    windows: tuple[Window, ...] = ()
    fps: float = 1.0
    min_fps: float = 0.5
    priority: int = 1
    uses: tuple[str, ...] = ()
    enabled: bool = True
    requires: tuple[str, ...] = ()  # zone kinds a camera must have configured (no whole-frame default)

    @classmethod
    def from_config(cls, cfg: Any) -> ScenarioSpec:
        """From a cityloop.scenarios.settings.ScenarioConfig (params.yaml applied to the unit)."""
        sc = cfg.scenario
        return cls(sc.name, tuple(cfg.windows), float(sc.fps), float(sc.min_fps), int(sc.priority),
                   tuple(sc.uses), bool(cfg.enabled), tuple(z.name for z in sc.zones if not z.default_whole))

    def applies_to(self, cam: CameraSpec) -> bool:
        """Enabled, one of the camera's scenarios, and the camera has the zones it needs."""
        return self.enabled and (cam.scenarios is None or self.name in cam.scenarios) \
            and set(self.requires) <= set(cam.zones)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "windows": [w.to_dict() for w in self.windows], "fps": self.fps,
                "min_fps": self.min_fps, "priority": self.priority, "uses": list(self.uses), "enabled": self.enabled,
                "requires": list(self.requires)}


@dataclass(frozen=True)
class ModelSpec:
    """A registered model version the planner may pick: its platform classes, vendor and stage."""

    id: str
    classes: tuple[str, ...]
    vendor: str = OWN_VENDOR
    stage: str = "candidate"

    @property
    def own(self) -> bool:
        return self.vendor == OWN_VENDOR

    def covers(self, scenario: ScenarioSpec) -> bool:
        return set(scenario.uses) <= set(self.classes)


@dataclass
class Inputs:
    """Everything a plan depends on; its digest decides whether a re-plan is a new version."""

    cameras: list[CameraSpec]
    nodes: list[NodeSpec]
    scenarios: list[ScenarioSpec]
    models: list[ModelSpec] = field(default_factory=list)
    serve: dict[str, str] = field(default_factory=dict)  # scenario -> pinned model id
    slot_min: int = 60
    horizon_h: int = 24
    partners: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"cameras": [asdict(c) for c in sorted(self.cameras, key=lambda c: c.camera_id)],
                "nodes": [asdict(n) for n in sorted(self.nodes, key=lambda n: n.name)],
                "scenarios": [s.to_dict() for s in self.scenarios],
                "models": [asdict(m) for m in sorted(self.models, key=lambda m: m.id)],
                "serve": dict(sorted(self.serve.items())), "slot_min": self.slot_min, "horizon_h": self.horizon_h,
                "partners": self.partners}

    def digest(self) -> str:
        """sha256 of the inputs (the plan's start is left out: a plan repeats day by day)."""
        return digest(self.to_dict())


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def validate(inp: Inputs) -> None:
    """Refuse inputs the planner cannot use, naming the culprit."""
    known = {s.name for s in inp.scenarios}
    if inp.slot_min <= 0 or 1440 % inp.slot_min:
        raise ScheduleError(f"slot_min: must divide a day (1440 minutes), got {inp.slot_min}")
    if inp.horizon_h <= 0 or inp.horizon_h % 24:
        raise ScheduleError(f"horizon_h: a multiple of 24, got {inp.horizon_h}")
    if not inp.nodes:
        raise ScheduleError("no edge nodes to plan for (start one with `cityloop edge start`, or list them in "
                            "params.yaml schedule.nodes)")
    seen: set[str] = set()
    for n in inp.nodes:
        if n.name in seen:
            raise ScheduleError(f"node {n.name}: listed twice")
        seen.add(n.name)
        if not (isinstance(n.budget_fps, int | float) and math.isfinite(n.budget_fps) and n.budget_fps > 0):
            raise ScheduleError(f"node {n.name}: budget must be > 0 frames/s, got {n.budget_fps!r}")
    cams: set[str] = set()
    for c in inp.cameras:
        if c.camera_id in cams:
            raise ScheduleError(f"camera {c.camera_id}: listed twice")
        cams.add(c.camera_id)
        if c.fps is not None and c.fps <= 0:
            raise ScheduleError(f"camera {c.camera_id}: stream fps must be > 0, got {c.fps}")
        bad = [s for s in (c.scenarios or ()) if s not in known]
        if bad:
            raise ScheduleError(f"camera {c.camera_id}: scenarios: unknown {bad} (registered: {', '.join(known)})")
    for s in inp.scenarios:
        if not 0 < s.min_fps <= s.fps:
            raise ScheduleError(f"scenario {s.name}: need 0 < min_fps <= fps, got {s.min_fps} and {s.fps}")
    models = {m.id for m in inp.models}
    for sc, mid in inp.serve.items():
        if sc not in known:
            raise ScheduleError(f"serve.{sc}: unknown scenario (registered: {', '.join(known)})")
        if mid not in models:
            raise ScheduleError(f"serve.{sc}: model {mid!r} is not a serving version of the repository "
                                f"(candidates: {', '.join(sorted(models)) or 'none'})")


# ------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Task:
    """Run `scenarios` on `camera` at `fps` on `node` with `model` during one slot."""

    camera: str
    node: str
    scenarios: tuple[str, ...]
    model: str | None
    fps: float
    need_fps: float  # what the scenarios ask for (fps < need_fps: degraded)

    @property
    def degraded(self) -> bool:
        return self.fps < self.need_fps - 1e-6


@dataclass(frozen=True)
class Unserved:
    """A (camera, scenario) active in a slot that no task runs, and why."""

    camera: str
    scenario: str
    reason: str


@dataclass
class Slot:
    index: int
    start: str  # ISO, UTC
    end: str
    tasks: list[Task] = field(default_factory=list)
    unserved: list[Unserved] = field(default_factory=list)

    def load(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in self.tasks:
            out[t.node] = round(out.get(t.node, 0.0) + t.fps, 4)
        return out


@dataclass
class Plan:
    """A versioned plan: per slot the tasks `{camera, node, scenarios, model, fps}` and what is unserved."""

    start: str  # ISO UTC: slot 0 begins here; the plan repeats every `horizon_h` hours
    slot_min: int
    horizon_h: int
    nodes: dict[str, dict[str, Any]]  # name -> {budget_fps, source}
    models: dict[str, dict[str, Any] | None]  # scenario -> {id, vendor, stage} (None: unserved / any)
    slots: list[Slot]
    inputs_digest: str
    version: int | None = None  # set by the store
    created: str | None = None
    parent: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"v{self.version}" if self.version is not None else "unsaved"

    @property
    def start_ts(self) -> float:
        return datetime.fromisoformat(self.start).timestamp()

    def content(self) -> dict[str, Any]:
        """What the plan says, without its bookkeeping (version, created, parent)."""
        d = self.to_dict()
        for k in ("version", "created", "parent", "digest"):
            d.pop(k, None)
        return d

    def content_digest(self) -> str:
        return digest(self.content())

    def slot_at(self, ts: float) -> Slot:
        """The slot covering unix time ts (the plan repeats every horizon; ts before start wraps too)."""
        span = self.horizon_h * 3600.0
        return self.slots[int(((ts - self.start_ts) % span) // (self.slot_min * 60.0)) % len(self.slots)]

    def tasks_of(self, node: str) -> list[tuple[int, Task]]:
        return [(s.index, t) for s in self.slots for t in s.tasks if t.node == node]

    def for_node(self, node: str) -> Plan:
        """The same plan with only `node`'s tasks (what `apply` writes into the node's folder)."""
        slots = [Slot(s.index, s.start, s.end, [t for t in s.tasks if t.node == node], []) for s in self.slots]
        return replace(self, slots=slots, nodes={k: v for k, v in self.nodes.items() if k == node})

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "created": self.created, "parent": self.parent,
                "inputs_digest": self.inputs_digest, "start": self.start, "slot_min": self.slot_min,
                "horizon_h": self.horizon_h, "nodes": self.nodes, "models": self.models, "notes": self.notes,
                "slots": [{"index": s.index, "start": s.start, "end": s.end,
                           "tasks": [{**asdict(t), "scenarios": list(t.scenarios)} for t in s.tasks],
                           "unserved": [asdict(u) for u in s.unserved]} for s in self.slots]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        slots = [Slot(s["index"], s["start"], s["end"],
                      [Task(t["camera"], t["node"], tuple(t["scenarios"]), t.get("model"), float(t["fps"]),
                            float(t.get("need_fps", t["fps"]))) for t in s.get("tasks", [])],
                      [Unserved(**u) for u in s.get("unserved", [])]) for s in d["slots"]]
        return cls(d["start"], int(d["slot_min"]), int(d["horizon_h"]), dict(d.get("nodes", {})),
                   dict(d.get("models", {})), slots, d.get("inputs_digest", ""), d.get("version"),
                   d.get("created"), d.get("parent"), list(d.get("notes", [])))

    def summary(self) -> dict[str, Any]:
        """Counts for a table: tasks, cameras served, degraded tasks, unserved pairs, peak load per node."""
        peak = {n: 0.0 for n in self.nodes}
        for s in self.slots:
            for n, load in s.load().items():
                peak[n] = max(peak.get(n, 0.0), load)
        return {"version": self.name, "slots": len(self.slots), "tasks": sum(len(s.tasks) for s in self.slots),
                "degraded": sum(t.degraded for s in self.slots for t in s.tasks),
                "unserved": sum(len(s.unserved) for s in self.slots), "peak_load": peak}


# ------------------------------------------------------------------------------------ windows


def window_overlaps(w: Window, h0: float, h1: float, condition: str | None) -> bool:
    """Whether window w is active at some time of the hour interval [h0, h1) (h1 may pass 24) in `condition`."""
    if w.conditions and condition is not None and condition not in w.conditions:
        return False  # an unknown condition counts as any (Window.contains does the same)
    if w.hours is None:
        return True
    segs = [(h0, min(h1, 24.0))] + ([(0.0, h1 - 24.0)] if h1 > 24.0 else [])
    return any(lo < b and a < hi for lo, hi in w.spans() for a, b in segs)


def active_in(s: ScenarioSpec, h0: float, h1: float, condition: str | None) -> bool:
    """A scenario is active in a slot when any of its windows (none: always) overlaps it."""
    return not s.windows or any(window_overlaps(w, h0, h1, condition) for w in s.windows)


# ------------------------------------------------------------------------------------ models


def choose_models(inp: Inputs) -> tuple[dict[str, ModelSpec | None], list[str]]:
    """scenario -> the model version serving it (None: none can), and notes. A pin (`serve`) wins if the
    model covers the scenario's classes; else cityloop's own versions (production first), then partners."""
    notes: list[str] = []
    by_id = {m.id: m for m in inp.models}
    out: dict[str, ModelSpec | None] = {}
    for s in inp.scenarios:
        if s.name in inp.serve:
            m = by_id[inp.serve[s.name]]
            if not m.covers(s):
                missing = sorted(set(s.uses) - set(m.classes))
                raise ScheduleError(f"serve.{s.name}: model {m.id} does not detect {missing} "
                                    f"(it has {list(m.classes)})")
            out[s.name] = m
            continue
        cands = [m for m in inp.models if m.stage in STAGE_RANK and m.covers(s) and (m.own or inp.partners)]
        cands.sort(key=lambda m: (not m.own, STAGE_RANK[m.stage], m.id))
        out[s.name] = cands[0] if cands else None
    if not inp.models:
        notes.append("no model version registered: tasks name no model (each node runs the version it serves)")
    return out, notes


# ------------------------------------------------------------------------------------ packing


@dataclass
class _Item:
    """One camera's work with one model in one slot, while it is being packed."""

    camera: str
    model: str | None
    scenarios: dict[str, ScenarioSpec]
    cap: float  # the stream's frame rate (inf: unknown)

    @property
    def need(self) -> float:
        return min(max(s.fps for s in self.scenarios.values()), self.cap)

    @property
    def floor(self) -> float:
        return min(max(s.min_fps for s in self.scenarios.values()), self.cap)

    def setters(self) -> list[str]:
        """The scenarios that set the item's floor (dropping all of them is what frees budget)."""
        top = max(s.min_fps for s in self.scenarios.values())
        return [k for k, s in self.scenarios.items() if s.min_fps >= top - EPS]

    def relief(self) -> float:
        rest = [s.min_fps for k, s in self.scenarios.items() if k not in self.setters()]
        return self.floor - (min(max(rest), self.cap) if rest else 0.0)


def _fit(items: list[_Item], budget: float) -> tuple[dict[int, float], list[tuple[_Item, ScenarioSpec]]]:
    """Rates for the items of one node within `budget` (id -> fps) and the (item, scenario) pairs dropped.

    While the items' minimum rates exceed the budget, drop the scenarios that set one item's minimum:
    those of the lowest priority first (then the ones freeing the most), so a cheap scenario riding
    along at a camera's rate is never dropped for nothing."""
    dropped: list[tuple[_Item, ScenarioSpec]] = []
    live = list(items)
    while sum(i.floor for i in live) > budget + EPS:
        cands = [(max(i.scenarios[k].priority for k in i.setters()), -i.relief(), i.camera, str(i.model), n)
                 for n, i in enumerate(live) if i.relief() > EPS]
        item = live[min(cands)[-1]]
        for k in item.setters():
            dropped.append((item, item.scenarios.pop(k)))
        if not item.scenarios:
            live.remove(item)
    need, floor = sum(i.need for i in live), sum(i.floor for i in live)
    alpha = 1.0 if need <= budget + EPS else (budget - floor) / (need - floor)
    rates = {}
    for i in live:
        fps = i.floor + max(0.0, min(1.0, alpha)) * (i.need - i.floor)
        rates[id(i)] = max(i.floor, math.floor(fps * 100 + 1e-6) / 100)  # 0.01 fps steps, never above budget
    return rates, dropped


def _place(items: list[_Item], nodes: list[NodeSpec], previous: dict[tuple[str, str | None], str]
           ) -> dict[str, list[_Item]]:
    """Largest demand first onto the least-loaded node that fits (its previous node when that fits);
    an item that fits nowhere goes where the most budget is left (and that node degrades)."""
    load = {n.name: 0.0 for n in nodes}
    budget = {n.name: n.budget_fps for n in nodes}
    out: dict[str, list[_Item]] = {n.name: [] for n in nodes}
    for it in sorted(items, key=lambda i: (-i.need, i.camera, str(i.model))):
        fits = [n for n in load if load[n] + it.need <= budget[n] + EPS]
        prev = previous.get((it.camera, it.model))
        if prev in fits:
            pick = prev
        elif fits:
            pick = min(fits, key=lambda n: (load[n] / budget[n], n))
        else:
            pick = max(load, key=lambda n: (budget[n] - load[n], -load[n] / budget[n], n))
        load[pick] += it.need
        out[pick].append(it)
    return out


def _slot_items(inp: Inputs, models: dict[str, ModelSpec | None], h0: float, h1: float
                ) -> tuple[list[_Item], list[Unserved]]:
    items: list[_Item] = []
    unserved: list[Unserved] = []
    none_registered = not inp.models
    for cam in sorted(inp.cameras, key=lambda c: c.camera_id):
        cond = cam.condition_at(h0)
        groups: dict[str | None, dict[str, ScenarioSpec]] = {}
        for s in inp.scenarios:
            if not s.applies_to(cam) or not active_in(s, h0, h1, cond):
                continue
            m = models.get(s.name)
            if m is None and not none_registered:
                unserved.append(Unserved(cam.camera_id, s.name, f"no serving model version detects {list(s.uses)}"))
                continue
            groups.setdefault(m.id if m else None, {})[s.name] = s
        for mid, scs in groups.items():
            items.append(_Item(cam.camera_id, mid, scs, float(cam.fps) if cam.fps else math.inf))
    return items, unserved


def make_plan(inp: Inputs, at: datetime | float | None = None) -> Plan:
    """The plan for `inp` starting at the slot that holds `at` (default: now), `horizon_h` long."""
    validate(inp)
    models, notes = choose_models(inp)
    if at is None:
        at = datetime.now(UTC)
    at_ts = at.timestamp() if isinstance(at, datetime) else float(at)
    slot_s = inp.slot_min * 60
    start = datetime.fromtimestamp(at_ts - at_ts % slot_s, UTC)
    slots: list[Slot] = []
    previous: dict[tuple[str, str | None], str] = {}
    budgets = {n.name: n.budget_fps for n in inp.nodes}
    for k in range(inp.horizon_h * 60 // inp.slot_min):
        t0 = start + timedelta(seconds=k * slot_s)
        h0 = local_hour(t0.timestamp())
        items, unserved = _slot_items(inp, models, h0, h0 + inp.slot_min / 60.0)
        slot = Slot(k, t0.isoformat(), (t0 + timedelta(seconds=slot_s)).isoformat(), [], unserved)
        for node, mine in _place(items, inp.nodes, previous).items():
            rates, dropped = _fit(mine, budgets[node])
            for it, s in dropped:
                slot.unserved.append(Unserved(it.camera, s.name, f"node {node} full ({budgets[node]:g} frames/s): "
                                                                 f"dropped (priority {s.priority})"))
            for it in mine:
                if it.scenarios:
                    slot.tasks.append(Task(it.camera, node, tuple(it.scenarios), it.model, rates[id(it)],
                                           round(it.need, 4)))
                    previous[(it.camera, it.model)] = node
        slot.tasks.sort(key=lambda t: (t.camera, str(t.model)))
        slot.unserved.sort(key=lambda u: (u.camera, u.scenario))
        slots.append(slot)
    nodes = {n.name: {"budget_fps": n.budget_fps, "source": n.source} for n in sorted(inp.nodes, key=lambda n: n.name)}
    chosen = {k: (None if m is None else {"id": m.id, "vendor": m.vendor, "stage": m.stage}) for k, m in models.items()}
    return Plan(start.isoformat(), inp.slot_min, inp.horizon_h, nodes, chosen, slots, inp.digest(), notes=notes)


# ------------------------------------------------------------------------------------ diffs


def _rows(plan: Plan) -> dict[tuple[int, str, str | None], Task]:
    """(slot of the horizon, camera, model) -> task. Slots are numbered from midnight UTC of the epoch
    modulo the horizon, so two plans with different start days compare slot by time of day."""
    slot_s, n = plan.slot_min * 60, len(plan.slots)
    first = int(plan.start_ts // slot_s)
    return {((first + s.index) % n, t.camera, t.model): t for s in plan.slots for t in s.tasks}


def diff(old: Plan | None, new: Plan) -> dict[str, Any]:
    """What changed from `old` to `new`: node budgets, model choices, tasks added / removed / changed."""
    if old is None:
        return {"nodes": {n: [None, v["budget_fps"]] for n, v in new.nodes.items()}, "models": {},
                "added": sum(len(s.tasks) for s in new.slots), "removed": 0, "changed": 0, "examples": []}
    nodes = {n: [old.nodes.get(n, {}).get("budget_fps"), new.nodes.get(n, {}).get("budget_fps")]
             for n in sorted(set(old.nodes) | set(new.nodes))
             if old.nodes.get(n, {}).get("budget_fps") != new.nodes.get(n, {}).get("budget_fps")}
    models = {s: [(old.models.get(s) or {}).get("id"), (new.models.get(s) or {}).get("id")]
              for s in sorted(set(old.models) | set(new.models))
              if (old.models.get(s) or {}).get("id") != (new.models.get(s) or {}).get("id")}
    a, b = _rows(old), _rows(new)
    examples = []
    changed = 0
    for k in sorted(set(a) & set(b), key=str):
        ta, tb = a[k], b[k]
        if (ta.node, ta.scenarios, ta.fps) != (tb.node, tb.scenarios, tb.fps):
            changed += 1
            if len(examples) < 10:
                examples.append({"slot": k[0], "camera": k[1],
                                 "before": f"{ta.node} {ta.fps:g} fps {','.join(ta.scenarios)}",
                                 "after": f"{tb.node} {tb.fps:g} fps {','.join(tb.scenarios)}"})
    return {"nodes": nodes, "models": models, "added": len(set(b) - set(a)), "removed": len(set(a) - set(b)),
            "changed": changed, "examples": examples}


# ------------------------------------------------------------------------------------ on a node


def assignment_for(plan: Plan, node: str) -> Callable[[str, float], frozenset[str]]:
    """(camera_id, ts) -> the scenarios `node` runs on that camera at ts (empty: none; the camera is skipped).

    The callable an Analyzer takes as `assignment=`."""
    table: dict[int, dict[str, frozenset[str]]] = {}
    for s in plan.slots:
        per: dict[str, set[str]] = {}
        for t in s.tasks:
            if t.node == node:
                per.setdefault(t.camera, set()).update(t.scenarios)
        table[s.index] = {c: frozenset(v) for c, v in per.items()}

    def assignment(camera_id: str, ts: float) -> frozenset[str]:
        return table.get(plan.slot_at(ts).index, {}).get(camera_id, frozenset())

    return assignment


def rates_for(plan: Plan, node: str) -> Callable[[str, float], float]:
    """(camera_id, ts) -> frames/s `node` processes of that camera at ts (0: skip every frame)."""
    table: dict[int, dict[str, float]] = {}
    for s in plan.slots:
        per: dict[str, float] = {}
        for t in s.tasks:
            if t.node == node:
                per[t.camera] = per.get(t.camera, 0.0) + t.fps  # two models on one camera: both rates
        table[s.index] = per

    def rate(camera_id: str, ts: float) -> float:
        return table.get(plan.slot_at(ts).index, {}).get(camera_id, 0.0)

    return rate


class Sampler:
    """Which frames of each camera to process at `rate(camera, ts)` frames/s, by the stream's timestamps.

    Each camera has a next due time, a period (1/fps) after the last one; a frame at or after it is
    taken. Due times advance by whole periods, so a 2 fps stream sampled at 1.25 fps keeps 1.25 frames
    per second on average; after a gap (or a stream that starts over) the next frame is taken at once."""

    def __init__(self, rate: Callable[[str, float], float]) -> None:
        self.rate = rate
        self.due: dict[str, float] = {}

    def take(self, camera_id: str, ts: float) -> bool:
        fps = self.rate(camera_id, ts)
        if fps <= 0:
            return False
        period = 1.0 / fps
        due = self.due.get(camera_id)
        if due is not None and due - period <= ts < due - min(0.05, 0.1 * period):
            return False
        self.due[camera_id] = due + period if due is not None and 0 <= ts - due < period else ts + period
        return True


class NodeSchedule:
    """A node's share of a plan: which frames to process, which scenarios to run, what it ran."""

    def __init__(self, plan: Plan, node: str) -> None:
        self.plan, self.node = plan, node
        self.assignment = assignment_for(plan, node)
        self.sampler = Sampler(rates_for(plan, node))
        self.cameras: dict[str, dict[str, Any]] = {}

    def take(self, camera_id: str, ts: float) -> bool:
        """Whether to process this frame (counted as processed or skipped for the report)."""
        ok = self.sampler.take(camera_id, ts)
        c = self.cameras.setdefault(camera_id, {"scenarios": [], "fps": 0.0, "processed": 0, "skipped": 0})
        c["processed" if ok else "skipped"] += 1
        if ok:
            c["scenarios"] = sorted(self.assignment(camera_id, ts))
            c["fps"] = self.sampler.rate(camera_id, ts)
        return ok

    def report(self) -> dict[str, Any]:
        """What the node ran, per camera (the node's status.json `schedule`)."""
        return {"plan": self.plan.name, "digest": self.plan.inputs_digest[:12], "cameras": self.cameras}


# ------------------------------------------------------------------------------------ parsing helpers


def parse_forecast(spec: Any, where: str, conditions: Sequence[str]) -> tuple[str | None, tuple]:
    """params `schedule.forecast.<camera or district>`: a condition, or [{hours: [from, to], condition}, ...]
    -> (condition for every hour or None, spans)."""
    if isinstance(spec, str):
        if spec not in conditions:
            raise ScheduleError(f"{where}: unknown condition {spec!r} (known: {', '.join(conditions)})")
        return spec, ()
    if not isinstance(spec, list):
        raise ScheduleError(f"{where}: a condition or a list of {{hours: [from, to], condition: c}}, got {spec!r}")
    spans = []
    for i, d in enumerate(spec):
        if not isinstance(d, Mapping) or set(d) != {"hours", "condition"}:
            raise ScheduleError(f"{where}[{i}]: expected {{hours: [from, to], condition: c}}, got {d!r}")
        if d["condition"] not in conditions:
            raise ScheduleError(f"{where}[{i}].condition: unknown {d['condition']!r} (known: {', '.join(conditions)})")
        try:
            (w,) = parse_windows([{"hours": d["hours"]}], f"{where}[{i}]", conditions)
        except ScenarioError as exc:
            raise ScheduleError(str(exc)) from None
        spans.append((w.hours[0], w.hours[1], d["condition"]))
    return None, tuple(spans)


def scenario_specs(settings: Mapping[str, Any]) -> list[ScenarioSpec]:
    """ScenarioSpecs from cityloop.scenarios.settings.scenario_settings(...) (in registry order)."""
    return [ScenarioSpec.from_config(c) for c in settings.values()]


def cameras_from(entries: Iterable[Mapping[str, Any]], zones: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> list[CameraSpec]:
    """CameraSpecs from cameras.json entries (camera_id, district, condition, fps, zones; optional
    `scenarios`), with `zones` overrides (params analysis.zones: camera -> {kind: ...}) adding kinds."""
    out = []
    for c in entries:
        sc = c.get("scenarios")
        kinds = set(c.get("zones") or {}) | set((zones or {}).get(str(c["camera_id"]), {}))
        out.append(CameraSpec(str(c["camera_id"]), c.get("district"), c.get("condition"), (),
                              float(c["fps"]) if c.get("fps") else None, tuple(sc) if sc is not None else None,
                              tuple(sorted(kinds))))
    return out
