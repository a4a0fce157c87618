"""The algorithm repository's gate: evaluation, promotion, rollback, and the checks admission scores.

The store (`cityloop.models.store`) keeps versions and the events log; the gate reads them, runs
the benchmark (onnxruntime, torch-free) and records its verdicts back into the log:

    evaluated         -> (no stage change)  (data: benchmark version id, metrics)
    promoted          -> staging | production
    retired           -> retired            (the previous production, when another is promoted)
    rolled_back       -> retired (the version rolled back) / production (the one restored)
    promotion_refused -> (no stage change)  (the failed checks, or a canary's refusal)

Its tunables are the `registry:` section of params.yaml (`RegistryParams`); `open_gate(root)`
builds the workspace's gate from them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityloop.core.settings import from_section, load_section
from cityloop.governance import versioning
from cityloop.models.store import (
    DEFAULT_PARITY_TOLERANCE,
    PARTNER_PARITY,
    ModelStore,
    ModelVersion,
    RegistryError,
    check_model_name,
    max_parity_diff,
    model_classes,
    parity_status,
)

GATE_METRICS = ("mAP50", "mAP")


@dataclass
class RegistryParams:
    """The `registry:` section of params.yaml (unknown keys raise ValueError)."""

    benchmark: str  # dataset version id the gate scores on, e.g. "field-bench@latest"
    target: float  # the gate's minimum of target_metric on the benchmark
    latency_budget_ms: float  # max median ms per image at batch 1 (preprocess + infer + decode)
    target_metric: str = "mAP50"  # mAP50 | mAP
    max_condition_regression: float = 0.03  # max drop of target_metric on any condition vs production
    parity_tolerance: float = DEFAULT_PARITY_TOLERANCE  # max |torch - onnx| output difference
    admission_fraction: float = 0.9  # a partner model needs target_metric >= fraction * target
    max_model_mb: float = 50.0  # partner package size limit (model.onnx + external data)
    # partner admission's sandbox: the child process that opens and benchmarks the partner's graph
    # (address space, wall time); its declared input H x W is held to limits.max_image_pixels first
    admission_memory_mb: float = 4096.0
    admission_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        problems = []
        try:
            versioning.split_version_id(self.benchmark)
        except ValueError as exc:
            problems.append(f"benchmark: {exc}")
        if self.target_metric not in GATE_METRICS:
            problems.append(f"target_metric must be one of {GATE_METRICS}: {self.target_metric!r}")
        for key in ("target", "max_condition_regression", "latency_budget_ms", "parity_tolerance",
                    "admission_fraction", "max_model_mb"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                problems.append(f"{key} must be a number >= 0: {value!r}")
        for key in ("admission_memory_mb", "admission_timeout_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                problems.append(f"{key} must be a number > 0: {value!r}")
        if problems:
            raise ValueError("invalid registry params: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RegistryParams:
        return from_section(cls, d, "registry")


@dataclass
class Check:
    """One check of a gate: what was measured, against what, and whether it passed."""

    name: str
    passed: bool
    value: Any = None
    threshold: Any = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Checked:
    """A verdict made of checks (promotion decisions, admission reports)."""

    checks: list[Check]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["checks"] = [c.to_dict() for c in self.checks]
        return d


@dataclass
class Decision(Checked):
    """What the promotion gate (or a rollback) decided, and why."""

    promoted: bool
    checks: list[Check]
    reason: str
    id: str = ""
    action: str = "promote"  # promote | rollback
    to: str = "production"
    previous: str | None = None  # the production version before (promote) / rolled back (rollback)

    def render(self) -> str:
        """Plain-text table: one line per check, then the verdict."""
        lines = [f"{self.action} {self.id} -> {self.to}"]
        for c in self.checks:
            lines.append(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name:<22} value={_fmt(c.value):<10} "
                         f"threshold={_fmt(c.threshold):<10} {c.detail}")
        lines.append(("DONE: " if self.promoted else "REFUSED: ") + self.reason)
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def open_gate(root: Path, track: bool = True, **overrides: Any) -> PromotionGate:
    """The workspace's gate over its store, with the `registry:` params (`overrides` replace some,
    e.g. a loop's lower promotion target while it climbs)."""
    params = load_section(root, "registry", RegistryParams, **overrides)
    return PromotionGate(ModelStore(root, track=track, parity_tolerance=params.parity_tolerance), params)


