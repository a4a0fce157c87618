"""Canary rollout of a model version to edge nodes: the release sequence, written once.

`release` runs: build the bento → plan → deploy to the canary → compare canary vs production on
the same frames → decide → finish: roll out to every node and promote through the algorithm
repository's gate, or put the canary back on the production version and record the refusal
(or roll the gate back when the candidate had already been promoted). Thresholds: params.yaml
`release:`. The `release` flow runs each step as a Prefect task; the closed loop and the CLI's
direct path run the same function with `run_direct`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from cityloop.bento.serving import DetectorClient, ServingError
from cityloop.core.settings import from_section, load_section
from cityloop.core.steps import StepRunner, run_direct
from cityloop.edge.fleet import deploy, list_nodes, up_nodes
from cityloop.edge.node import API_TOKEN_ENV
from cityloop.edge.selection import match_count
from cityloop.models.gate import PromotionGate, open_gate


@dataclass
class ReleaseParams:
    """The `release:` section of params.yaml."""

    frames: str = "field-bench@latest"  # dataset version whose frames both versions see
    max_frames: int = 48
    min_score: float = 0.3  # detections below this score are ignored when comparing
    min_agreement: float = 0.8  # box F1 at IoU 0.5 between canary and production
    max_error_rate: float = 0.02  # share of frames the canary failed (HTTP errors, timeouts)
    max_latency_ratio: float = 2.0  # canary p50 / production p50
    deploy_timeout_s: float = 180.0

    @classmethod
    def from_dict(cls, d: dict | None) -> ReleaseParams:
        return from_section(cls, d, "release")


@dataclass
class Plan:
    candidate: str
    production: str  # the version the other nodes serve now
    canary: str
    others: list[str]


@dataclass
class Comparison:
    frames: int
    agreement: float
    canary_error_rate: float
    production_error_rate: float
    canary_p50_ms: float | None
    production_p50_ms: float | None
    canary_boxes: int
    production_boxes: int

    @property
    def latency_ratio(self) -> float | None:
        if not self.canary_p50_ms or not self.production_p50_ms:
            return None
        return self.canary_p50_ms / self.production_p50_ms


@dataclass
class ReleaseDecision:
    passed: bool
    checks: list[dict]
    reason: str
    plan: dict = field(default_factory=dict)
    comparison: dict = field(default_factory=dict)
    registry: dict = field(default_factory=dict)
    action: str = ""  # rolled_out | rolled_back


def plan(root: Path, candidate: str, canary: str | None = None) -> Plan:
    """Pick the canary (given, or the first node up) and the production version the others serve."""
    from cityloop.models.store import ModelStore

    candidate = ModelStore(root, track=False).get(candidate).id  # resolve :latest, :staging …
    nodes = up_nodes(root)
    if len(nodes) < 2:
        raise RuntimeError(f"a canary rollout needs at least 2 nodes up, found {len(nodes)} "
                           "(start them with `cityloop edge start`)")
    names = [n["name"] for n in nodes]
    canary = canary or names[0]
    if canary not in names:
        raise RuntimeError(f"canary node {canary!r} is not up (up: {', '.join(names)})")
    others = [n for n in names if n != canary]
    versions = {n["model_version"] for n in nodes if n["name"] in others}
    if len(versions) != 1:
        raise RuntimeError(f"the non-canary nodes serve different versions {sorted(map(str, versions))}: "
                           "roll back or finish the previous rollout first")
    production = versions.pop()
    if production == candidate:
        raise RuntimeError(f"{candidate} is already what the nodes serve")
    return Plan(candidate, production, canary, others)


def load_frames(root: Path, version: str, n: int) -> list[bytes]:
    """Encoded bytes of the first n frames of a dataset version (the same frames for both sides)."""
    from cityloop.governance.repository import DataRepository
    from cityloop.governance.store import FrameStore

    manifest, _ = DataRepository(Path(root)).load(version)
    store = FrameStore(Path(root) / "data")
    return [store.read(p) for p in manifest.sort_values("sha256")["path"].head(n)]


def _run(client: DetectorClient, frame: bytes) -> tuple[list[dict] | None, float]:
    t0 = time.perf_counter()
    try:
        out = client.detect([frame])[0]["detections"]
    except (ServingError, httpx.HTTPError, ValueError, KeyError):
        out = None
    return out, (time.perf_counter() - t0) * 1000


def compare(canary_url: str, production_url: str, frames: list[bytes], min_score: float) -> Comparison:
    """Both versions on the same frames, one frame at a time: agreement, errors, latency."""
    token = os.environ.get(API_TOKEN_ENV)
    can, prod = DetectorClient(canary_url, token), DetectorClient(production_url, token)
    lat_c, lat_p, err_c, err_p = [], [], 0, 0
    matched = boxes_c = boxes_p = 0
    for f in frames:
        dc, tc = _run(can, f)
        dp, tp = _run(prod, f)
        err_c += dc is None
        err_p += dp is None
        if dc is not None:
            lat_c.append(tc)
        if dp is not None:
            lat_p.append(tp)
        if dc is None or dp is None:
            continue
        dc = [d for d in dc if d["score"] >= min_score]
        dp = [d for d in dp if d["score"] >= min_score]
        matched += match_count(dc, dp)
        boxes_c += len(dc)
        boxes_p += len(dp)
    n = len(frames)
    agree = 1.0 if boxes_c + boxes_p == 0 else 2 * matched / (boxes_c + boxes_p)
    p50 = lambda xs: float(np.percentile(xs, 50)) if xs else None
    return Comparison(n, agree, err_c / n if n else 1.0, err_p / n if n else 1.0, p50(lat_c), p50(lat_p),
                      boxes_c, boxes_p)


def decide(cmp: Comparison, p: ReleaseParams) -> tuple[bool, list[dict]]:
    """The canary's checks against params.yaml `release:`."""
    ratio = cmp.latency_ratio
    checks = [
        {"name": "agreement", "value": cmp.agreement, "threshold": p.min_agreement,
         "passed": cmp.agreement >= p.min_agreement, "detail": "box F1 at IoU 0.5 vs production (>=)"},
        {"name": "error_rate", "value": cmp.canary_error_rate, "threshold": p.max_error_rate,
         "passed": cmp.canary_error_rate <= p.max_error_rate, "detail": "share of frames failed (<=)"},
        {"name": "latency_ratio", "value": ratio, "threshold": p.max_latency_ratio,
         "passed": ratio is not None and ratio <= p.max_latency_ratio, "detail": "canary p50 / production p50 (<=)"},
    ]
    return all(c["passed"] for c in checks), checks


