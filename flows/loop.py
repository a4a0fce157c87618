"""Prefect flow `closed-loop`: round 0 (lab model, release) then rounds of field streams → hard
examples → Label Studio batch → governed version → fine-tune → evaluate → gate → release.

Orchestration only: loop.runner runs the rounds and hands every stage to `as_task` (the one
Prefect step runner, cityloop.flows.steps), which runs it as a task named after the stage (the
same functions the benchmark calls directly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cityloop.core.settings import find_root, load_section
from cityloop.flows.steps import as_task


@task(name="labelstudio-up", cache_policy=NO_CACHE)
def labelstudio_task(root: str) -> str:
    """Start (or find) the workspace's Label Studio server; an external one (LABEL_STUDIO_URL) is used as is."""
    import os

    from cityloop.labeling.params import LabelingParams
    from cityloop.labeling.server import ENV_URL, LabelStudioServer

    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    port = load_section(Path(root), "labeling", LabelingParams).port
    return LabelStudioServer(Path(root), port=port).start().url


def loop_params(root: str, **over: Any):
    from cityloop.loop.params import LoopParams

    return load_section(Path(root), "loop", LoopParams, **over)


def ensure_base(root: str, base: str) -> str:
    """Round 0's inputs: the demo datasets and the lab-trained model (made by their flows when missing)."""
    from cityloop.governance import versioning
    from cityloop.models.store import ModelNotFoundError, ModelStore

    if not versioning.list_versions(Path(root), "lab"):
        from cityloop.flows.governance import governance_demo

        governance_demo(root=root)
    try:
        return ModelStore(Path(root), track=False).get(base).id
    except ModelNotFoundError:
        from cityloop.flows.training import train_flow

        return train_flow(data="lab@latest", root=root)["model"]


@flow(name="closed-loop")
def closed_loop(rounds: int | None = None, budget: int | None = None, arms: list[str] | None = None,
                seeds: list[int] | None = None, target: float | None = None, edge: bool | None = None,
                annotators: str = "scripted", root: str | None = None) -> dict:
    """The closed loop: rounds of field labels until the field target or the label budget.

    Args:
        rounds: labeling rounds after round 0 (default: params loop.rounds).
        budget: frames labeled per round and lineage (default: params loop.budget).
        arms: selection arms side by side: "active" (uncertainty + diversity) and/or "random" (the control arm).
        seeds: one lineage per arm and seed; the report shows their spread.
        target: field mAP@0.5 at which a lineage stops (default: params loop.target).
        edge: run the main lineage through real edge nodes (streams, hard examples, canary releases).
        annotators: "scripted" (simulated annotators from the simulator's truth) or "people" (wait for
            Label Studio users).
        root: workspace (default: the git top level of the working directory).
    """
    from cityloop.loop.runner import run_loop

    if annotators not in ("scripted", "people"):
        raise ValueError("annotators must be 'scripted' or 'people'")
    root = str(Path(root or find_root()).resolve())
    p = loop_params(root, rounds=rounds, budget=budget, arms=arms, seeds=seeds, target=target, edge=edge)
    log = get_run_logger()
    base = as_task("round-0-base", ensure_base, root, p.base)
    if base != p.base:
        p.base = base
    url = labelstudio_task(root)
    log.info("Label Studio at %s", url)
    out = run_loop(Path(root), p, call=as_task, annotators=annotators, say=log.info)
    summary = out["report"]
    md = Path(summary["markdown"]).read_text()
    create_markdown_artifact(key="closed-loop", markdown=md, description=summary.get("ratio_text", "closed loop"))
    return {"run": out["run"], "summary": {k: v for k, v in summary.items() if k != "records"},
            "records": out["records"], "timings": out["timings"]}
