"""The `stack:` section of params.yaml: the control room's ports, schedules and event triggers.

Read by `cityloop up` (the stack) and by the serve process that registers the deployments
(`cityloop.flows.deployments`); plain data, no Prefect import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cityloop.core.settings import load_section

READY_FILE = "deployments.json"  # the serve process writes the deployment names here, then registers them


@dataclass
class StackParams:
    """params.yaml `stack:`: ports, schedules and trigger thresholds of `cityloop up`."""

    prefect_port: int = 4200
    labelstudio: bool = True              # start Label Studio with the stack (its port: labeling.port)
    poll_seconds: int = 5                 # how often the serve process asks for scheduled runs
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 15.0
    patrol_cron: str = "0 2 * * *"
    patrol_streams: str = "data/raw/field-video"   # relative to the workspace
    patrol_model: str = "cityloop-detector:latest"
    hard_examples_min: int = 300          # new edge frames pooled before cityloop.hard-examples.ready
    hard_examples_dataset: str = "edge-hard"
    label_annotators: str = "people"      # annotators of a triggered labeling batch
    label_model: str = "cityloop-detector:latest"
    label_threshold: int = 1              # ready events ...
    label_within_s: int = 0               # ... within this window start a batch (0: each one does)
    train_parent: str = "cityloop-detector:latest"
    train_promote: bool = True
    train_threshold: int = 1              # new labeled versions ...
    train_within_s: int = 0               # ... within this window start a fine-tune
    timezone: str = "UTC"
    dask_address: str | None = None       # patrol's Dask scheduler at scale (else a LocalCluster per run)


def stack_params(root: Path) -> StackParams:
    return load_section(root, "stack", StackParams)
