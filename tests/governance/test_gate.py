"""Tests for the Great Expectations data quality gate (governance.gate)."""

from __future__ import annotations

import json
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cityloop.governance.gate import GateFailure, GateParams, GateResult, run_gate
from cityloop.governance.schema import CATEGORY_IDS, CLASSES

N_FRAMES = 40
SIZE = 192
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
NOT_NULL = "expect_column_values_to_not_be_null"
UNIQUE = "expect_column_values_to_be_unique"


def sha(i: int) -> str:
    """A valid, distinct content address for frame i."""
    return f"{i:064x}"


def make_manifest(n: int = N_FRAMES) -> pd.DataFrame:
    """n valid 192x192 RGB frames spread over train/val/test."""
    shas = [sha(i) for i in range(n)]
    return pd.DataFrame(
        {
            "sha256": shas,
            "path": [f"frames/packs/p0.zip/{s}.jpg" for s in shas],
            "width": np.full(n, SIZE, dtype="int64"),
            "height": np.full(n, SIZE, dtype="int64"),
            "format": ["JPEG" if i % 2 else "PNG" for i in range(n)],
            "mode": "RGB",
            "bytes": np.full(n, 20_000, dtype="int64"),
            "brightness": np.linspace(20.0, 230.0, n),
            "sharpness": 100.0,
            "camera_id": "cam-01",
            "district": "d1",
            "timestamp": pd.Timestamp("2024-05-01", tz="UTC") + pd.to_timedelta(np.arange(n), "h"),
            "condition": "day",
            "conditions": "day",
            "source": "sim",
            "split": [("train", "val", "test")[i % 3] for i in range(n)],
            "original_name": [f"img_{i}.jpg" for i in range(n)],
            "ingest_id": "ingest-1",
            "labeled": True,
        }
    )


def box(ann_id: int, frame: int, name: str, x: float = 10.0, y: float = 10.0, w: float = 20.0, h: float = 20.0) -> dict:
    """One annotation row on frame `frame`."""
    return {
        "ann_id": ann_id,
        "sha256": sha(frame),
        "category_id": CATEGORY_IDS[name],
        "category_name": name,
        "x": x,
        "y": y,
        "w": w,
        "h": h,
        "img_width": SIZE,
        "img_height": SIZE,
        "track_id": -1,
    }


def make_annotations(n: int = N_FRAMES) -> pd.DataFrame:
    """Two boxes per frame, classes rotating so each class is on ~11 frames."""
    rows = []
    for i in range(n):
        rows.append(box(len(rows) + 1, i, CLASSES[i % len(CLASSES)], x=10.0, y=10.0))
        rows.append(box(len(rows) + 1, i, CLASSES[(i + 3) % len(CLASSES)], x=100.0, y=120.0, w=60, h=40))
    return pd.DataFrame(rows)


@pytest.fixture
def manifest() -> pd.DataFrame:
    return make_manifest()


@pytest.fixture
def annotations() -> pd.DataFrame:
    return make_annotations()


@pytest.fixture
def params() -> GateParams:
    return GateParams()


def find(result: GateResult, expectation: str, column: str | None, **kwargs) -> GateFailure:
    """The failure of `expectation` on `column` (kwargs must match); fails otherwise."""
    assert not result.success
    matches = [
        f
        for f in result.failures
        if f.expectation == expectation and f.column == column and all(f.kwargs.get(k) == v for k, v in kwargs.items())
    ]
    assert matches, result.report()
    return matches[0]


def names(failure: GateFailure, key: str, value) -> bool:
    """Whether an example row of the failure has key == value."""
    return any(e.get(key) == value for e in failure.examples)


def test_valid_dataset_passes(manifest, annotations, params):
    result = run_gate(manifest, annotations, params)
    assert result.success, result.report()
    assert result.failures == []
    assert result.evaluated == result.successful > 25
    assert result.report() == f"Gate passed: {result.evaluated}/{result.evaluated} expectations"
    assert result.data_docs is None


def test_wrong_mode_and_unreadable_frame(manifest, annotations, params):
    manifest.loc[3, "mode"] = "L"
    manifest.loc[4, "mode"] = None  # decoder could not open it
    manifest.loc[4, "bytes"] = 0
    result = run_gate(manifest, annotations, params)
    wrong = find(result, IN_SET, "mode")
    assert wrong.unexpected_count == 1
    assert names(wrong, "sha256", sha(3)) and names(wrong, "mode", "L")
    assert names(find(result, NOT_NULL, "mode"), "sha256", sha(4))
    assert names(find(result, BETWEEN, "bytes"), "sha256", sha(4))


