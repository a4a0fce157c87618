"""Prefect flow `patrol`: many camera streams in parallel on prefect-dask's DaskTaskRunner, then
event-level scoring. On one machine a LocalCluster; at scale, `address=` a Dask scheduler.

Orchestration only: each task calls one plain function of analysis.patrol.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from prefect import flow, task
from prefect_dask import DaskTaskRunner

from cityloop.analysis.params import analysis_params, store_url
from cityloop.analysis.patrol import patrol_one, score_run
from cityloop.core.settings import find_root
from cityloop.scenarios.zones import read_cameras


@task(name="patrol-camera", retries=1)
def patrol_camera_task(root: str, streams: str, camera_id: str, model: str, params: dict, db: str,
                       run_id: str) -> dict:
    """One camera's stream: detect → track → rules → event store."""
    return patrol_one(root, streams, camera_id, model, params, db, run_id)


@task(name="score")
def score_task(streams: str, db: str, run_id: str, tolerance_s: float) -> dict | None:
    """Precision, recall, duplicate rate and time to discovery per scenario."""
    return score_run(streams, db, run_id, tolerance_s)


DASK_ADDRESS_ENV = "CITYLOOP_DASK_ADDRESS"  # tcp://scheduler:8786 at scale (`cityloop up`: stack.dask_address)


def task_runner(address: str | None = None, workers: int = 2) -> DaskTaskRunner:
    """A Dask cluster of `workers` single-threaded processes, or an existing scheduler at `address`
    (default: $CITYLOOP_DASK_ADDRESS).

    The local cluster is closed to everyone but this run: 127.0.0.1, no dashboard, and mutual TLS
    with temporary credentials held in memory (`security=True`), so another local user cannot
    connect to the scheduler and submit code to its workers."""
    address = address or os.environ.get(DASK_ADDRESS_ENV) or None
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None, "security": True})


@flow(name="patrol", task_runner=task_runner())
def patrol_flow(streams: str, model: str = "truth", root: str | None = None, db: str | None = None) -> dict:
    """Every camera of a stream folder as its own task; returns per-camera results and the metrics."""
    root = root or str(find_root())
    ap = analysis_params(Path(root))
    params = ap.to_dict(with_scenarios=True)  # plain data for the Dask workers, which rebuild AnalysisParams
    db_url, run_id = store_url(Path(root), db), uuid.uuid4().hex[:12]
    cams = [c["camera_id"] for c in read_cameras(Path(streams))]
    futures = [patrol_camera_task.submit(root, streams, c, model, params, db_url, run_id) for c in cams]
    results = [f.result() for f in futures]
    metrics = score_task(streams, db_url, run_id, ap.match_tolerance_s)
    return {"run_id": run_id, "cameras": results, "metrics": metrics}
