"""Prefect flow `replan`: plan from the current inputs (a new version only when they changed), then
apply it to the edge nodes.

Orchestration only: each task calls one function of cityloop.schedule.store. The deployment
`replan/hourly` (flows/deployments.py) runs it on params `schedule.cron` and when a model version is
promoted (`cityloop.model.promoted`); nodes that start or stop, budgets and windows are picked up by
the next run (an unchanged plan is kept, and applying it again is harmless).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from cityloop.core.settings import find_root, load_section
from cityloop.schedule.params import ScheduleParams
from cityloop.schedule.store import PlanStore, change_text, replan


@task(name="plan-schedule", retries=1, retry_delay_seconds=10)
def plan_task(root: str, streams: str | None) -> dict:
    """Read the inputs and plan; returns the version, whether it is new, and what changed."""
    out = replan(Path(root), load_section(Path(root), "schedule", ScheduleParams), Path(streams) if streams else None)
    return {"version": out["plan"].name, "created": out["created"], "summary": out["summary"],
            "change": change_text(out["diff"]) if out["diff"] else "inputs unchanged"}


@task(name="apply-schedule", retries=1, retry_delay_seconds=10)
def apply_task(root: str, version: str) -> dict:
    """Write each node's share of the plan into its folder."""
    return PlanStore(Path(root), load_section(Path(root), "schedule", ScheduleParams).store).apply(version)


@flow(name="replan")
def replan_flow(root: str | None = None, streams: str | None = None, apply: bool = True) -> dict:
    """Re-plan the schedule and apply it to the edge nodes.

    Args:
        root: workspace (default: the git top level of the working directory).
        streams: stream folder whose cameras.json lists the cameras (default: params schedule.cameras).
        apply: write the plan into the nodes' folders (off: plan only).
    """
    root = root or str(find_root())
    planned = plan_task(root, streams)
    get_run_logger().info("schedule %s (%s): %s", planned["version"], "new" if planned["created"] else "unchanged",
                          planned["change"])
    applied = apply_task(root, planned["version"]) if apply else None
    return {**planned, "applied": applied}
