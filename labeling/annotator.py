"""The scripted annotator: labels tasks through the Label Studio API as a person's annotations arrive.

It draws the simulator's ground truth and applies an error model (missed boxes, label flips,
box jitter, skips) at a given speed. A box the truth marks hidden (under half of the object shows)
is boxed and marked "mostly hidden", as the labeling interface asks a person to. Each scripted
annotator is a real Label Studio user; its annotations are created through the same endpoint the
editor posts to, with `completed_by` set to that user and the lead time it "spent". A person can
take over in the browser at any time: the scripted annotator only takes tasks that have no
annotation yet (or too few, for overlap).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cityloop.governance.schema import CLASSES
from cityloop.labeling.convert import Box, no_objects_result, to_result
from cityloop.scenarios import registry

MIN_DRAWN = 4.0  # px: the smallest box an annotator drags in the editor
# the confusions people make (helmet cue missed, a stall taken for garbage...): each class's unit says
CONFUSIONS = registry().confusions


@dataclass(frozen=True)
class ErrorModel:
    """Per-annotator habits. Rates are probabilities per box (miss, flip) or per task (skip)."""

    name: str
    miss: float = 0.03
    flip: float = 0.02
    jitter: float = 1.0  # std of each box edge in px
    skip: float = 0.0
    seconds: float = 0.0  # time spent per task (sleeps; the lead time recorded is this plus noise)
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping) -> ErrorModel:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown annotator settings {sorted(unknown)} for {d.get('name')!r}")
        return cls(**d)


def truth_path(src: Path) -> Path:
    """Where a simulator output keeps its ground truth: SRC/annotations.coco.json, or SRC.truth.json beside
    a folder whose truth was moved aside so that it is ingested unlabeled (a camera's pool)."""
    inside = Path(src) / "annotations.coco.json"
    return inside if inside.exists() else Path(src).with_name(Path(src).name + ".truth.json")


def truth_from_folder(src: Path) -> dict[str, list[Box]]:
    """Ground truth per frame sha256 from a simulator output (images/ + its COCO, see truth_path)."""
    import hashlib

    coco = json.loads(truth_path(src).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    sha = {im["id"]: hashlib.sha256((Path(src) / im["file_name"]).read_bytes()).hexdigest() for im in coco["images"]}
    out: dict[str, list[Box]] = {s: [] for s in sha.values()}
    for a in coco["annotations"]:
        out[sha[a["image_id"]]].append(Box(names[a["category_id"]], *map(float, a["bbox"]),
                                           hidden=bool(a.get("iscrowd", 0))))
    return out


def corrupt(boxes: Sequence[Box], model: ErrorModel, rng: np.random.Generator, width: int, height: int) -> list[Box]:
    """Apply the error model to the true boxes (jittered boxes stay inside the image)."""
    out = []
    for b in boxes:
        if rng.random() < model.miss:
            continue
        cls = CONFUSIONS.get(b.cls, b.cls) if rng.random() < model.flip else b.cls
        x0, y0, x1, y1 = (np.array([b.x, b.y, b.x + b.w, b.y + b.h]) + rng.normal(0, model.jitter, 4)).tolist()
        x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
        y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
        # people drag a box at least as large as what they see: a small object is not shrunk by the jitter
        w, h = max(x1 - x0, min(b.w, MIN_DRAWN)), max(y1 - y0, min(b.h, MIN_DRAWN))
        x0, y0 = min(x0, width - w), min(y0, height - h)
        out.append(Box(cls if cls in CLASSES else b.cls, x0, y0, w, h, hidden=b.hidden))
    return out


@dataclass
class AnnotateResult:
    annotator: str
    annotated: int
    skipped: int
    seconds: float


def annotate(ls, tasks: Iterable[dict], model: ErrorModel, user_id: int, truth: Mapping[str, Sequence[Box]],
             limit: int | None = None, progress: Callable[[int], None] | None = None) -> AnnotateResult:
    """Label tasks (dicts with id, data, and the annotators already on it) until `limit`.

    A task this annotator already labeled is left alone; a frame with no known truth is skipped
    (as a person skips a frame they cannot judge).
    """
    rng = np.random.default_rng([model.seed, user_id])
    done = skipped = 0
    t0 = time.perf_counter()
    for t in tasks:
        if limit is not None and done + skipped >= limit:
            break
        if user_id in t.get("annotators", []):
            continue
        data = t["data"]
        if model.seconds:
            time.sleep(model.seconds)
        lead = float(model.seconds + abs(rng.normal(0, 0.1 * model.seconds + 0.01)))
        if data["sha256"] not in truth or rng.random() < model.skip:
            ls.annotations.create(id=t["id"], result=[], was_cancelled=True, completed_by=user_id, lead_time=lead)
            skipped += 1
        else:
            w, h = int(data["width"]), int(data["height"])
            boxes = corrupt(truth[data["sha256"]], model, rng, w, h)
            result = to_result(boxes, w, h) if boxes else no_objects_result()
            ls.annotations.create(id=t["id"], result=result, completed_by=user_id, lead_time=lead)
            done += 1
        if progress:
            progress(1)
    return AnnotateResult(model.name, done, skipped, time.perf_counter() - t0)


def open_tasks(export: list[dict]) -> list[dict]:
    """Tasks of a JSON export in the shape `annotate` takes (who already annotated each)."""
    return [{"id": t["id"], "data": t["data"], "annotators": [annotator_id(a) for a in t.get("annotations", [])]}
            for t in export]


def annotator_id(annotation: dict) -> int | None:
    """The Label Studio user id of an exported annotation (`completed_by` is an id or a user dict)."""
    by = annotation.get("completed_by")
    return by.get("id") if isinstance(by, dict) else by


def assign(tasks: Sequence[dict], names: Sequence[str], honeypots: set[int], overlap_share: float = 0.1,
           seed: int = 0) -> dict[str, list[dict]]:
    """Split open tasks among annotators: round-robin, `overlap_share` of them to two annotators
    (inter-annotator agreement), every honeypot to everyone (each annotator's known-answer score).
    Tasks someone already annotated (a person in the browser, an earlier run) are left out."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict]] = {n: [] for n in names}
    k = 0
    for t in sorted(tasks, key=lambda t: t["id"]):
        if t["id"] in honeypots:
            for n in names:
                out[n].append(t)
            continue
        if t["annotators"]:
            continue
        first = names[k % len(names)]
        out[first].append(t)
        if len(names) > 1 and rng.random() < overlap_share:
            out[names[(k + 1) % len(names)]].append(t)
        k += 1
    return out


def run_team(project, models: Sequence[ErrorModel], truth: Mapping[str, Sequence[Box]], overlap_share: float = 0.1,
             seed: int = 0, progress: Callable[[int], None] | None = None) -> list[AnnotateResult]:
    """Every scripted annotator labels its share of the project's open tasks, all at the same time
    (one thread each, as a team works: each annotator one task after another)."""
    from concurrent.futures import ThreadPoolExecutor

    ids = project.annotator_ids([m.name for m in models])
    plan = assign(open_tasks(project.export()), [m.name for m in models], set(project.honeypots()),
                  overlap_share, seed)
    with ThreadPoolExecutor(max(1, len(models))) as pool:
        jobs = [pool.submit(annotate, project.ls, plan[m.name], m, ids[m.name], truth, progress=progress)
                for m in models]
        return [j.result() for j in jobs]
