"""The algorithm repository: evaluation (vs pycocotools by hand), registration, the promotion gate,
rollback, immutability and partner admission — with real DVC, git and onnxruntime.

Test models are built with onnx.helper (no torch): "boxes"-format graphs whose outputs are
computed from the input, scored on a tiny benchmark whose frames we control (one car at a fixed
place, day and night), so a model predicting that box scores mAP50 = 1 and a shifted box 0.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from cityloop.governance.gate import GateParams
from cityloop.governance.repository import DataRepository
from cityloop.governance.schema import CATEGORY_IDS
from cityloop.models.card import InputSpec, ModelCard, OutputSpec
from cityloop.models.evaluate import detections_to_coco, evaluate, load_benchmark
from cityloop.models.gate import PromotionGate, RegistryParams
from cityloop.models.runtime import Detection
from cityloop.models.store import ModelStore, RegistryError
from tests.conftest import make_workspace

REPO = Path(__file__).resolve().parents[2]
BOX = (60.0, 80.0, 64.0, 40.0)  # the car in every benchmark frame, xywh
XYXY = (BOX[0], BOX[1], BOX[0] + BOX[2], BOX[1] + BOX[3])
SHIFTED = (120.0, 10.0, 184.0, 50.0)  # no overlap with the car
FRAMES = 20  # even: day, odd: night


# ---------------------------------------------------------------------- fixtures


def gate_of(ws: Path, p: RegistryParams, track: bool = False) -> PromotionGate:
    """The workspace's store behind a gate with params `p`."""
    return PromotionGate(ModelStore(ws, track=track, parity_tolerance=p.parity_tolerance), p)


