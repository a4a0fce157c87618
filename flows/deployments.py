"""The deployments that make every flow clickable in the Prefect UI, served by one process.

`python -m flows.deployments` (started by `cityloop up`, PREFECT_API_URL pointing at the stack's
server) registers them and runs their flow runs as subprocesses until SIGTERM. Schedules and
event triggers come from the `stack:` section of params.yaml:

- `weekly-report/weekly`: the cron of params `report.cron`;
- `patrol/nightly`: `stack.patrol_cron` over the stream folder `stack.patrol_streams`;
- `label/on-hard-examples`: the event `cityloop.hard-examples.ready` (the `hard-examples` flow
  emits it once `stack.hard_examples_min` new edge frames are pooled) labels that pool version;
- `train/on-new-labels`: the event `cityloop.dataset.versioned` of the labeled dataset
  (params `labeling.dataset`) fine-tunes `stack.train_parent` on that version;
- `replan/hourly`: the cron of params `schedule.cron` and the event `cityloop.model.promoted` (the
  `train` flow emits it on a promotion) re-plan the schedule and apply it to the edge nodes;
- `ingest/manual`, `hard-examples/inbox`, `release/manual`, `closed-loop/manual`: run from the UI.

Why `serve` rather than a process work pool + worker on one machine: one process, no work pool
to create, no pull steps, the deployments' code is the working tree itself; `deploy/prefect.yaml`
holds the same deployments for work pools (process or Kubernetes) at scale.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from cityloop.core.settings import find_root, load_section
from cityloop.flows.governance import DATASET_EVENT, ingest
from cityloop.flows.hard_examples import HARD_READY_EVENT, hard_examples_flow
from cityloop.flows.labeling import label_flow
from cityloop.flows.loop import closed_loop
from cityloop.flows.params import READY_FILE, stack_params
from cityloop.flows.patrol import patrol_flow
from cityloop.flows.release import release
from cityloop.flows.reports import weekly_deployment
from cityloop.flows.schedule import replan_flow
from cityloop.flows.training import MODEL_PROMOTED_EVENT, train_flow
from cityloop.labeling.params import LabelingParams
from cityloop.schedule.params import ScheduleParams

TAGS = ["cityloop"]

# Parameter help for the flows whose docstrings have no Args: section (Prefect reads Args: into the
# schema's descriptions: the UI's run form shows them). Only missing descriptions are filled in.
PARAM_HELP: dict[str, dict[str, str]] = {
    "weekly-report": {"week": "ISO week, e.g. 2026-W48 (default: the latest event's week).",
                      "root": "workspace (default: the git top level of the working directory).",
                      "db": "event store URL (default: params analysis.db).",
                      "out": "output folder (default: params report.out).",
                      "deliver_reports": "send every recipient's report to the sinks of params report.sinks "
                                         "(a failed sink is reported, the reports are kept)."},
    "patrol": {"streams": "stream folder: cameras.json, <camera>/frames, events.json (cityloop scenes generate "
                          "--video writes one).",
               "model": "model version (cityloop-detector:latest, :production, :v3) or `truth` (the "
                        "simulator's boxes).",
               "root": "workspace (default: the git top level of the working directory).",
               "db": "event store URL (default: params analysis.db)."},
    "release": {"model_version": "the candidate, e.g. cityloop-detector:v3.",
                "canary": "edge node that gets the candidate first (default: the first node).",
                "root": "workspace (default: the git top level of the working directory)."},
}


def _describe(dep: RunnerDeployment) -> RunnerDeployment:
    """Fill descriptions the flow's docstring leaves out (the UI's run form shows them)."""
    helps = PARAM_HELP.get(dep.flow_name, {})
    for name, prop in dep._parameter_openapi_schema.properties.items():
        if not prop.get("description") and name in helps:
            prop["description"] = helps[name]
    return dep


def build_deployments(root: str | Path | None = None) -> list[RunnerDeployment]:
    """Every cityloop deployment, root defaulting to the workspace; nothing is sent to a server."""
    root = Path(root or find_root()).resolve()
    sp = stack_params(root)
    labeled = load_section(root, "labeling", LabelingParams).dataset
    schedule = load_section(root, "schedule", ScheduleParams)
    r = str(root)
    tags = TAGS

    weekly = weekly_deployment(r)  # report.cron; the timezone made explicit (the UI shows a null one as "+1")
    weekly.schedules = [s.model_copy(update={"schedule": s.schedule.model_copy(update={"timezone": sp.timezone})})
                        for s in weekly.schedules]
    weekly.tags, weekly.description = [*tags, "analysis", "scheduled"], (
        "The weekly report over the event store (HTML + charts, linked as an artifact); on params report.cron.")

    from prefect.client.schemas.schedules import CronSchedule

    deps = [
        ingest.to_deployment(
            name="manual", parameters={"root": r}, tags=[*tags, "governance"],
            description="Ingest a folder of frames through the Great Expectations gate and publish the dataset's "
                        "next DVC version (emits cityloop.dataset.versioned)."),
        hard_examples_flow.to_deployment(
            name="inbox", parameters={"root": r, "dataset": sp.hard_examples_dataset,
                                      "min_frames": sp.hard_examples_min},
            tags=[*tags, "edge", "governance"],
            description="Pool the edge inbox's hard examples as an unlabeled version; emits "
                        f"{HARD_READY_EVENT} once enough new frames are pooled (which starts label/on-hard-examples)."),
        label_flow.to_deployment(
            name="on-hard-examples",
            parameters={"root": r, "annotators": sp.label_annotators, "model": sp.label_model},
            tags=[*tags, "labeling", "triggered"],
            description=f"A Label Studio batch; started by {HARD_READY_EVENT} on the pooled version, or by hand.",
            triggers=[DeploymentEventTrigger(
                name="enough hard examples → label",
                description=f"{HARD_READY_EVENT} (at least stack.hard_examples_min new edge frames) starts a batch "
                            "on that pool version.",
                expect={HARD_READY_EVENT}, match={"prefect.resource.id": "cityloop.dataset.*"},
                threshold=sp.label_threshold, within=timedelta(seconds=sp.label_within_s),
                parameters={"data": "{{ event.payload.version }}", "root": r, "annotators": sp.label_annotators,
                            "model": sp.label_model})]),
        train_flow.to_deployment(
            name="on-new-labels", parameters={"root": r, "parent": sp.train_parent, "promote": sp.train_promote},
            tags=[*tags, "training", "triggered"],
            description=f"Fine-tune on a labeled version; started by {DATASET_EVENT} of {labeled}, or by hand.",
            triggers=[DeploymentEventTrigger(
                name="new labeled version → train",
                description=f"{DATASET_EVENT} for cityloop.dataset.{labeled} fine-tunes {sp.train_parent} on it.",
                expect={DATASET_EVENT}, match={"prefect.resource.id": f"cityloop.dataset.{labeled}"},
                threshold=sp.train_threshold, within=timedelta(seconds=sp.train_within_s),
                parameters={"data": "{{ event.payload.version }}", "root": r, "parent": sp.train_parent,
                            "promote": sp.train_promote})]),
        release.to_deployment(
            name="manual", parameters={"root": r}, tags=[*tags, "serving"],
            description="Canary rollout of a model version to the edge nodes, with automatic rollback."),
        patrol_flow.to_deployment(
            name="nightly", parameters={"root": r, "streams": str(root / sp.patrol_streams), "model": sp.patrol_model},
            schedules=[CronSchedule(cron=sp.patrol_cron, timezone=sp.timezone)], tags=[*tags, "analysis", "scheduled"],
            description="Every camera of the stream folder through detector → tracker → rules → event store, "
                        "scored against the streams' truth; nightly on stack.patrol_cron."),
        weekly,
        replan_flow.to_deployment(
            name="hourly", parameters={"root": r}, tags=[*tags, "scheduling", "scheduled", "triggered"],
            schedules=[CronSchedule(cron=schedule.cron, timezone=sp.timezone)],
            description="Re-plan which scenarios run on which camera, node and model version within each node's "
                        "budget, and apply it to the nodes; on schedule.cron and on every promotion.",
            triggers=[DeploymentEventTrigger(
                name="model promoted → re-plan",
                description=f"{MODEL_PROMOTED_EVENT}: a new production version may serve scenarios differently.",
                expect={MODEL_PROMOTED_EVENT}, match={"prefect.resource.id": "cityloop.model.*"},
                parameters={"root": r})]),
        closed_loop.to_deployment(
            name="manual", parameters={"root": r}, tags=[*tags, "loop"],
            description="The closed loop: rounds of field labels (active beside random) until the field target."),
    ]
    return [_describe(d) for d in deps]


def main() -> None:
    root = Path(os.environ.get("CITYLOOP_ROOT") or find_root()).resolve()
    deps = build_deployments(root)
    ready = root / ".cityloop" / "stack" / READY_FILE
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.write_text(json.dumps([f"{d.flow_name}/{d.name}" for d in deps]))
    serve(*deps, print_starting_message=False)


if __name__ == "__main__":
    main()
