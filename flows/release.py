"""Prefect flow `release`: build the bento → canary → compare with production → roll out or back.

Orchestration only: every task calls one plain function of `bento` or `edge.rollout`; the
decision and its numbers are published as the markdown artifact `release-decision`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cityloop.bento.build import build_bento
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from cityloop.core.settings import find_root, load_params
from cityloop.edge import rollout
from cityloop.edge.fleet import deploy, list_nodes


@task(name="build-bento")
def build_task(root: str, model_version: str) -> dict:
    """The candidate's bento (reused when the same model and code were built before)."""
    return build_bento(Path(root), model_version).to_dict()


@task(name="plan")
def plan_task(root: str, model_version: str, canary: str | None) -> dict:
    """The canary node, the other nodes and the production version they serve."""
    return dataclasses.asdict(rollout.plan(Path(root), model_version, canary))


@task(name="deploy-canary")
def canary_task(root: str, pl: dict, timeout: float) -> dict[str, str]:
    """Put the candidate on the canary node and wait until it serves it."""
    return deploy(Path(root), [pl["canary"]], pl["candidate"], timeout)


@task(name="compare")
def compare_task(root: str, canary_url: str, production_url: str, p: dict) -> dict:
    """Canary vs production on the same frames: agreement, error rate, latency."""
    params = rollout.ReleaseParams(**p)
    frames = rollout.load_frames(Path(root), params.frames, params.max_frames)
    return dataclasses.asdict(rollout.compare(canary_url, production_url, frames, params.min_score))


@task(name="decide-and-finish")
def finish_task(root: str, pl: dict, cmp: dict, p: dict) -> dict:
    """Roll out to all nodes and promote, or roll back automatically (recorded in the registry)."""
    params, comparison = rollout.ReleaseParams(**p), rollout.Comparison(**cmp)
    passed, checks = rollout.decide(comparison, params)
    return dataclasses.asdict(rollout.finish(Path(root), rollout.Plan(**pl), passed, checks, comparison, params))


@flow(name="release")
def release(model_version: str, canary: str | None = None, root: str | None = None) -> dict:
    """Canary rollout of MODEL_VERSION to the edge nodes, with automatic rollback."""
    root = str(Path(root or find_root()).resolve())
    p = dataclasses.asdict(rollout.ReleaseParams.from_dict(load_params(Path(root)).get("release")))
    built = build_task(root, model_version)
    pl = plan_task(root, model_version, canary)
    urls = canary_task(root, pl, p["deploy_timeout_s"])
    prod_url = next(n["url"] for n in list_nodes(Path(root)) if n["name"] == pl["others"][0])
    cmp = compare_task(root, urls[pl["canary"]], prod_url, p)
    decision = finish_task(root, pl, cmp, p)
    decision["bento"] = built
    create_markdown_artifact(key="release-decision", markdown=rollout.render(rollout.ReleaseDecision(
        **{k: v for k, v in decision.items() if k != "bento"})), description=decision["reason"])
    get_run_logger().info(json.dumps({"action": decision["action"], "reason": decision["reason"]}))
    return decision
