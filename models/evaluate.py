"""Benchmark a detector: COCO mAP (pycocotools) overall, per class, per condition/district, and latency.

Torch-free on purpose (the registry runs this on an edge box with onnxruntime only): never
import torch, lightning, models.export or models.components here.

    evaluate(gt, predictions, manifest)              -> metrics of detections already made
    evaluate_onnx(model.onnx, card, root, "field-bench@v1") -> the same on a benchmark version,
                                                        plus latency and throughput

The metrics dict:

    {"mAP50": 0.91, "mAP": 0.62, "per_class": {"car": 0.95, ...},     # AP50; classes without GT omitted
     "images": 800, "boxes": 2512, "detections": 31002, "dropped_detections": 0,
     "by": {"condition": {"day": {"mAP50": .., "mAP": .., "images": .., "boxes": ..}, ...},
            "district": {...}},
     # evaluate_onnx only:
     "benchmark": "field-bench@v1",
     "latency": {"batch1_median_ms": 3.1, "batch1_p90_ms": 3.4, "batch1_runs": 20,
                 "throughput_batch": 32, "throughput_ips": 812.0, "threads": 1}}
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cityloop.governance.schema import CATEGORY_IDS
from cityloop.models.card import ModelCard
from cityloop.models.runtime import Detection, OnnxDetector, decode_image

METRICS = ("mAP50", "mAP")


def detections_to_coco(predictions: Mapping[int, Iterable[Detection]]) -> list[dict]:
    """COCO results format: one {"image_id", "category_id", "bbox" xywh, "score"} per detection.

    Detections whose platform class is None (the model's class maps to nothing) are dropped;
    a platform class name that is not one of governance.schema.CLASSES raises ValueError.
    """
    results = []
    for image_id, dets in predictions.items():
        for d in dets:
            if d.cls is None:
                continue
            if d.cls not in CATEGORY_IDS:
                raise ValueError(f"detection class {d.cls!r} is not a platform class ({', '.join(CATEGORY_IDS)})")
            results.append({"image_id": int(image_id), "category_id": CATEGORY_IDS[d.cls],
                            "bbox": [float(v) for v in d.xywh], "score": float(d.score)})
    return results


def _quiet() -> contextlib.AbstractContextManager:
    """pycocotools prints progress on stdout; keep it off ours."""
    return contextlib.redirect_stdout(io.StringIO())


def _gt_coco(gt: dict) -> COCO:
    coco = COCO()
    dataset = dict(gt)
    dataset.setdefault("info", {})
    dataset["annotations"] = [{"iscrowd": 0, "area": float(a["bbox"][2] * a["bbox"][3]), **a}
                              for a in gt.get("annotations", [])]
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def _res_coco(gt: COCO, results: list[dict]) -> COCO:
    """pycocotools' loadRes (which mutates its input, hence the copy); an empty COCO when no results."""
    if results:
        with _quiet():
            return gt.loadRes(copy.deepcopy(results))
    res = COCO()
    res.dataset = {"info": {}, "images": list(gt.dataset["images"]), "annotations": [],
                   "categories": copy.deepcopy(gt.dataset.get("categories", []))}
    with _quiet():
        res.createIndex()
    return res


def _run(gt: COCO, res: COCO, img_ids: list[int] | None, cat_ids: list[int] | None) -> dict[str, Any]:
    """One COCOeval (bbox) over img_ids (all images when None) and cat_ids (all categories when None)."""
    boxes = len(gt.getAnnIds(imgIds=img_ids if img_ids is not None else [], catIds=cat_ids or []))
    n_images = len(img_ids) if img_ids is not None else len(gt.getImgIds())
    if boxes == 0:  # nothing to find: AP is undefined, report it as such rather than as 0 or 1
        return {"mAP50": None, "mAP": None, "per_class": {}, "images": n_images, "boxes": 0}
    ev = COCOeval(gt, res, "bbox")
    if img_ids is not None:
        ev.params.imgIds = sorted(img_ids)
    if cat_ids is not None:
        ev.params.catIds = sorted(cat_ids)
    with _quiet():
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max dets]
    prec = ev.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, all areas, maxDets 100
    cats = {c["id"]: c["name"] for c in gt.dataset.get("categories", [])}
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = prec[:, k]
        if (p > -1).any():
            per_class[cats.get(cat_id, str(cat_id))] = float(np.mean(p[p > -1]))
    return {"mAP50": float(ev.stats[1]), "mAP": float(ev.stats[0]), "per_class": per_class,
            "images": n_images, "boxes": boxes}


