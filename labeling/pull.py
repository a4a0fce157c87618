"""`label pull`: completed annotations -> quality check -> the labeling-batch gate -> a new dataset version.

Nothing labeled is lost: a task rejected by the gate, or held back with a weak annotator, stays
in Label Studio exactly as it is (to be fixed or re-annotated) and the pull says which and why;
accepted tasks go through the governance ingest (the full gate) into the target dataset. Frames
already labeled there are not ingested twice, so pulling again is harmless.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from cityloop.governance.gate import GateParams, find_suites, run_batch_gate
from cityloop.governance.repository import DataRepository
from cityloop.governance.schema import ANNOTATION_COLUMNS, CATEGORY_IDS
from cityloop.governance.store import FrameStore
from cityloop.labeling.annotator import annotator_id
from cityloop.labeling.convert import Box, ParsedAnnotation, parse_result, to_coco
from cityloop.labeling.project import LabelingProject
from cityloop.labeling.quality import QualityReport, assess


@dataclass
class PullResult:
    tasks: int  # tasks in the project
    completed: int  # tasks with at least one non-skipped annotation
    accepted: list[int] = field(default_factory=list)
    rejected: dict[int, list[str]] = field(default_factory=dict)  # task id -> reasons (the gate's)
    held_back: dict[int, str] = field(default_factory=dict)  # task id -> why (weak annotator)
    already: int = 0  # frames already labeled in the target dataset
    version: str | None = None
    new_frames: int = 0
    quality: dict = field(default_factory=dict)
    gate: str = ""
    report: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}


@dataclass
class Chosen:
    task_id: int
    sha256: str
    width: int
    height: int
    annotator: str
    parsed: ParsedAnnotation


def collect(export: list[dict], names: dict[int, str]) -> dict[int, dict[str, tuple[dict, ParsedAnnotation]]]:
    """Per task, per annotator: the latest non-skipped annotation, parsed to pixel boxes."""
    out: dict[int, dict[str, tuple[dict, ParsedAnnotation]]] = defaultdict(dict)
    for t in export:
        d = t["data"]
        for a in sorted(t.get("annotations", []), key=lambda a: (a.get("updated_at") or "", a["id"])):
            if a.get("was_cancelled"):
                continue
            who = names.get(annotator_id(a), str(annotator_id(a)))
            out[t["id"]][who] = (t, parse_result(a.get("result", []), int(d.get("width", 0)), int(d.get("height", 0))))
    return out


def choose(per_task: dict[int, dict[str, tuple[dict, ParsedAnnotation]]], quality: QualityReport,
           honeypots: set[int]) -> tuple[list[Chosen], dict[int, str]]:
    """One annotation per task: the best-agreeing annotator not held back; honeypots never join a dataset."""
    def rank(name: str) -> float:
        q = quality.annotators.get(name)
        return -1.0 if q is None or q.honeypot_agreement is None else q.honeypot_agreement

    chosen, held = [], {}
    for tid, by in per_task.items():
        if tid in honeypots:
            continue
        ok = [n for n in by if n not in quality.held_back]
        if not ok:
            held[tid] = "; ".join(f"{n}: {quality.annotators[n].reason}" for n in by)
            continue
        name = max(ok, key=rank)
        task, parsed = by[name]
        d = task["data"]
        chosen.append(Chosen(tid, d.get("sha256"), int(d.get("width", 0)), int(d.get("height", 0)), name, parsed))
    return chosen, held


def batch_tables(chosen: list[Chosen]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The gate's views of a labeling batch: one row per box, one row per task."""
    boxes, tasks = [], []
    for c in chosen:
        for k, b in enumerate(c.parsed.boxes):
            boxes.append({"task_id": c.task_id, "ann_id": c.task_id * 1000 + k, "sha256": c.sha256,
                          "category_id": CATEGORY_IDS.get(b.cls, -1), "category_name": b.cls, "x": b.x, "y": b.y,
                          "w": b.w, "h": b.h, "img_width": c.width, "img_height": c.height, "track_id": -1})
        tasks.append({"task_id": c.task_id, "sha256": c.sha256, "boxes": len(c.parsed.boxes),
                      "no_objects": c.parsed.no_objects})
    ann = pd.DataFrame(boxes, columns=["task_id", *ANNOTATION_COLUMNS]).astype({"task_id": "int64",
                                                                                 **ANNOTATION_COLUMNS})
    t = pd.DataFrame(tasks, columns=["task_id", "sha256", "boxes", "no_objects"]).astype(
        {"task_id": "int64", "sha256": "string", "boxes": "int64", "no_objects": "bool"})
    return ann, t


