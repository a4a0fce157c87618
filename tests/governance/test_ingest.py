"""Ingest through the real gate and real DVC: quarantine, dedup, rejection, leakage, splits."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from cityloop.governance import versioning
from cityloop.governance.gate import GateParams
from cityloop.governance.repository import DataRepository, GateFailed
from cityloop.governance.store import FrameStore


def repo(ws: Path, **gate) -> DataRepository:
    return DataRepository(ws, GateParams.from_dict(gate), holdout=("field-bench",))


def tags(ws: Path) -> list[str]:
    return subprocess.run(["git", "tag"], cwd=ws, capture_output=True, text=True, check=True).stdout.split()


def test_truncated_png_is_quarantined_with_its_reason_and_the_rest_ingested(workspace: Path, lab_copy: Path):
    images = sorted((lab_copy / "images").iterdir())
    good = images[0].read_bytes()
    # a PNG cut in half, a text file posing as an image, and a grayscale frame
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full((192, 192, 3), 120, np.uint8))
    (lab_copy / "images" / "cut.png").write_bytes(png.tobytes()[: len(png) // 2])
    (lab_copy / "images" / "notes.jpg").write_text("not an image")
    ok, gray = cv2.imencode(".png", np.full((192, 192), 90, np.uint8))
    (lab_copy / "images" / "gray.png").write_bytes(gray.tobytes())
    before = {p.name: p.read_bytes() for p in (lab_copy / "images").iterdir()}

    res = repo(workspace).ingest(lab_copy, "lab", docs=False)

    reasons = {q["file"]: q["reason"] for q in res.quarantined}
    assert set(reasons) == {"images/cut.png", "images/notes.jpg", "images/gray.png"}
    assert "truncated" in reasons["images/cut.png"] or "unreadable" in reasons["images/cut.png"]
    assert "mode L" in reasons["images/gray.png"]
    assert res.new_frames == len(images) and res.version.id == "lab@v1"
    qdir = workspace / "data" / "quarantine" / res.ingest_id
    kept = [json.loads(line) for line in (qdir / "reasons.jsonl").read_text().splitlines()]
    assert {k["file"] for k in kept} == set(reasons)
    assert (qdir / "files" / "images" / "cut.png").read_bytes() == before["cut.png"]  # nothing lost
    assert {p.name: p.read_bytes() for p in (lab_copy / "images").iterdir()} == before  # source untouched
    manifest = pd.read_parquet(workspace / "data" / "datasets" / "lab" / "manifest.parquet")
    store = FrameStore(workspace / "data")
    row = manifest[manifest.original_name == f"images/{images[0].name}"].iloc[0]
    assert store.read(row.path) == good and row.sha256 == hashlib.sha256(good).hexdigest()
    coco = json.loads((workspace / "data" / "datasets" / "lab" / "annotations.coco.json").read_text())
    assert {im["file_name"] for im in coco["images"]} == set(manifest.path)  # COCO points into the store


def test_duplicate_frames_are_stored_once(workspace: Path, lab_copy: Path):
    images = sorted((lab_copy / "images").iterdir())
    for i in range(5):  # the same bytes under new names
        shutil.copy(images[i], lab_copy / "images" / f"copy-{i}.jpg")
    r = repo(workspace)
    res = r.ingest(lab_copy, "lab", docs=False)
    assert res.new_frames == len(images) and res.duplicates == 5
    assert len(FrameStore(workspace / "data").index()) == len(images)
    again = r.ingest(lab_copy, "lab", docs=False)  # re-ingesting changes nothing, publishes nothing
    assert again.new_frames == 0 and again.version.id == "lab@v1"
    assert tags(workspace) == ["data/lab/v1"]
    other = r.ingest(lab_copy, "lab-copy", docs=False)  # another dataset reuses the stored bytes
    assert other.new_frames == len(images)
    assert len(list((workspace / "data" / "frames" / "packs").glob("*.zip"))) == 1


def test_gate_rejection_publishes_nothing_and_keeps_the_batch(workspace: Path, lab_copy: Path):
    coco_path = lab_copy / "annotations.coco.json"
    coco = json.loads(coco_path.read_text())
    coco["annotations"][3]["bbox"] = [180.0, 20.0, 40.0, 30.0]  # runs off the right edge
    coco["categories"][0]["name"] = "scooter"  # a class the platform does not know
    coco_path.write_text(json.dumps(coco))
    with pytest.raises(GateFailed) as info:
        repo(workspace).ingest(lab_copy, "lab", docs=False)
    failed = {(f.expectation, f.column) for f in info.value.result.failures}
    assert ("expect_column_values_to_be_in_set", "category_name") in failed
    assert ("expect_column_values_to_be_between", "right_margin") in failed
    assert "scooter" in info.value.result.report()
    assert tags(workspace) == [] and not (workspace / "data" / "datasets" / "lab").exists()
    staged = info.value.staging
    assert list((staged / "packs").glob("*.zip")) and json.loads((staged / "gate.json").read_text())["success"] is False


def test_frames_of_a_benchmark_set_cannot_enter_training(workspace: Path, lab_copy: Path, tmp_path: Path):
    r = repo(workspace, min_frames_per_class=1)
    bench = tmp_path / "bench"
    shutil.copytree(lab_copy, bench)
    r.ingest(bench, "field-bench", split="bench", docs=False)
    with pytest.raises(GateFailed) as info:
        r.ingest(lab_copy, "lab", docs=False)
    leak = [f for f in info.value.result.failures if f.column == "n_splits"]
    assert leak and leak[0].unexpected_count == len(list((lab_copy / "images").iterdir()))


def test_camera_split_keeps_each_camera_in_one_split(workspace: Path, lab_copy: Path):
    res = repo(workspace, min_frames_per_class=1).ingest(lab_copy, "lab", split_by="camera", docs=False)
    manifest = pd.read_parquet(workspace / "data" / "datasets" / "lab" / "manifest.parquet")
    assert (manifest.groupby("camera_id").split.nunique() == 1).all()
    assert res.summary["frames"] == len(manifest)


def test_new_labels_for_pool_frames_make_a_new_version(workspace: Path, lab_copy: Path, tmp_path: Path):
    unlabeled = tmp_path / "pool"
    shutil.copytree(lab_copy, unlabeled)
    (unlabeled / "annotations.coco.json").unlink()
    r = repo(workspace, require_labels=False)
    v1 = r.ingest(unlabeled, "pool", split="pool", docs=False)
    assert v1.summary["labeled"] == 0
    v2 = r.ingest(lab_copy, "pool", split="pool", docs=False)
    assert v2.version.id == "pool@v2" and v2.new_frames == 0 and v2.summary["labeled"] == v1.summary["frames"]
    old, _ = r.load("pool@v1")
    new, coco = r.load("pool@v2")
    assert not old.labeled.any() and new.labeled.all() and len(coco["annotations"]) > 0
    assert versioning.resolve(workspace, "pool@latest").version == 2