def finish(root: Path, pl: Plan, passed: bool, checks: list[dict], cmp: Comparison,
           p: ReleaseParams, gate: PromotionGate | None = None) -> ReleaseDecision:
    """Roll out to all nodes + promote, or roll the canary back + record why (all through the gate;
    `gate`: one with other params, e.g. the closed loop's target while it climbs)."""
    reg = gate or open_gate(Path(root))
    name = pl.candidate.split(":", 1)[0]
    numbers = "; ".join(f"{c['name']} {_fmt(c['value'])} vs {_fmt(c['threshold'])}" for c in checks)
    registry: dict = {}
    if passed:
        mv = reg.store.get(pl.candidate)
        if mv.stage != "production":
            d = reg.promote(pl.candidate)
            registry = d.to_dict()
            if not d.promoted:
                passed, numbers = False, numbers + f"; registry gate refused: {d.reason}"
        else:
            registry = {"promoted": True, "reason": f"{pl.candidate} already in production"}
    if passed:
        deploy(root, pl.others, pl.candidate, p.deploy_timeout_s)
        reason = f"{pl.candidate} rolled out to {len(pl.others) + 1} nodes: {numbers}"
        return ReleaseDecision(True, checks, reason, dataclasses.asdict(pl), dataclasses.asdict(cmp), registry,
                               "rolled_out")
    deploy(root, [pl.canary], pl.production, p.deploy_timeout_s)
    why = f"canary {pl.canary} failed: {numbers}"
    if reg.store.get(pl.candidate).stage == "production":
        registry = reg.rollback(name, why=why).to_dict()
    else:
        reg.refuse(pl.candidate, f"release: {why}", checks=checks, canary=pl.canary)
        registry = {"recorded": "promotion_refused", "stage": reg.store.get(pl.candidate).stage}
    reason = f"{pl.candidate} rolled back: canary {pl.canary} back on {pl.production}; {numbers}"
    return ReleaseDecision(False, checks, reason, dataclasses.asdict(pl), dataclasses.asdict(cmp), registry,
                           "rolled_back")


def abandon(root: Path, pl: Plan, why: str, p: ReleaseParams,
            gate: PromotionGate | None = None) -> ReleaseDecision:
    """The canary did not serve the candidate within `release.deploy_timeout_s` (it failed to start,
    or its readiness probe never passed): the canary goes back on the production version, and the
    refusal is recorded in the registry (or the gate rolled back if the candidate was promoted)."""
    reg = gate or open_gate(Path(root))
    name = pl.candidate.split(":", 1)[0]
    check = {"name": "canary_ready", "value": False, "threshold": f"serving within {p.deploy_timeout_s:.0f} s",
             "passed": False, "detail": why}
    try:
        deploy(root, [pl.canary], pl.production, p.deploy_timeout_s)
    except TimeoutError as exc:  # the canary cannot even serve production again: say so, loudly
        raise RuntimeError(f"canary {pl.canary} did not serve {pl.candidate} ({why}) and did not come back "
                           f"on {pl.production} either ({exc}): see `cityloop edge status`") from exc
    text = f"canary {pl.canary} did not serve {pl.candidate} within {p.deploy_timeout_s:.0f} s"
    if reg.store.get(pl.candidate).stage == "production":
        registry = reg.rollback(name, why=text).to_dict()
    else:
        reg.refuse(pl.candidate, f"release: {text}", checks=[check], canary=pl.canary)
        registry = {"recorded": "promotion_refused", "stage": reg.store.get(pl.candidate).stage}
    reason = f"{pl.candidate} rolled back: {text}; canary back on {pl.production}"
    empty = Comparison(0, 0.0, 1.0, 0.0, None, None, 0, 0)
    return ReleaseDecision(False, [check], reason, dataclasses.asdict(pl), dataclasses.asdict(empty), registry,
                           "rolled_back")


