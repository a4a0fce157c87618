"""Prefect flow `hard-examples`: the center inbox's edge hard examples → an unlabeled pool version,
and the events that let an automation start a labeling batch once enough of them are pooled.

Orchestration only: the task calls edge.inbox.inbox_ingest (domain code, no Prefect). The count of
frames pooled since the last `cityloop.hard-examples.ready` is the flow's own small state
(`<root>/.cityloop/flows/hard-examples.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from cityloop.core.settings import find_root

HARD_INGESTED_EVENT, HARD_READY_EVENT = "cityloop.hard-examples.ingested", "cityloop.hard-examples.ready"


@task(name="inbox-ingest", retries=2, retry_delay_seconds=5)
def inbox_ingest_task(root: str, dataset: str, push: bool) -> dict:
    """Every complete inbox example through the gate into `dataset` (split pool); idempotent by sha256."""
    from cityloop.edge.inbox import inbox_ingest

    res = inbox_ingest(Path(root), dataset, push=push)
    published = res.version.summary.get("ingest", {}).get("id") == res.ingest_id
    return {"version": res.version.id, "new_frames": res.new_frames if published else 0, "published": published,
            "frames": res.version.summary.get("frames"), "commit": res.version.commit}


def _state(root: str) -> Path:
    return Path(root) / ".cityloop" / "flows" / "hard-examples.json"


def pending_frames(root: str, dataset: str) -> int:
    """Frames pooled into `dataset` since its last ready event."""
    try:
        return int(json.loads(_state(root).read_text()).get(dataset, 0))
    except (FileNotFoundError, ValueError):
        return 0


def _set_pending(root: str, dataset: str, n: int) -> None:
    path = _state(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**state, dataset: n}))


@flow(name="hard-examples")
def hard_examples_flow(dataset: str = "edge-hard", min_frames: int = 300, push: bool = False,
                       root: str | None = None) -> dict:
    """Pool the edge inbox's hard examples as the next unlabeled version of a dataset.

    Args:
        dataset: dataset receiving the hard examples (split pool, source edge-hard).
        min_frames: new frames pooled (over one or more runs) that make `cityloop.hard-examples.ready`,
            the event that starts a labeling batch on the pool version.
        push: push the version to the DVC remote.
        root: workspace (default: the git top level of the working directory).
    """
    from cityloop.flows.governance import emit_dataset_versioned

    root = str(Path(root or find_root()).resolve())
    out = inbox_ingest_task(root, dataset, push)
    resource = {"prefect.resource.id": f"cityloop.dataset.{dataset}", "prefect.resource.name": dataset}
    pending = pending_frames(root, dataset) + out["new_frames"]
    if out["published"]:
        emit_dataset_versioned(out)
    emit_event(event=HARD_INGESTED_EVENT, resource=resource,
               payload={"version": out["version"], "count": out["new_frames"], "pending": pending})
    ready = pending >= min_frames and pending > 0
    if ready:
        emit_event(event=HARD_READY_EVENT, resource=resource,
                   payload={"version": out["version"], "count": pending, "dataset": dataset})
        pending = 0
    _set_pending(root, dataset, pending)
    get_run_logger().info("%s: %s new hard examples, %s pending%s", out["version"], out["new_frames"], pending,
                          f"; {HARD_READY_EVENT} emitted" if ready else "")
    return {**out, "pending": pending, "ready": ready}