def _bench_frames(src: Path) -> None:
    """20 frames 192x192: day (bright) / night (dark), districts d1/d2, one car at BOX."""
    (src / "images").mkdir(parents=True)
    images, anns, meta = [], [], []
    x, y, w, h = (int(v) for v in BOX)
    for i in range(FRAMES):
        night = i % 2 == 1
        img = np.full((192, 192, 3), (30 if night else 170) + i, np.uint8)
        img[y:y + h, x:x + w] = (90, 20, 20) if night else (200, 40, 40)
        name = f"images/f{i:03d}.jpg"
        (src / name).write_bytes(cv2.imencode(".jpg", img)[1].tobytes())
        images.append({"id": i + 1, "file_name": name, "width": 192, "height": 192})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": CATEGORY_IDS["car"], "bbox": list(BOX),
                     "area": BOX[2] * BOX[3], "iscrowd": 0})
        meta.append({"file_name": name, "camera_id": f"cam{i % 2}", "district": "d1" if i < FRAMES // 2 else "d2",
                     "timestamp": pd.Timestamp("2024-05-01", tz="UTC") + pd.Timedelta(minutes=i),
                     "condition": "night" if night else "day"})
    (src / "annotations.coco.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": CATEGORY_IDS["car"], "name": "car"}]}))
    pd.DataFrame(meta).to_parquet(src / "metadata.parquet")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace (git + DVC, as tests/conftest.py builds) with field-bench@v1 published.

    Shared by the tests of this module (the ingest is the slow part); each test uses its own
    model names, so registry state does not leak between them.
    """
    ws = make_workspace(tmp_path_factory.mktemp("registry") / "ws")
    src = ws.parent / "bench-src"
    _bench_frames(src)
    gate = GateParams.from_dict({"min_frames_per_class": 1, "max_class_share": 1.0, "required_classes": ["car"]})
    res = DataRepository(ws, gate).ingest(src, "field-bench", split="bench", docs=False)
    assert res.version.id == "field-bench@v1"
    return ws


def params(**kw) -> RegistryParams:
    base = {"benchmark": "field-bench@latest", "target": 0.9, "latency_budget_ms": 10_000.0}
    return RegistryParams.from_dict({**base, **kw})


# ---------------------------------------------------------------------- ONNX builders (no torch)


def boxes_graph(box=XYXY, score: str = "const", label: int = 0, size=(192, 192), channels: int = 3,
                opset: int = 17, extra_nodes=(), extra_opsets=()) -> onnx.ModelProto:
    """A "boxes"-format detector: one box per image, computed from the input.

    score "const": 0.9 on every frame; "bright": 0.9 only on bright (day) frames, none at night.
    """
    h, w = size
    inits = [numpy_helper.from_array(np.asarray(box, np.float32).reshape(1, 1, 4), "box"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.9, np.float32), "score"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "ax12"),
             numpy_helper.from_array(np.array([[label]], np.int64), "label"),
             numpy_helper.from_array(np.linspace(0, 1, 1024, dtype=np.float32), "calib")]  # "weights": 4 kB
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("ReduceMax", ["calib"], ["cmax"], keepdims=0),
             helper.make_node("Mul", ["cmax", "zero"], ["czero"]),
             helper.make_node("Mul", ["m", "czero"], ["z"]),
             helper.make_node("Add", ["z", "one"], ["ones"]),
             helper.make_node("Unsqueeze", ["ones", "ax12"], ["ones3"]),
             helper.make_node("Mul", ["ones3", "box"], ["boxes"])]
    if score == "const":
        nodes.append(helper.make_node("Mul", ["ones", "score"], ["s"]))
    else:
        inits.append(numpy_helper.from_array(np.array(0.4, np.float32), "bright_thr"))
        nodes += [helper.make_node("Greater", ["m", "bright_thr"], ["is_day"]),
                  helper.make_node("Cast", ["is_day"], ["day_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["day_f", "score"], ["s"])]
    nodes += [helper.make_node("Unsqueeze", ["s", "ax1"], ["scores"]),
              helper.make_node("Unsqueeze", ["z", "ax1"], ["z2"]),
              helper.make_node("Cast", ["z2"], ["z2i"], to=TensorProto.INT64),
              helper.make_node("Add", ["z2i", "label"], ["labels"]), *extra_nodes]
    graph = helper.make_graph(
        nodes, "partner", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", channels, h, w])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 1, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets],
                              producer_name="acme-exporter")
    model.ir_version = 8
    return model


def card(name: str, vendor: str = "cityloop", classes=("car",), class_map=None, gates=None) -> ModelCard:
    return ModelCard(name=name, version="", vendor=vendor, classes=list(classes), class_map=class_map or {},
                     input=InputSpec(), output=OutputSpec(format="boxes", names=("boxes", "scores", "labels")),
                     gates=gates or {})


PASSED = {"passed": True, "max_abs_diff": 2e-6}


def own_model(tmp: Path, name: str, **kw) -> Path:
    path = tmp / f"{name}-{len(list(tmp.glob('*.onnx')))}.onnx"
    model = boxes_graph(**kw)
    model.doc_string = path.name  # every call a distinct artifact (the registry deduplicates equal bytes)
    onnx.save(model, path)
    return path


def package(tmp: Path, folder: str, model: onnx.ModelProto | None = None, external: bool = False,
            **manifest) -> Path:
    """A partner package: model.onnx (+ weights.bin when external) and manifest.json."""
    pkg = tmp / folder
    pkg.mkdir()
    model = model if model is not None else boxes_graph()
    if external:
        onnx.save_model(model, pkg / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.bin", size_threshold=1024)
    else:
        (pkg / "model.onnx").write_bytes(model.SerializeToString())
    c = card(manifest.pop("name", folder), manifest.pop("vendor", "acme"),
             manifest.pop("classes", ("vehicle", "bicycle")),
             manifest.pop("class_map", {"vehicle": "car", "bicycle": None})).to_dict()
    c.pop("version")
    c.pop("stage")
    c.update(manifest)
    (pkg / "manifest.json").write_text(json.dumps(c))
    return pkg


def failed(checks) -> dict[str, str]:
    return {c.name: c.detail for c in checks if not c.passed}


# ---------------------------------------------------------------------- evaluate


def test_evaluate_equals_pycocotools_by_hand_and_sanity(ws: Path):
    rng = np.random.default_rng(0)
    # a multi-class ground truth with several boxes per image, and noisy predictions
    gt = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for n, i in CATEGORY_IDS.items()]}
    preds: dict[int, list[Detection]] = {}
    classes = ["car", "person", "garbage"]
    rows = []
    for img_id in range(1, 31):
        sha = f"{img_id:064x}"
        gt["images"].append({"id": img_id, "width": 192, "height": 192, "sha256": sha, "file_name": ""})
        rows.append({"sha256": sha, "condition": ["day", "night", "rain"][img_id % 3], "district": "d1"})
        preds[img_id] = []
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 140, 2)
            w, h = rng.uniform(10, 50, 2)
            cls = classes[int(rng.integers(0, 3))]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": img_id, "sha256": sha,
                                      "category_id": CATEGORY_IDS[cls], "bbox": [x, y, w, h], "area": w * h,
                                      "iscrowd": 0})
            jx, jy = rng.normal(0, 4, 2)
            hit_cls = cls if rng.random() > 0.2 else classes[int(rng.integers(0, 3))]
            preds[img_id].append(Detection(x + jx, y + jy, x + jx + w, y + jy + h, float(rng.random()), 0, hit_cls))
        preds[img_id].append(Detection(0, 0, 20, 20, 0.5, 3, None))  # a class the model maps to nothing: dropped
    manifest = pd.DataFrame(rows)
    out = evaluate(gt, preds, manifest)

    results = detections_to_coco(preds)
    assert len(results) == sum(len(v) for v in preds.values()) - 30 and out["dropped_detections"] == 30
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {**gt, "info": {}}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(results))), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert abs(out["mAP50"] - ev.stats[1]) < 1e-9 and abs(out["mAP"] - ev.stats[0]) < 1e-9
    assert 0.2 < out["mAP50"] < 1.0 and out["mAP"] < out["mAP50"]
    assert set(out["per_class"]) == set(classes)  # classes without ground truth are omitted
    assert set(out["by"]["condition"]) == {"day", "night", "rain"} and set(out["by"]["district"]) == {"d1"}
    assert out["by"]["district"]["d1"]["mAP50"] == pytest.approx(out["mAP50"], abs=1e-12)
    assert sum(g["images"] for g in out["by"]["condition"].values()) == 30

    perfect = {im["id"]: [] for im in gt["images"]}
    names = {i: n for n, i in CATEGORY_IDS.items()}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        perfect[a["image_id"]].append(Detection(x, y, x + w, y + h, 1.0, 0, names[a["category_id"]]))
    best = evaluate(gt, perfect, manifest)
    assert best["mAP50"] == 1.0 and best["mAP"] == 1.0 and set(best["per_class"].values()) == {1.0}
    assert all(g["mAP50"] == 1.0 for g in best["by"]["condition"].values())
    empty = evaluate(gt, {}, manifest)
    assert empty["mAP50"] == 0.0 and empty["mAP"] == 0.0 and empty["detections"] == 0
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate(gt, {999: [Detection(0, 0, 5, 5, 1.0, 0, "car")]})

    # the benchmark of the workspace loads with its frames, in COCO order, joined on sha256
    vid, bm, bcoco, images = load_benchmark(ws, "field-bench@latest")
    assert vid == "field-bench@v1" and len(images) == FRAMES and images[0].shape == (192, 192, 3)
    assert set(bm["condition"]) == {"day", "night"}


# ---------------------------------------------------------------------- register, immutability


def test_register_refuses_models_without_passing_parity(ws: Path, tmp_path: Path):
    reg = gate_of(ws, params())
    model = own_model(tmp_path, "nopar")
    cases = [(card("nopar"), None, "no parity result"),
             (card("nopar", gates={"parity": {"passed": False, "max_abs_diff": 0.3}}), None, "parity failed"),
             (card("nopar"), {"passed": True, "max_abs_diff": 0.01}, "tolerance"),
             (card("nopar"), {"passed": True, "max_abs_diff": {"boxes": 1e-6}, "tolerance": 1e-2}, "looser"),
             (card("nopar"), "n/a (partner artifact)", "real parity check"),
             (card("nopar", vendor="acme"), None, "through admission")]
    for c, parity, why in cases:
        with pytest.raises(RegistryError, match=why.replace("(", r"\(")):
            reg.store.register(model, c, parity=parity)
    assert not (ws / "data" / "models" / "nopar").exists()
    rejected = [e for e in reg.store.events() if e["event"] == "rejected" and e["data"].get("name") == "nopar"]
    assert len(rejected) == len(cases) and all(e["who"] and e["ts"] and e["why"] for e in rejected)
    mv = reg.store.register(model, card("nopar"), parity=PASSED)  # with a passing parity result it goes in
    assert mv.id == "nopar:v1" and mv.parity["status"] == "passed"
    export_style = {"max_abs_diff": {"boxes": 3e-4, "scores": 2e-7, "labels": 0.0}, "boxes_equal": True,
                    "max_box_diff": 0.0, "score_diff": 1e-7, "tolerance": 1e-4, "frames": 16, "passed": True,
                    "reason": ""}  # models.export.ParityResult.to_dict(): relative check, absolute diffs
    other = own_model(tmp_path, "nopar")
    assert reg.store.register(other, card("nopar", gates={"parity": export_style})).id == "nopar:v2"


def test_a_line_torn_by_a_crash_never_hides_the_next_event(ws: Path, tmp_path: Path):
    store = gate_of(ws, params()).store
    a = store.register(own_model(tmp_path, "torn"), card("torn"), parity=PASSED)
    with open(store.events_path, "a", encoding="utf-8") as fh:  # a crash in the middle of an append
        fh.write('{"ts":"2026-12-03T00:00:00Z","event":"promo')
    b = store.register(own_model(tmp_path, "torn"), card("torn"), parity=PASSED)  # fsynced after the tear
    events = store.events()  # the torn line is skipped with a warning; nothing after it is lost
    assert [e["id"] for e in events if e["event"] == "registered" and e["id"].startswith("torn:")] == [a.id, b.id]
    assert store.get("torn:latest").id == b.id and store.get(b.id).stage == "candidate"


def test_versions_are_immutable_and_tracked_by_dvc(ws: Path, tmp_path: Path):
    reg = gate_of(ws, params(), track=True)  # track=True: dvc add data/models (+ push: the ingest configured a remote)
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"opaque training weights")
    model = own_model(tmp_path, "immut")
    v1 = reg.store.register(model, card("immut", gates={"parity": PASSED}), extra_files={"weights.pt": weights})
    assert v1.id == "immut:v1" and v1.stage == "candidate" and set(v1.files) == {"model.onnx", "card.json",
                                                                                   "weights.pt"}
    assert (v1.path / "weights.pt").read_bytes() == b"opaque training weights"
    stored = json.loads((v1.path / "card.json").read_text())
    assert stored["version"] == "v1" and stored["stage"] == "candidate" and stored["gates"]["parity"]["passed"]
    for p in v1.path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o444
    assert stat.S_IMODE(v1.path.stat().st_mode) == 0o555
    if os.geteuid() != 0:  # root ignores permission bits
        with pytest.raises(PermissionError):
            (v1.path / "model.onnx").write_bytes(b"overwrite")
    pointer = (ws / "data" / "models.dvc").read_text()
    assert "path: models" in pointer and "md5:" in pointer
    remote = ws / ".cityloop" / "dvc-remote"
    assert remote.is_dir() and any(remote.rglob("*"))

    # the same artifact again is v1 itself; another one is v2; v1 is untouched
    assert reg.store.register(model, card("immut", gates={"parity": PASSED})).id == "immut:v1"
    before = (v1.path / "model.onnx").read_bytes()
    shutil.move(ws / ".dvc" / "config.local", tmp_path / "config.local")  # no remote: push skipped
    try:
        v2 = reg.store.register(own_model(tmp_path, "immut"), card("immut", gates={"parity": PASSED}))
    finally:
        shutil.move(tmp_path / "config.local", ws / ".dvc" / "config.local")
    assert v2.id == "immut:v2" and (v1.path / "model.onnx").read_bytes() == before
    assert reg.store.verify("immut:v1") == [] and reg.store.get("immut:latest").id == "immut:v2"
    # tampering (possible for root, or after a chmod) is detected
    os.chmod(v1.path / "weights.pt", 0o644)
    (v1.path / "weights.pt").write_bytes(b"tampered")
    assert reg.store.verify("immut:v1") == ["weights.pt: content changed since registration"]
    with pytest.raises(RegistryError, match="not found; available"):
        reg.store.get("immut:v9")
    with pytest.raises(RegistryError, match="invalid model id"):
        reg.store.get("immut")


def test_registry_params_reject_unknown_and_missing_keys():
    with pytest.raises(ValueError, match="unknown registry params"):
        RegistryParams.from_dict({"benchmark": "field-bench@latest", "target": 0.5, "latency_budget_ms": 5,
                                  "targte": 0.9})
    with pytest.raises(ValueError, match="missing"):
        RegistryParams.from_dict({"benchmark": "field-bench@latest"})
    with pytest.raises(ValueError, match="target_metric"):
        params(target_metric="accuracy")


# ---------------------------------------------------------------------- promotion gate, rollback


def test_promotion_gate_passes_good_and_names_each_failing_check(ws: Path, tmp_path: Path):
    reg = gate_of(ws, params())
    good = reg.store.register(own_model(tmp_path, "det"), card("det"), parity=PASSED)
    d = reg.promote(good.id)
    assert d.promoted and [c.name for c in d.checks] == ["target", "condition_regression", "parity", "latency"]
    assert all(c.passed for c in d.checks) and reg.store.production("det").id == "det:v1"
    metrics = reg.store.get("det:v1").card.metrics["field-bench@v1"]
    assert metrics["mAP50"] == 1.0 and metrics["by"]["condition"]["night"]["mAP50"] == 1.0
    assert metrics["latency"]["batch1_median_ms"] > 0 and metrics["latency"]["throughput_ips"] > 0
    assert json.loads((good.path / "card.json").read_text())["stage"] == "candidate"  # card untouched
    assert not reg.promote("det:v1").promoted  # already there

    shifted = reg.store.register(own_model(tmp_path, "det", box=SHIFTED), card("det"), parity=PASSED)
    d = reg.promote(shifted.id)
    assert not d.promoted and "target" in failed(d.checks) and d.failed[0].value == 0.0

    # day-only model: overall mAP50 ~0.5 passes a 0.4 target, but night drops 1.0 -> 0.0 vs production
    day_only = reg.store.register(own_model(tmp_path, "det", score="bright"), card("det"), parity=PASSED)
    d = gate_of(ws, params(target=0.4)).promote(day_only.id)
    assert not d.promoted and set(failed(d.checks)) == {"condition_regression"}
    assert "night" in failed(d.checks)["condition_regression"] and "d1" not in d.reason

    slow = reg.store.register(own_model(tmp_path, "det"), card("det"), parity=PASSED)
    d = gate_of(ws, params(latency_budget_ms=0.0)).promote(slow.id)
    assert not d.promoted and set(failed(d.checks)) == {"latency"} and "latency" in d.reason
    assert "REFUSED" in d.render()

    assert reg.store.production("det").id == "det:v1"
    refused = [e for e in reg.store.events() if e["event"] == "promotion_refused" and e["id"].startswith("det:")]
    assert [e["id"] for e in refused] == ["det:v2", "det:v3", "det:v4"]


def test_rollback_restores_the_previous_production(ws: Path, tmp_path: Path):
    reg = gate_of(ws, params())
    a = reg.store.register(own_model(tmp_path, "rb"), card("rb"), parity=PASSED)
    assert not reg.rollback("rb").promoted  # no production yet
    assert reg.promote(a.id).promoted
    d = reg.rollback("rb")
    assert not d.promoted and "nothing to roll back to" in d.reason
    b = reg.store.register(own_model(tmp_path, "rb"), card("rb"), parity=PASSED)
    d = reg.promote(b.id)
    assert d.promoted and d.previous == "rb:v1" and "retired" in d.reason
    assert reg.store.get("rb:v1").stage == "retired" and reg.store.get("rb:production").id == "rb:v2"

    d = reg.rollback("rb", why="field alarms doubled")
    assert d.promoted and d.action == "rollback" and d.id == "rb:v1" and d.previous == "rb:v2"
    assert reg.store.production("rb").id == "rb:v1" and reg.store.get("rb:v2").stage == "retired"
    assert not reg.rollback("rb").promoted  # v1 was the first production: history exhausted
    rolled = [e for e in reg.store.events() if e["event"] == "rolled_back"]
    assert {e["id"]: e["stage"] for e in rolled} == {"rb:v2": "retired", "rb:v1": "production"}
    assert all("field alarms doubled" in e["why"] for e in rolled)


# ---------------------------------------------------------------------- partner admission


def test_admission_accepts_a_partner_boxes_model(ws: Path, tmp_path: Path):
    from cityloop.models.admission import admit

    reg = gate_of(ws, params())
    pkg = package(tmp_path, "acme-boxes", external=True)  # weights as ONNX external data, inside the package
    report = admit(reg, pkg)
    assert report.admitted, str(report)
    assert report.version == "acme-boxes:v1" and report.metrics["mAP50"] == 1.0
    names = [c.name for c in report.checks]
    assert names[:4] == ["package", "manifest", "card", "classes"] and names[-2:] == ["runtime", "benchmark"]
    assert "ignored (mapped to null): ['bicycle']" in next(c.detail for c in report.checks if c.name == "classes")
    mv = reg.store.get("acme-boxes:v1")
    assert mv.card.vendor == "acme" and mv.parity["status"] == "n/a (partner artifact)"
    assert set(mv.files) == {"model.onnx", "card.json", "weights.bin"}
    saved = json.loads(Path(report.path).read_text())
    assert saved["admitted"] and saved["version"] == "acme-boxes:v1" and Path(report.path).parent.name == "admissions"
    assert "| benchmark | pass |" in report.to_markdown()
    d = reg.promote(mv.id)  # uses the admission's evaluation; parity n/a counts for a partner artifact
    assert d.promoted and next(c for c in d.checks if c.name == "parity").detail == "n/a (partner artifact)"
    assert sum(e["event"] == "evaluated" for e in reg.store.get(mv.id).events) == 1


def test_admission_rejects_bad_packages_without_copying_them(ws: Path, tmp_path: Path):
    from cityloop.models.admission import admit

    reg = gate_of(ws, params())
    hostile_rel = boxes_graph()
    hostile_abs = boxes_graph()
    for model, loc in ((hostile_rel, "../../etc/passwd"), (hostile_abs, "/etc/passwd")):
        t = next(t for t in model.graph.initializer if t.name == "calib")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", loc), ("offset", "0"), ("length", "4096")):
            t.external_data.add(key=k, value=v)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(boxes_graph().SerializeToString()[:300])
    custom = boxes_graph(extra_nodes=[helper.make_node("FancyNMS", ["boxes"], ["nms"], domain="com.acme")],
                         extra_opsets=[helper.make_opsetid("com.acme", 1)])
    cases = {
        "bad-truncated": (package(tmp_path, "bad-truncated"), {"onnx": "does not parse"}),
        "bad-shape": (package(tmp_path, "bad-shape", boxes_graph(size=(128, 128), channels=1)),
                      {"input": "1 channels, not 3; H x W 128 x 128"}),
        "bad-classes": (package(tmp_path, "bad-classes", classes=["vehicle", "truck"],
                                class_map={"vehicle": "car", "truck": "lorry"}), {"classes": "truck -> lorry"}),
        "bad-escape": (package(tmp_path, "bad-escape", hostile_rel), {"external_data": "'../../etc/passwd'"}),
        "bad-absolute": (package(tmp_path, "bad-absolute", hostile_abs), {"external_data": "'/etc/passwd'"}),
        "bad-domain": (package(tmp_path, "bad-domain", custom), {"domains": "com.acme::FancyNMS"}),
        "bad-opset": (package(tmp_path, "bad-opset", boxes_graph(opset=11)), {"opset": "opset 11"}),
        "bad-vendor": (package(tmp_path, "bad-vendor", vendor="cityloop"), {"manifest": "vendor"}),
        "bad-score": (package(tmp_path, "bad-score", boxes_graph(box=SHIFTED)), {"benchmark": "mAP50"}),
    }
    shutil.copy(truncated, cases["bad-truncated"][0] / "model.onnx")
    for name, (pkg, expect) in cases.items():
        report = admit(reg, pkg)
        assert not report.admitted and report.version is None, name
        problems = failed(report.checks)
        assert set(problems) == set(expect), (name, problems)
        for check, text in expect.items():
            assert text in problems[check] and text in report.reason, (name, problems)
        if name != "bad-score":  # contract failures: onnxruntime never opened the file
            assert "runtime" not in {c.name for c in report.checks}, name
        assert not (ws / "data" / "models" / name).exists(), name
        saved = json.loads(Path(report.path).read_text())
        assert not saved["admitted"] and saved["reason"] == report.reason
    tiny = gate_of(ws, params(max_model_mb=1e-4))  # 100 bytes
    report = admit(tiny, package(tmp_path, "bad-size"))
    assert not report.admitted and "size" in failed(report.checks) and "MB >" in report.reason
    assert not (ws / "data" / "models" / "bad-size").exists()
    rejected = [e for e in reg.store.events() if e["event"] == "rejected" and e["data"].get("action") == "admit"]
    assert {e["data"]["name"] for e in rejected} >= set(cases) | {"bad-size"}


# ---------------------------------------------------------------------- CLI, torch-free


def test_cli_list_show_promote_admit(ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from cityloop.cli.models import app

    monkeypatch.setenv("CITYLOOP_ROOT", str(ws))
    monkeypatch.setenv("COLUMNS", "200")
    text = (ws / "params.yaml").read_text()
    doc = yaml.safe_load(text)
    doc["registry"] = {"benchmark": "field-bench@latest", "target": 0.9, "latency_budget_ms": 10000}
    (ws / "params.yaml").write_text(yaml.safe_dump(doc))
    try:
        reg = gate_of(ws, params())
        reg.store.register(own_model(tmp_path, "clidet", box=SHIFTED), card("clidet"), parity=PASSED)
        runner = CliRunner()
        res = runner.invoke(app, ["promote", "clidet:v1"])
        assert res.exit_code == 1 and "FAIL" in res.output and "REFUSED" in res.output, res.output
        res = runner.invoke(app, ["list"])
        assert res.exit_code == 0 and "clidet:v1" in res.output and "candidate" in res.output, res.output
        res = runner.invoke(app, ["show", "clidet:latest"])
        assert res.exit_code == 0 and "promotion_refused" in res.output and "by condition" in res.output
        res = runner.invoke(app, ["show", "nosuch:v1"])
        assert res.exit_code == 1 and "not found" in res.output
        res = runner.invoke(app, ["rollback", "clidet"])
        assert res.exit_code == 1 and "no production version" in res.output
        res = runner.invoke(app, ["admit", str(package(tmp_path, "cli-bad", classes=["truck"], class_map={}))])
        assert res.exit_code == 1 and "REJECTED" in res.output and "truck" in res.output, res.output
    finally:
        (ws / "params.yaml").write_text(text)


def test_registry_evaluate_admission_import_without_torch():
    code = ("import sys; import cityloop.models.store, cityloop.models.gate, cityloop.models.evaluate, "
            "cityloop.models.admission; "
            "bad = [m for m in ('torch', 'lightning', 'pytorch_lightning') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