def release_params(root: Path, **overrides) -> ReleaseParams:
    """params.yaml `release:` (`overrides` replace some, e.g. the closed loop's `loop.release`)."""
    return load_section(root, "release", ReleaseParams, **overrides)


def compare_on(root: Path, canary_url: str, pl: Plan, p: ReleaseParams) -> Comparison:
    """The canary against a production node on the same `release.frames`."""
    prod_url = next(n["url"] for n in list_nodes(Path(root)) if n["name"] == pl.others[0])
    return compare(canary_url, prod_url, load_frames(Path(root), p.frames, p.max_frames), p.min_score)


def release(root: Path, model_version: str, canary: str | None = None, params: ReleaseParams | None = None,
            gate: PromotionGate | None = None, step: StepRunner = run_direct) -> dict:
    """The release sequence (see the module docstring): a ReleaseDecision as a dict, plus the bento."""
    from cityloop.bento.build import build_bento

    root = Path(root).resolve()
    p = params or release_params(root)
    built = step("build-bento", build_bento, root, model_version)
    pl = step("plan", plan, root, model_version, canary)
    try:
        urls = step("deploy-canary", deploy, root, [pl.canary], pl.candidate, p.deploy_timeout_s)
    except TimeoutError as exc:  # the candidate never served on the canary: put it back, record why
        decision = step("roll-back-canary", abandon, root, pl, str(exc), p, gate)
        return {**dataclasses.asdict(decision), "bento": built.to_dict()}
    cmp = step("compare", compare_on, root, urls[pl.canary], pl, p)
    passed, checks = decide(cmp, p)
    decision = step("decide-and-finish", finish, root, pl, passed, checks, cmp, p, gate)
    return {**dataclasses.asdict(decision), "bento": built.to_dict()}


def rollback_all(root: Path, timeout: float = 180.0) -> dict:
    """`cityloop edge rollback`: the previous production version back into production, on every node."""
    nodes = up_nodes(root)
    if not nodes:
        raise RuntimeError("no edge node is up")
    reg = open_gate(Path(root))
    current = {n["model_version"] for n in nodes}
    name = sorted(current)[0].split(":", 1)[0]
    decision = reg.rollback(name, why="cityloop edge rollback")
    target = decision.id if decision.promoted else None
    if target is None:
        prod = reg.store.production(name)
        if prod is None:
            raise RuntimeError(decision.reason)
        target = prod.id  # nothing to pop in the registry: put every node on its production
    deploy(root, [n["name"] for n in nodes], target, timeout)
    return {"registry": decision.to_dict(), "model_version": target, "nodes": [n["name"] for n in nodes]}


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def render(d: ReleaseDecision) -> str:
    """Markdown: the decision, its checks and numbers (the Prefect artifact)."""
    pl, cmp = d.plan, d.comparison
    lines = [f"# release {pl.get('candidate')}: {'ROLLED OUT' if d.passed else 'ROLLED BACK'}", "", d.reason, "",
             f"canary `{pl.get('canary')}`, production `{pl.get('production')}` on {', '.join(pl.get('others', []))}",
             "", "| check | value | threshold | passed | |", "|---|---:|---:|---|---|"]
    for c in d.checks:
        lines.append(f"| {c['name']} | {_fmt(c['value'])} | {_fmt(c['threshold'])} | "
                     f"{'yes' if c['passed'] else '**no**'} | {c['detail']} |")
    lines += ["", "| measure | canary | production |", "|---|---:|---:|",
              f"| frames | {cmp.get('frames')} | {cmp.get('frames')} |",
              f"| boxes (score >= min_score) | {cmp.get('canary_boxes')} | {cmp.get('production_boxes')} |",
              f"| error rate | {_fmt(cmp.get('canary_error_rate'))} | {_fmt(cmp.get('production_error_rate'))} |",
              f"| latency p50 ms | {_fmt(cmp.get('canary_p50_ms'))} | {_fmt(cmp.get('production_p50_ms'))} |",
              "", f"registry: {d.registry.get('reason') or d.registry}"]
    return "\n".join(lines)