def pull(project: LabelingProject, repo: DataRepository, dataset: str, gate_params: GateParams,
         min_agreement: float = 0.7, min_iou: float = 0.5, split: str = "auto", push: bool = True) -> PullResult:
    """Export → quality (honeypots, peers) → labeling-batch gate → ingest the accepted tasks into `dataset`."""
    export = project.export()
    per_task = collect(export, project.annotator_names())
    honeypots = project.honeypots()
    quality = assess({t: {n: p.boxes for n, (_, p) in by.items()} for t, by in per_task.items()}, honeypots,
                     min_agreement, min_iou=min_iou)
    chosen, held = choose(per_task, quality, set(honeypots))
    res = PullResult(len(export), sum(1 for by in per_task.values() if by), held_back=held,
                     quality=quality.to_dict())
    labeled, _ = repo.current(dataset)
    done = set(labeled.loc[labeled["labeled"].astype(bool), "sha256"])
    res.already = sum(c.sha256 in done for c in chosen)
    chosen = [c for c in chosen if c.sha256 not in done]
    if chosen:
        ann, tasks = batch_tables(chosen)
        gate = run_batch_gate(ann, tasks, gate_params, suites_dir=find_suites(repo.root))
        res.gate = gate.report()
        for f in gate.failures:
            for row in f.rows:
                if row.get("task_id") is not None:
                    res.rejected.setdefault(int(row["task_id"]), []).append(
                        f"{f.expectation}({f.column}): {f.notes or json.dumps(f.kwargs)}"
                        + (f" [{row.get('category_name')}]" if f.column == "category_name" else ""))
        chosen = [c for c in chosen if c.task_id not in res.rejected]
        res.accepted = [c.task_id for c in chosen]
    if chosen:
        src = _materialize(project, repo, chosen)
        try:
            out = repo.ingest(src, dataset, source=_source(repo, chosen), split=split, push=push)
        finally:
            shutil.rmtree(src, ignore_errors=True)
        res.version, res.new_frames = out.version.id, out.new_frames
    res.report = str(_save(project, res))
    return res


def _source(repo: DataRepository, chosen: list[Chosen]) -> str:
    """The frames keep the source they arrived with (field, edge-hard, …)."""
    src = _pool_rows(repo, [c.sha256 for c in chosen])["source"].dropna()
    return str(src.mode().iloc[0]) if len(src) else "field"


def _pool_rows(repo: DataRepository, shas: list[str]) -> pd.DataFrame:
    """Manifest rows of frames wherever they are stored (every dataset's current manifest)."""
    frames = []
    ddir = repo.data / "datasets"
    for d in sorted(ddir.iterdir()) if ddir.exists() else []:
        if (d / "manifest.parquet").exists():
            m = pd.read_parquet(d / "manifest.parquet")
            frames.append(m[m["sha256"].isin(shas)])
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["sha256"])
    return rows.drop_duplicates("sha256").set_index("sha256", drop=False)


def _materialize(project: LabelingProject, repo: DataRepository, chosen: list[Chosen]) -> Path:
    """A folder the governance ingest reads: images, metadata.parquet, annotations.coco.json."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    src = project.state / "pulls" / f"src-{stamp}"
    (src / "images").mkdir(parents=True)
    rows = _pool_rows(repo, [c.sha256 for c in chosen])
    store = FrameStore(repo.data)
    frames, meta = [], []
    for c in chosen:
        row = rows.loc[c.sha256] if c.sha256 in rows.index else None
        if row is None:
            raise LookupError(f"task {c.task_id}: frame {c.sha256} is in no dataset of this workspace")
        name = f"images/{c.sha256}{Path(row['path']).suffix}"
        (src / name).write_bytes(store.read(row["path"]))
        frames.append({"file_name": name, "sha256": c.sha256, "width": c.width, "height": c.height})
        meta.append({"file_name": name, **{k: row[k] for k in ("camera_id", "district", "timestamp", "condition",
                                                                "conditions")}})
    boxes: dict[str, list[Box]] = {c.sha256: c.parsed.boxes for c in chosen}
    (src / "annotations.coco.json").write_text(json.dumps(to_coco(frames, boxes)))
    pd.DataFrame(meta).to_parquet(src / "metadata.parquet", index=False)
    return src


def _save(project: LabelingProject, res: PullResult) -> Path:
    path = project.state / "pulls" / f"pull-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res.to_dict(), indent=1, default=str))
    return path