def test_size_not_allowed(manifest, annotations, params):
    manifest.loc[5, "width"] = 640
    failure = find(run_gate(manifest, annotations, params), IN_SET, "size")
    assert failure.kwargs["value_set"] == ["192x192"]
    assert names(failure, "sha256", sha(5)) and names(failure, "size", "640x192")
    ok = run_gate(manifest, annotations, GateParams(allowed_sizes=["192x192", "640x192"]))
    assert ok.success, ok.report()


def test_duplicate_sha256(manifest, annotations, params):
    manifest.loc[7, "sha256"] = sha(6)
    failure = find(run_gate(manifest, annotations, params), UNIQUE, "sha256")
    assert failure.unexpected_count == 2
    assert names(failure, "sha256", sha(6))


def test_malformed_sha256(manifest, annotations, params):
    manifest.loc[8, "sha256"] = "NOT-A-HASH"
    failure = find(run_gate(manifest, annotations, params), "expect_column_values_to_match_regex", "sha256")
    assert names(failure, "sha256", "NOT-A-HASH")


@pytest.mark.parametrize("when", ["1970-01-01", "2999-01-01"])
def test_insane_timestamp(manifest, annotations, params, when):
    manifest.loc[9, "timestamp"] = pd.Timestamp(when, tz="UTC")
    failure = find(run_gate(manifest, annotations, params), BETWEEN, "timestamp")
    assert failure.unexpected_count == 1
    assert names(failure, "sha256", sha(9))
    assert failure.examples[0]["timestamp"].startswith(when)


def test_unknown_class(annotations, manifest, params):
    annotations.loc[2, "category_name"] = "bicycle"
    failure = find(run_gate(manifest, annotations, params), IN_SET, "category_name")
    assert names(failure, "ann_id", 3) and names(failure, "category_name", "bicycle")


@pytest.mark.parametrize(
    ("column", "x", "y", "w"),
    [("right_margin", 180.0, 10.0, 20.0), ("x", -3.0, 10.0, 20.0), ("y", 10.0, -2.0, 20.0)],
)
def test_box_outside_image(annotations, manifest, params, column, x, y, w):
    annotations.loc[4, ["x", "y", "w"]] = [x, y, w]
    failure = find(run_gate(manifest, annotations, params), BETWEEN, column)
    assert failure.kwargs["min_value"] == -params.box_tolerance
    assert names(failure, "ann_id", 5) and names(failure, "sha256", sha(2))


def test_box_within_tolerance_passes(annotations, manifest, params):
    annotations.loc[4, ["x", "w"]] = [-0.3, 20.0]
    annotations.loc[6, ["y", "h"]] = [160.0, 32.4]  # bottom edge at 192.4
    result = run_gate(manifest, annotations, params)
    assert result.success, result.report()


def test_box_below_min_size(annotations, manifest, params):
    annotations.loc[10, "w"] = 2.0
    result = run_gate(manifest, annotations, params)
    failure = find(result, BETWEEN, "w", min_value=params.min_box)
    assert names(failure, "ann_id", 11) and names(failure, "w", 2.0)
    # 2 px is small, not degenerate
    assert not any(f.kwargs.get("strict_min") for f in result.failures)


def test_degenerate_box(annotations, manifest, params):
    annotations.loc[12, "w"] = 0.0
    annotations.loc[13, "h"] = np.nan
    result = run_gate(manifest, annotations, params)
    degenerate = find(result, BETWEEN, "w", min_value=0, strict_min=True)
    assert names(degenerate, "ann_id", 13)
    assert names(find(result, IN_SET, "box_finite"), "ann_id", 14)


def test_box_on_frame_not_in_manifest(annotations, manifest, params):
    annotations.loc[0, "sha256"] = sha(999)
    failure = find(run_gate(manifest, annotations, params), IN_SET, "known_image")
    assert names(failure, "sha256", sha(999)) and names(failure, "ann_id", 1)


def test_category_id_not_matching_name(annotations, manifest, params):
    name = annotations.loc[1, "category_name"]
    annotations.loc[1, "category_id"] = CATEGORY_IDS[name] % len(CLASSES) + 1
    failure = find(run_gate(manifest, annotations, params), IN_SET, "category_consistent")
    assert names(failure, "ann_id", 2)


def test_duplicate_ann_id(annotations, manifest, params):
    annotations.loc[3, "ann_id"] = 3
    failure = find(run_gate(manifest, annotations, params), UNIQUE, "ann_id")
    assert failure.unexpected_count == 2 and names(failure, "ann_id", 3)