class PromotionGate:
    """Evaluate, promote, roll back and refuse versions of one store (see the module docstring)."""

    def __init__(self, store: ModelStore, params: RegistryParams) -> None:
        self.store = store
        self.params = params

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, model_id: str) -> dict[str, Any]:
        """Run a version on params.benchmark (onnxruntime) and record the metrics in the events log."""
        params = self.params
        mv = self.store.get(model_id)
        metrics = self.run_benchmark(mv, params.benchmark)
        self.store.record([self.store.event("evaluated", mv.id, why=f"benchmark {metrics['benchmark']}",
                                            benchmark=metrics["benchmark"], metrics=metrics)])
        return metrics

    def run_benchmark(self, mv: ModelVersion, benchmark: str) -> dict[str, Any]:
        from cityloop.models.evaluate import evaluate_onnx

        """The version on a benchmark dataset version (onnxruntime), scored on the classes it maps to."""
        return evaluate_onnx(mv.model_path, mv.card, self.store.root, benchmark,
                             classes=model_classes(mv.card) or None)

    def metrics_on(self, mv: ModelVersion, benchmark: str) -> dict[str, Any]:
        """Stored metrics of mv on a resolved benchmark version, else evaluate now (and record)."""
        found = mv.metrics(benchmark)
        if found is not None:
            return found
        metrics = self.run_benchmark(mv, benchmark)
        why = f"benchmark {benchmark} (for the promotion gate)"
        self.store.record([self.store.event("evaluated", mv.id, why=why, benchmark=metrics["benchmark"],
                                            metrics=metrics)])
        return metrics

    # ------------------------------------------------------------------ promote / rollback
    def checks(self, mv: ModelVersion, metrics: dict[str, Any], prod: ModelVersion | None,
               prod_metrics: dict[str, Any] | None) -> list[Check]:
        """The promotion checks of `mv` against production (see promote)."""
        p = self.params
        metric = p.target_metric
        bench = metrics.get("benchmark")
        value = metrics.get(metric)
        checks = [Check("target", value is not None and value >= p.target, value, p.target,
                        f"{metric} on {bench}" + ("" if value is not None else " (no boxes to score)"))]
        if prod is None or prod_metrics is None:
            checks.append(Check("condition_regression", True, None, p.max_condition_regression,
                                f"no production version of {mv.name} to compare with"))
        else:
            cand = (metrics.get("by") or {}).get("condition", {})
            base = (prod_metrics.get("by") or {}).get("condition", {})
            drops = {}
            for cond in sorted(set(cand) | set(base)):
                b, c = (base.get(cond) or {}).get(metric), (cand.get(cond) or {}).get(metric)
                if b is not None:
                    drops[cond] = (b - (c if c is not None else 0.0), b, c)
            worst = max(drops.items(), key=lambda kv: kv[1][0], default=None)
            bad = [f"{k}: {c if c is not None else 0:.3f} vs {b:.3f}" for k, (d, b, c) in drops.items()
                   if d > p.max_condition_regression]
            value = worst[1][0] if worst else 0.0
            detail = (f"{metric} drop vs production {prod.id} per condition; "
                      + ("regressed: " + "; ".join(bad) if bad else f"worst: {worst[0] if worst else '-'}"))
            checks.append(Check("condition_regression", value <= p.max_condition_regression + 1e-12, value,
                                p.max_condition_regression, detail))
        ok, why, _ = parity_status(mv.card, mv.parity or None, p.parity_tolerance)
        value = max_parity_diff(mv.parity) if mv.parity and mv.parity.get("status") != PARTNER_PARITY else None
        checks.append(Check("parity", ok, value if value is not None else (mv.parity or {}).get("status"),
                            p.parity_tolerance, why))
        lat = (metrics.get("latency") or {}).get("batch1_median_ms")
        checks.append(Check("latency", lat is not None and lat <= p.latency_budget_ms, lat, p.latency_budget_ms,
                            "median ms per image at batch 1 (preprocess + infer + decode, onnxruntime CPU, "
                            f"{(metrics.get('latency') or {}).get('threads', '?')} thread)"))
        return checks

    def promote(self, model_id: str, to: str = "production") -> Decision:
        """The promotion gate. Passes only if all of:

        target                metric >= params.target on params.benchmark (resolved version)
        condition_regression  no condition's metric below production's by more than
                              max_condition_regression (passes when there is no production)
        parity                the export parity recorded at registration passed (partner: n/a)
        latency               median ms per image at batch 1 <= latency_budget_ms

        Metrics come from the events log when this version was evaluated on that benchmark
        version, else it (and the production version) are evaluated now. On promotion to
        production the previous production becomes "retired" (and stays the rollback target).
        A refusal is recorded as a "promotion_refused" event.
        """
        if to not in ("staging", "production"):
            raise RegistryError(f"cannot promote to {to!r}: staging or production")
        params = self.params
        mv = self.store.get(model_id)
        if mv.stage in (to, "production"):
            return Decision(False, [], f"{mv.id} is already in {mv.stage}", mv.id, "promote", to)
        bench = versioning.resolve(self.store.root, params.benchmark).id
        metrics = self.metrics_on(mv, bench)
        prod = self.store.production(mv.name)
        prod = prod if prod is not None and prod.id != mv.id else None
        prod_metrics = self.metrics_on(prod, bench) if prod else None
        checks = self.checks(mv, metrics, prod, prod_metrics)
        failed = [c for c in checks if not c.passed]
        if failed:
            reason = f"{mv.id} not promoted to {to}: failed " + "; ".join(
                f"{c.name} ({_fmt(c.value)} vs {_fmt(c.threshold)}: {c.detail})" for c in failed)
            self.store.record([self.store.event("promotion_refused", mv.id, why=reason, to=to, benchmark=bench,
                                                checks=[c.to_dict() for c in checks])])
            return Decision(False, checks, reason, mv.id, "promote", to, prod.id if prod else None)
        with self.store.lock():
            state = self.store.state()
            current = state.production(mv.name)
            if prod is not None and current != prod.id or prod is None and current not in (None, mv.id):
                raise RegistryError(f"production of {mv.name} changed while the gate ran ({current}); try again")
            events = []
            if to == "production" and prod is not None:
                events.append(self.store.event("retired", prod.id, "retired", why=f"superseded by {mv.id}",
                                               superseded_by=mv.id))
            reason = f"{mv.id} promoted to {to} on {bench}: all {len(checks)} checks passed" + (
                f"; {prod.id} retired (kept as the rollback target)" if to == "production" and prod else "")
            events.append(self.store.event("promoted", mv.id, to, why=reason, benchmark=bench,
                                           previous=prod.id if prod else None, checks=[c.to_dict() for c in checks]))
            self.store.write(events)
        return Decision(True, checks, reason, mv.id, "promote", to, prod.id if prod else None)

    def rollback(self, name: str, why: str = "") -> Decision:
        """Put the previous production version (from the events log) back in production."""
        check_model_name(name)
        with self.store.lock():
            state = self.store.state()
            current = state.production(name)
            stack = state.stack.get(name) or []
            if current is None:
                reason = f"{name} has no production version to roll back"
                return Decision(False, [Check("production", False, None, None, reason)], reason, name, "rollback")
            if len(stack) < 2:
                reason = f"{current} is the first production version of {name}: nothing to roll back to"
                return Decision(False, [Check("previous_production", False, None, None, reason)], reason,
                                current, "rollback", previous=current)
            target = stack[-2]
            problems = self.store.verify(target)
            checks = [Check("previous_production", True, target, None, f"production before {current}"),
                      Check("integrity", not problems, len(problems), 0,
                            "; ".join(problems) or "files match their registration sha256")]
            if problems:
                reason = f"cannot roll back {name} to {target}: " + "; ".join(problems)
                return Decision(False, checks, reason, target, "rollback", previous=current)
            reason = f"{name} rolled back: {current} -> {target}" + (f" ({why})" if why else "")
            self.store.write([self.store.event("rolled_back", current, "retired", why=reason, to=target),
                              self.store.event("rolled_back", target, "production", why=reason,
                                               **{"from": current})])
        return Decision(True, checks, reason, target, "rollback", "production", current)

    def refuse(self, model_id: str, why: str, to: str = "production", **data: Any) -> None:
        """Record that a version was refused a stage by a check outside the promotion gate (a canary)."""
        mid = self.store.get(model_id).id
        self.store.record([self.store.event("promotion_refused", mid, why=why, to=to, **data)])
