"""Prefect flow `label`: select → push → wait until labeled (or timeout) → pull → version.

Orchestration only: each task calls one plain function of `labeling`. Also the Prefect side of
the webhook receiver: events that an automation can use to start retraining.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from cityloop.core.settings import find_root

LABEL_EVENT, READY_EVENT = "cityloop.label.created", "cityloop.labels.ready"


def _open(root: str):
    from cityloop.labeling.project import open_workspace

    return open_workspace(Path(root))


@task(name="push")
def push_task(root: str, data: str, model: str, budget: int | None, strategy: str | None) -> dict:
    """Score the pool, select the batch, import it with pre-annotations and honeypots."""
    from cityloop.labeling.push import label_classes, labeled_elsewhere, push
    from cityloop.models.runtime import OnnxDetector
    from cityloop.models.store import ModelStore

    params, project, repo, _ = _open(root)
    mv = ModelStore(Path(root)).get(model)
    project.ensure(label_classes(mv.card))
    res = push(project, repo, OnnxDetector(mv.model_path, mv.card, threads=2), mv.id, data,
               params.push_params(budget=budget, strategy=strategy),
               exclude=labeled_elsewhere(repo, [params.dataset]), honeypot_data=params.honeypot_dataset)
    return {**vars(res), "page": project.page()}


@task(name="scripted-annotators")
def annotate_task(root: str, truth: list[str]) -> list[dict]:
    """The scripted annotators of params labeling.annotators label the open tasks."""
    from cityloop.labeling.annotator import run_team, truth_from_folder

    params, project, _, _ = _open(root)
    gt: dict = {}
    for t in truth:
        gt |= truth_from_folder(Path(t))
    return [vars(r) for r in run_team(project, params.error_models(), gt, params.overlap_share, params.seed)]


@task(name="wait")
def wait_task(root: str, task_ids: list[int], timeout: float) -> dict:
    """Until every task of the batch is annotated or skipped, or the timeout."""
    from cityloop.labeling.status import wait_until_labeled

    _, project, _, _ = _open(root)
    return wait_until_labeled(project, task_ids, timeout)


@task(name="pull")
def pull_task(root: str, into: str | None) -> dict:
    """Export, assess annotators, gate the batch, ingest accepted tasks as a new dataset version."""
    from cityloop.labeling.pull import pull

    params, project, repo, gate = _open(root)
    res = pull(project, repo, into or params.dataset, gate, params.min_agreement, params.iou, params.split)
    if res.version and res.accepted:  # a new labeled version: the train trigger's event
        from cityloop.flows.governance import emit_dataset_versioned

        emit_dataset_versioned({"version": res.version, "frames": len(res.accepted), "new_frames": res.new_frames})
    return res.to_dict()


def report(pushed: dict, waited: dict, pulled: dict) -> str:
    lines = [f"# labeling batch {pushed['batch']}", "",
             f"{len(pushed['task_ids'])} tasks ({pushed['strategy']}: {pushed['reasons']}) + "
             f"{len(pushed['honeypot_ids'])} honeypots from {pushed['data']}, pre-annotated by {pushed['model']}",
             f"labeled {waited['done']}/{waited['tasks']}" + (" (timed out)" if waited["timed_out"] else ""), "",
             f"accepted {len(pulled['accepted'])}, rejected {len(pulled['rejected'])}, held back "
             f"{len(pulled['held_back'])} → **{pulled['version'] or 'no new version'}**", "",
             "| annotator | tasks | honeypot agreement | peer agreement | held back |", "|---|---|---|---|---|"]
    for name, q in pulled["quality"]["annotators"].items():
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {name} | {q['tasks']} | {fmt(q['honeypot_agreement'])} | {fmt(q['peer_agreement'])} | "
                     f"{'yes: ' + q['reason'] if q['held_back'] else 'no'} |")
    for tid, reasons in pulled["rejected"].items():
        lines.append(f"- task {tid} rejected: {'; '.join(reasons)}")
    return "\n".join(lines)


@flow(name="label")
def label_flow(data: str = "field-pool@latest", model: str = "cityloop-detector:latest", budget: int | None = None,
               strategy: str | None = None, annotators: str = "scripted", truth: list[str] | None = None,
               into: str | None = None, timeout_s: float | None = None, root: str | None = None) -> dict:
    """One labeling batch through Label Studio, ending in a new governed dataset version.

    Args:
        data: the unlabeled pool version to draw from.
        model: the registered model that scores uncertainty and pre-annotates.
        budget: frames to label (default: params labeling.budget).
        strategy: "active" (uncertainty + diversity) or "random" (the control arm).
        annotators: "scripted" (simulated annotators from the simulator's truth) or "people" (wait for them).
        truth: simulator output folders with the ground truth (scripted annotators only).
        into: dataset receiving the labels (default: params labeling.dataset).
        timeout_s: how long to wait for the batch (default: params labeling.wait_timeout_s).
        root: workspace (default: the git top level of the working directory).
    """
    if annotators not in ("scripted", "people"):
        raise ValueError("annotators must be 'scripted' or 'people'")
    root = root or str(find_root())
    params = _open_params(root)
    pushed = push_task(root, data, model, budget, strategy)
    ids = pushed["task_ids"] + pushed["honeypot_ids"]
    if annotators == "scripted":
        annotate_task(root, truth or [])
    waited = wait_task(root, ids, params.wait_timeout_s if timeout_s is None else timeout_s)
    pulled = pull_task(root, into)
    create_markdown_artifact(key="labeling-batch", markdown=report(pushed, waited, pulled),
                             description=f"labeling batch {pushed['batch']}")
    get_run_logger().info("batch %s: %s accepted, version %s", pushed["batch"], len(pulled["accepted"]),
                          pulled["version"])
    return {"push": pushed, "wait": waited, "pull": pulled}


@task(name="pool")
def pool_task(root: str, frames: int, seed: int) -> str:
    """A field pool as cameras deliver it: simulator frames ingested unlabeled (truth kept aside)."""
    from cityloop.governance import versioning
    from cityloop.labeling.demo import make_pool

    existing = versioning.list_versions(Path(root), "field-pool")
    return existing[-1].id if existing else make_pool(Path(root), frames, seed)


@task(name="labelstudio-up")
def labelstudio_task(root: str, port: int) -> str:
    """Start (or find) the workspace's Label Studio server."""
    from cityloop.labeling.server import LabelStudioServer

    return LabelStudioServer(Path(root), port=port).start().url


@flow(name="labeling-demo")
def labeling_demo(root: str | None = None, model: str = "cityloop-detector:latest", frames: int = 600,
                  seed: int = 2, budget: int | None = None) -> dict:
    """The demo's labeling round: a field pool, Label Studio, one batch labeled by scripted annotators."""
    root = root or str(find_root())
    params = _open_params(root)
    pool = pool_task(root, frames, seed)
    url = labelstudio_task(root, params.port)
    raw = Path(root) / "data" / "raw"
    out = label_flow(data=pool, model=model, budget=budget, truth=[str(raw / "field-pool"), str(raw / "lab")],
                     root=root)
    return {**out, "url": url}


def _open_params(root: str):
    from cityloop.core.settings import load_section
    from cityloop.labeling.params import LabelingParams

    return load_section(Path(root), "labeling", LabelingParams)


def emit_label(info: dict) -> None:
    """One Prefect event per new label (webhook receiver hook)."""
    emit_event(event=LABEL_EVENT, resource=_resource(info), payload=info)


def emit_ready(total: int, info: dict) -> None:
    """`cityloop.labels.ready` each time `retrain_after` new labels landed: an automation's trigger to retrain."""
    emit_event(event=READY_EVENT, resource=_resource(info), payload={"labels": total, **info})


def _resource(info: dict) -> dict[str, str]:
    return {"prefect.resource.id": f"cityloop.labelstudio.project.{info['project_id']}"}
