"""Prefect flow `release`: build the bento → canary → compare with production → roll out or back.

Orchestration only: `cityloop.edge.rollout.release` is the sequence, each of its steps a task run
here (`as_task`); the decision and its numbers are published as the markdown artifact
`release-decision`.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from cityloop.core.settings import find_root
from cityloop.edge import rollout
from cityloop.flows.steps import as_task


@flow(name="release")
def release(model_version: str, canary: str | None = None, root: str | None = None) -> dict:
    """Canary rollout of MODEL_VERSION to the edge nodes, with automatic rollback."""
    decision = rollout.release(Path(root or find_root()), model_version, canary, step=as_task)
    create_markdown_artifact(key="release-decision", markdown=rollout.render(rollout.ReleaseDecision(
        **{k: v for k, v in decision.items() if k != "bento"})), description=decision["reason"])
    get_run_logger().info(json.dumps({"action": decision["action"], "reason": decision["reason"]}))
    return decision
