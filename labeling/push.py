"""`label push`: score the unlabeled pool with the current model, select a batch, import it with
pre-annotations, mixing in known-answer (honeypot) tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from cityloop.governance.repository import DataRepository
from cityloop.governance.store import FrameStore
from cityloop.labeling.convert import Box, coco_boxes, to_result
from cityloop.labeling.project import LabelingProject, TaskRecord
from cityloop.labeling.select import DISMISSED_ALERT, Candidate, select


@dataclass
class PushParams:
    """The `labeling:` knobs push reads."""

    budget: int = 100
    strategy: str = "active"
    random_share: float = 0.2
    max_camera_share: float = 0.25
    prediction_threshold: float = 0.3  # boxes below this are not shown to annotators as pre-annotations
    honeypot_share: float = 0.05
    seed: int = 0


@dataclass
class PushResult:
    project_id: int
    batch: str
    task_ids: list[int]
    honeypot_ids: list[int]
    strategy: str
    model: str
    data: str
    pool_left: int
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def label_classes(card) -> list[str]:
    """The classes annotators box for a model: the platform classes its outputs map onto, in platform order."""
    from cityloop.governance.schema import CLASSES
    from cityloop.models.store import model_classes

    mapped = set(model_classes(card))
    return [c for c in CLASSES if c in mapped]


def labeled_elsewhere(repo: DataRepository, datasets: list[str]) -> set[str]:
    """sha256 of frames already labeled in the target dataset(s): never sent again."""
    out: set[str] = set()
    for d in datasets:
        manifest, _ = repo.current(d)
        out |= set(manifest.loc[manifest["labeled"].astype(bool), "sha256"])
    return out


def push(project: LabelingProject, repo: DataRepository, detector, model_id: str, data: str, params: PushParams,
         exclude: set[str] = frozenset(), honeypot_data: str | None = None,
         progress: Callable[[int], None] | None = None) -> PushResult:
    """Select `budget` frames of `data` (a pool version), export them to the project's media and import
    them as tasks with the model's predictions; add honeypots from `honeypot_data` (a labeled version)."""
    import time

    t0 = time.perf_counter()
    batch = datetime.now(UTC).strftime("b%Y%m%dT%H%M%S%f")
    manifest, _ = repo.load(data)
    # frames already in the project (its own export too: a push killed after the import left no records)
    sent = {r.sha256 for r in project.records().values()} | {t["data"].get("sha256") for t in project.export()}
    pool = manifest[~manifest["sha256"].isin(sent | set(exclude))].reset_index(drop=True)
    store = FrameStore(repo.data)
    images = [_decode(store.read(p)) for p in pool["path"]]
    dets = detector.detect(images) if images else []
    t_score = time.perf_counter()
    reasons = pool["reason"].fillna("").astype(str) if "reason" in pool.columns else pd.Series([""] * len(pool))
    cands = [Candidate(r.sha256, r.camera_id, r.condition, [d.score for d in ds],
                       first=DISMISSED_ALERT if why == DISMISSED_ALERT else None)
             for r, ds, why in zip(pool.itertuples(), dets, reasons)]
    picks = select(cands, params.budget, params.strategy, params.random_share, params.max_camera_share, params.seed)
    row = {sha: i for i, sha in enumerate(pool["sha256"])}
    tasks, recs = [], []
    for p in picks:
        i = row[p.sha256]
        tasks.append(_task(project, store, pool.iloc[i], dets[i], model_id, data, batch, p.strategy,
                           params.prediction_threshold))
        recs.append(TaskRecord(0, p.sha256, batch, p.strategy, p.reason, round(p.uncertainty, 4), p.stratum))
    hp_tasks = _honeypots(project, repo, store, detector, model_id, honeypot_data, data, batch, params,
                          len(picks), sent)
    # honeypots at random places of the batch: task ids must not give them away
    order = np.random.default_rng(params.seed).permutation(len(tasks) + len(hp_tasks))
    all_tasks = tasks + [t for t, _ in hp_tasks]
    created = project.import_tasks([all_tasks[k] for k in order])
    ids = [0] * len(all_tasks)
    for k, tid in zip(order, created):
        ids[k] = tid
    if progress:
        progress(len(ids))
    for rec, tid in zip(recs, ids):
        rec.task_id = tid
    hp_ids = ids[len(tasks):]
    hp_recs = [TaskRecord(tid, t["data"]["sha256"], batch, params.strategy, "honeypot", 0.0, "honeypot", True)
               for tid, (t, _) in zip(hp_ids, hp_tasks)]
    project.add_honeypots({tid: boxes for tid, (_, boxes) in zip(hp_ids, hp_tasks)})
    project.add_records(recs + hp_recs)
    reasons = pd.Series([r.reason for r in recs], dtype=str).value_counts().to_dict()
    t1 = time.perf_counter()
    return PushResult(project.id, batch, ids[: len(tasks)], hp_ids, params.strategy, model_id, data,
                      len(pool) - len(picks), reasons, {"score": t_score - t0, "import": t1 - t_score})


def _decode(data: bytes) -> np.ndarray:
    from cityloop.models.runtime import decode_image

    return decode_image(data)


def _task(project: LabelingProject, store: FrameStore, row: pd.Series, dets: list, model_id: str, data: str,
          batch: str, strategy: str, threshold: float) -> dict:
    """One task: the frame (written to the project's media folder), its metadata and the prediction."""
    ext = Path(row["path"]).suffix or ".jpg"
    name = f"{row['sha256']}{ext}"
    target = project.media / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(store.read(row["path"]))
        tmp.replace(target)
    width, height = int(row["width"]), int(row["height"])
    shown = [d for d in dets if d.score >= threshold and d.cls]
    boxes = [Box(d.cls, d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0, d.score) for d in shown]
    score = float(np.mean([b.score for b in boxes])) if boxes else 0.0
    return {"data": {"image": project.image_url(name), "sha256": row["sha256"], "camera_id": str(row["camera_id"]),
                     "district": str(row["district"]), "condition": str(row["condition"]),
                     "timestamp": pd.Timestamp(row["timestamp"]).isoformat(), "width": width, "height": height,
                     "dataset": data, "batch": batch, "strategy": strategy},
            "predictions": [{"model_version": model_id, "score": round(score, 4),
                             "result": to_result(boxes, width, height)}]}


def _honeypots(project: LabelingProject, repo: DataRepository, store: FrameStore, detector, model_id: str,
               data: str | None, pool_data: str, batch: str, params: PushParams, n_tasks: int,
               sent: set[str]) -> list[tuple[dict, list[Box]]]:
    """Known-answer tasks drawn from a labeled version; they look exactly like the others."""
    n = int(np.ceil(n_tasks * params.honeypot_share)) if data and params.honeypot_share > 0 and n_tasks else 0
    if n == 0:
        return []
    manifest, coco = repo.load(data)
    answers = coco_boxes(coco)
    gold = manifest[manifest["labeled"].astype(bool) & ~manifest["sha256"].isin(sent)]
    gold = gold.sample(n=min(n, len(gold)), random_state=params.seed) if len(gold) else gold
    images = [_decode(store.read(p)) for p in gold["path"]]
    dets = detector.detect(images) if images else []
    out = []
    for (_, row), ds in zip(gold.iterrows(), dets):
        # shown as one more frame of the pool: indistinguishable from the batch's other tasks
        task = _task(project, store, row, ds, model_id, pool_data, batch, params.strategy,
                     params.prediction_threshold)
        out.append((task, answers.get(row["sha256"], [])))
    return out