def evaluate(gt: dict, predictions: Mapping[int, Iterable[Detection]] | list[dict],
             manifest: pd.DataFrame | None = None,
             by: tuple[str, ...] = ("condition", "district"),
             classes: Iterable[str] | None = None) -> dict[str, Any]:
    """COCO bbox metrics of `predictions` against the ground truth `gt` (a COCO dict).

    predictions: COCO image id -> detections (platform class names), or a COCO results list.
    mAP50 / mAP are pycocotools' AP@0.5 and AP@[.5:.95] (stats[1], stats[0]); per_class is AP50
    from eval["precision"] at IoU 0.5 (classes without ground truth omitted). With a manifest,
    each `by` column is joined on sha256 and every value gets its own COCOeval on that subset
    of images (a subset without boxes reports None). `classes` restricts the evaluation to
    those platform classes (a partner model that covers a subset); None means all.
    """
    dropped = 0
    if isinstance(predictions, Mapping):
        dropped = sum(1 for dets in predictions.values() for d in dets if d.cls is None)
        results = detections_to_coco(predictions)
    else:
        results = list(predictions)
    known = {im["id"] for im in gt.get("images", [])}
    stray = sorted({r["image_id"] for r in results} - known)
    if stray:
        raise ValueError(f"predictions for image ids not in the ground truth: {stray[:10]}")
    cat_ids = None
    if classes is not None:
        classes = sorted(set(classes))
        unknown = [c for c in classes if c not in CATEGORY_IDS]
        if unknown or not classes:
            raise ValueError(f"classes must be platform classes, at least one: {unknown or classes}")
        cat_ids = [CATEGORY_IDS[c] for c in classes]
    gt_coco = _gt_coco(gt)
    res_coco = _res_coco(gt_coco, results)
    out = _run(gt_coco, res_coco, None, cat_ids)
    out.update(detections=len(results), dropped_detections=dropped, classes=classes or "all")
    if manifest is not None and by:
        id_by_sha = {im["sha256"]: im["id"] for im in gt.get("images", []) if "sha256" in im}
        rows = manifest[manifest["sha256"].isin(id_by_sha)]
        out["by"] = {}
        for col in by:
            if col not in rows.columns:
                continue
            groups: dict[str, list[int]] = {}
            for sha, value in zip(rows["sha256"], rows[col]):
                key = "unknown" if pd.isna(value) else str(value)
                groups.setdefault(key, []).append(id_by_sha[sha])
            out["by"][col] = {key: {k: v for k, v in _run(gt_coco, res_coco, ids, cat_ids).items() if k != "per_class"}
                              for key, ids in sorted(groups.items())}
    return out


def load_benchmark(root: Path, benchmark_vid: str,
                   split: str | None = None) -> tuple[str, pd.DataFrame, dict, list[np.ndarray]]:
    """(resolved version id, manifest, COCO, RGB images in COCO image order) of a dataset version.

    With `split`, only that split's frames are decoded and kept in the COCO dict.
    """
    from cityloop.governance import versioning
    from cityloop.governance.repository import DataRepository
    from cityloop.governance.store import FrameStore

    root = Path(root).resolve()
    vid = versioning.resolve(root, benchmark_vid).id
    manifest, coco = DataRepository(root).load(vid)
    if split is not None:
        keep = set(manifest.loc[manifest["split"] == split, "sha256"])
        coco = {**coco, "images": [im for im in coco["images"] if im["sha256"] in keep],
                "annotations": [a for a in coco["annotations"] if a["sha256"] in keep]}
    path_by_sha = dict(zip(manifest["sha256"], manifest["path"]))
    store = FrameStore(root / "data")
    try:
        images = [decode_image(store.read(path_by_sha[im["sha256"]])) for im in coco["images"]]
    finally:
        store.close()
    return vid, manifest, coco, images


def measure_latency(detector: OnnxDetector, images: list[np.ndarray], batch_size: int = 32,
                    runs: int = 20, batches: int = 3) -> dict[str, Any]:
    """Median/p90 ms per image at batch 1 (preprocess + infer + decode), images/s at batch_size."""
    if not images:
        return {}
    detector.detect(images[:1], 1)  # warm-up (allocations, first-run kernels)
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        detector.detect([images[i % len(images)]], 1)
        times.append((time.perf_counter() - t0) * 1000.0)
    batch = [images[i % len(images)] for i in range(batch_size)]
    detector.detect(batch, batch_size)
    t0 = time.perf_counter()
    for _ in range(batches):
        detector.detect(batch, batch_size)
    elapsed = time.perf_counter() - t0
    return {"batch1_median_ms": float(statistics.median(times)),
            "batch1_p90_ms": float(np.percentile(times, 90)), "batch1_runs": runs,
            "throughput_batch": batch_size, "throughput_ips": float(batch_size * batches / elapsed),
            "threads": int(detector.session.get_session_options().intra_op_num_threads)}


def evaluate_onnx(model_path: Path, card: ModelCard, root: Path, benchmark_vid: str,
                  batch_size: int = 32, classes: Iterable[str] | None = None) -> dict[str, Any]:
    """Run a model version on a benchmark dataset version with onnxruntime and score it.

    `classes` as in evaluate() (None: every class of the benchmark).
    """
    vid, manifest, coco, images = load_benchmark(root, benchmark_vid)
    detector = OnnxDetector(Path(model_path), card)
    t0 = time.perf_counter()
    dets = detector.detect(images, batch_size)
    seconds = time.perf_counter() - t0
    predictions = {im["id"]: d for im, d in zip(coco["images"], dets)}
    metrics = evaluate(coco, predictions, manifest, classes=classes)
    metrics["benchmark"] = vid
    metrics["latency"] = measure_latency(detector, images, batch_size)
    metrics["latency"]["benchmark_seconds"] = float(seconds)
    return metrics