def test_class_imbalance(annotations, manifest, params):
    extra = [box(1000 + k, k % N_FRAMES, "car", x=50.0, y=50.0) for k in range(300)]
    annotations = pd.concat([annotations, pd.DataFrame(extra)], ignore_index=True)
    failure = find(run_gate(manifest, annotations, params), BETWEEN, "share")
    assert failure.suite == "dataset"
    assert failure.kwargs["max_value"] == params.max_class_share
    assert names(failure, "class_name", "car")


def test_too_few_frames_for_class(annotations, manifest, params):
    water = annotations.index[annotations["category_name"] == "water"]
    annotations = annotations.drop(water[2:])
    failure = find(run_gate(manifest, annotations, params), BETWEEN, "frames")
    assert failure.unexpected_count == 1
    assert failure.examples == [{"class_name": "water", "frames": 2}]
    optional = [c for c in CLASSES if c != "water"]
    result = run_gate(manifest, annotations, GateParams(required_classes=optional))
    assert result.success, result.report()


def test_leakage_same_frame_in_train_and_test(annotations, manifest, params):
    copy = manifest.iloc[[0]].assign(split="test")  # frame 0 is train
    manifest = pd.concat([manifest, copy], ignore_index=True)
    failure = find(run_gate(manifest, annotations, params), IN_SET, "n_splits")
    assert failure.examples == [{"sha256": sha(0), "splits": "test,train", "n_splits": 2}]


def test_leakage_train_frame_in_holdout(annotations, manifest, params):
    bench = make_manifest(3).assign(sha256=[sha(3), sha(500), sha(501)], split="bench")
    failure = find(run_gate(manifest, annotations, params, holdout=bench), IN_SET, "n_splits")
    assert failure.unexpected_count == 1
    assert names(failure, "sha256", sha(3)) and names(failure, "splits", "bench,train")
    clean = run_gate(manifest, annotations, params, holdout=bench.iloc[1:])
    assert clean.success, clean.report()


def test_unlabeled_pool(manifest):
    pool = manifest.assign(split="pool", labeled=False)
    result = run_gate(pool, pd.DataFrame(), GateParams(require_labels=False))
    assert result.success, result.report()
    required = run_gate(pool, pd.DataFrame(), GateParams())
    assert find(required, BETWEEN, "frames").unexpected_count == len(CLASSES)


def test_report_names_failed_expectation(manifest, annotations, params):
    manifest.loc[3, "mode"] = "CMYK"
    text = run_gate(manifest, annotations, params).report()
    assert text.startswith("Gate FAILED: 1 of ")
    assert "expect_column_values_to_be_in_set(column=mode)" in text
    assert "1 unexpected" in text and sha(3) in text and "CMYK" in text


def test_to_dict_is_json(manifest, annotations, params):
    manifest.loc[9, "timestamp"] = pd.Timestamp("1970-01-01", tz="UTC")
    annotations.loc[13, "h"] = np.inf
    data = run_gate(manifest, annotations, params).to_dict()
    back = json.loads(json.dumps(data, allow_nan=False))
    assert back["success"] is False and back["data_docs"] is None
    assert {f["column"] for f in back["failures"]} >= {"timestamp", "box_finite"}


def test_data_docs_written(tmp_path, manifest, annotations, params):
    before = set(Path(tempfile.gettempdir()).glob("cityloop-gx-*"))
    result = run_gate(manifest, annotations, params, docs_dir=tmp_path / "docs")
    index = Path(result.data_docs)
    assert index == (tmp_path / "docs" / "index.html").resolve()
    assert index.is_file() and "frames" in index.read_text()
    assert set(Path(tempfile.gettempdir()).glob("cityloop-gx-*")) == before


def test_no_docs_writes_nothing(tmp_path, monkeypatch, manifest, annotations, params):
    monkeypatch.chdir(tmp_path)
    run_gate(manifest, annotations, params)
    assert list(tmp_path.iterdir()) == []


def test_params_from_dict():
    p = GateParams.from_dict({"min_box": 6, "timestamp_min": date(2010, 1, 1)})
    assert p.min_box == 6 and p.timestamp_min == "2010-01-01"
    assert GateParams.from_dict(None) == GateParams()
    with pytest.raises(ValueError, match="min_bbox"):
        GateParams.from_dict({"min_bbox": 4})
    with pytest.raises(ValueError, match="required_classes"):
        GateParams.from_dict({"required_classes": ["dragon"]})


def test_params_yaml_gate_section_loads():
    import yaml

    path = Path(__file__).parents[2] / "params.yaml"
    params = GateParams.from_dict(yaml.safe_load(path.read_text())["gate"])
    assert params.allowed_sizes
