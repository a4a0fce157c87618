"""Prefect flows of the governance standard: `ingest` (prepare → validate → version) and the demo.

Orchestration only: every task calls one plain function of `scenes` or `governance`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from cityloop.core.settings import find_root, load_section
from cityloop.governance.gate import GateResult
from cityloop.governance.repository import Candidate, DataRepository, GateFailed, IngestParams, open_repository
from cityloop.scenes.frames import generate_frames
from cityloop.scenes.params import GenerateParams

DATASET_EVENT = "cityloop.dataset.versioned"  # resource cityloop.dataset.<name>, payload version (train trigger)


def emit_dataset_versioned(summary: dict) -> None:
    """`cityloop.dataset.versioned` for a newly published version (automations start training on it)."""
    version = summary["version"]
    dataset = version.split("@")[0]
    emit_event(event=DATASET_EVENT, resource={"prefect.resource.id": f"cityloop.dataset.{dataset}",
                                              "prefect.resource.name": dataset},
               payload={"version": version, "dataset": dataset, "commit": summary.get("commit"),
                        "frames": summary.get("frames"), "new_frames": summary.get("new_frames")})


def _repository(root: str) -> DataRepository:
    return open_repository(Path(root))


@task(name="generate")
def generate_task(domain: str, frames: int, seed: int, out: str, size: int = 192, fmt: str = "jpg",
                  workers: int = 2) -> dict:
    """Render a simulator dataset into `out`."""
    return generate_frames(domain, frames, seed, Path(out), size, fmt, workers)


@task(name="prepare")
def prepare_task(root: str, src: str, dataset: str, source: str, split: str, split_by: str,
                 annotations: str | None, workers: int) -> Candidate:
    """Read, deduplicate and stage the frames of src as the dataset's next candidate version."""
    return _repository(root).prepare(Path(src), dataset, source, split, split_by,
                                     Path(annotations) if annotations else None, workers)


@task(name="validate")
def validate_task(root: str, candidate: Candidate) -> GateResult:
    """Great Expectations gate; the report is published as a Prefect artifact."""
    result = _repository(root).validate(candidate)
    create_markdown_artifact(key=f"gate-{candidate.dataset}", markdown=f"```\n{result.report()}\n```",
                             description=f"Gate result for {candidate.dataset} ({candidate.ingest_id})")
    return result


@task(name="version", retries=2, retry_delay_seconds=5)
def version_task(root: str, candidate: Candidate, result: GateResult, push: bool = True) -> dict:
    """Publish a gated candidate as a DVC version (retried: DVC may meet a held lock)."""
    res = _repository(root).publish(candidate, result, push)
    out = {"version": res.version.id, "commit": res.version.commit, **res.summary}
    if res.version.summary.get("ingest", {}).get("id") == res.ingest_id:  # a new version, not "unchanged"
        emit_dataset_versioned({**out, "new_frames": res.new_frames})
    return out


@flow(name="ingest")
def ingest(src: str, dataset: str, source: str = "sim", split: str = "auto", split_by: str = "frame",
           annotations: str | None = None, workers: int = 2, push: bool = True, root: str | None = None) -> dict:
    """Ingest a folder of frames through the gate and publish the dataset's next version.

    Args:
        src: folder of JPEG/PNG frames (optionally metadata.parquet/csv and annotations.coco.json).
        dataset: dataset name, e.g. "field-pool"; versions read "<dataset>@v<N>".
        source: sim | field | partner | edge-hard.
        split: auto (80/10/10 by hash) or train | val | test | pool | bench.
        split_by: frame | camera (auto splits keep each camera in one split).
        annotations: COCO file (default: <src>/annotations.coco.json when present).
        workers: decoding processes.
        push: push the version to the DVC remote.
        root: workspace (default: the git top level of the working directory).
    """
    root = root or str(find_root())
    cand = prepare_task(root, src, dataset, source, split, split_by, annotations, workers)
    result = validate_task(root, cand)
    if not result.success:
        raise GateFailed(result, cand.staging)
    summary = version_task(root, cand, result, push)
    gate = f"{result.successful}/{result.evaluated}"
    get_run_logger().info(f"{summary['version']}: {summary['frames']} frames, gate {gate}")
    return summary


@flow(name="governance-demo")
def governance_demo(root: str | None = None, frames: int | None = None) -> list[dict]:
    """Generate the demo datasets of params.yaml and ingest each through the gate."""
    root = root or str(find_root())
    gen = load_section(Path(root), "generate", GenerateParams)
    split_by = load_section(Path(root), "ingest", IngestParams).split_by
    out = []
    for name, spec in gen.sets.items():
        raw = str(Path(root) / "data" / "raw" / name)
        generate_task(spec.domain, frames or spec.frames, gen.seed if spec.seed is None else spec.seed, raw,
                      gen.size, gen.format)
        out.append(ingest(raw, name, "sim", spec.split, split_by, root=root))
    return out
