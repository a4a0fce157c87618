"""Hostile partner packages: every bad manifest field is a failed check in the admission report
(never an exception out of `admit`), a declared input of 100000 x 100000 is refused before anything
is allocated, and the smoke run and benchmark run in a child process whose memory and wall time
are limited (registry.admission_memory_mb / admission_timeout_s).
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cityloop.governance.gate import GateParams
from cityloop.governance.repository import DataRepository
from cityloop.models.admission import admit, check_card
from cityloop.models.card import ModelCard
from tests.conftest import make_workspace
from tests.models.test_registry import _bench_frames, boxes_graph, failed, gate_of, package, params


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with field-bench@v1 (20 frames, one car each): the benchmark admission scores on."""
    ws = make_workspace(tmp_path_factory.mktemp("hostile-admission") / "ws")
    src = ws.parent / "bench-src"
    _bench_frames(src)
    gate = GateParams.from_dict({"min_frames_per_class": 1, "max_class_share": 1.0, "required_classes": ["car"]})
    DataRepository(ws, gate).ingest(src, "field-bench", split="bench", docs=False)
    return ws


def centernet_graph(size=(192, 192)) -> onnx.ModelProto:
    """A well-formed "centernet" detector (2 classes, stride 4): what a stride of 0 would divide by."""
    h, w = size
    names = ("heatmap", "wh", "offset")
    inits = [numpy_helper.from_array(np.full((2, 3, 1, 1), 0.1, np.float32), f"w_{n}") for n in names]
    nodes = [helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4])]
    nodes += [helper.make_node("Conv", ["pooled", f"w_{n}"], [n]) for n in names]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2, "h", "w"]) for n in names]
    graph = helper.make_graph(nodes, "partner-centernet",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, h, w])], outs,
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="acme-exporter")
    model.ir_version = 8
    return model


def greedy_graph(elements: int) -> onnx.ModelProto:
    """A "boxes" detector that passes every static check but asks onnxruntime for `elements` floats."""
    model = boxes_graph()
    producer = next(n for n in model.graph.node if "boxes" in n.output)
    producer.output[list(producer.output).index("boxes")] = "boxes0"
    model.graph.initializer.append(numpy_helper.from_array(np.array([elements], np.int64), "huge_shape"))
    model.graph.node.extend([
        helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceMax", ["huge"], ["huge_max"], keepdims=0),
        helper.make_node("Mul", ["huge_max", "zero"], ["huge_zero"]),
        helper.make_node("Add", ["boxes0", "huge_zero"], ["boxes"])])
    return model


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_declared_100000_square_input_is_refused_before_anything_is_allocated(ws: Path, tmp_path: Path):
    reg = gate_of(ws, params())
    pkg = package(tmp_path, "acme-huge", boxes_graph(size=(100_000, 100_000)),
                  input={"name": "images", "height": 100_000, "width": 100_000})
    before, t0 = _peak_rss_mb(), time.monotonic()
    report = admit(reg, pkg)  # a blank batch of 2 would be 2 x 3 x 1e10 float32 = 240 GB
    assert not report.admitted and report.version is None
    assert set(failed(report.checks)) == {"card"}, failed(report.checks)
    assert "100000 x 100000 = 10000000000 pixels is over the limit of 16777216" in report.reason
    assert "limits.max_image_pixels" in report.reason
    assert "runtime" not in {c.name for c in report.checks}  # onnxruntime never opened it
    assert _peak_rss_mb() - before < 200 and time.monotonic() - t0 < 20
    saved = json.loads(Path(report.path).read_text())  # the report is the answer, on disk too
    assert not saved["admitted"] and saved["reason"] == report.reason
    assert not reg.store.list("acme-huge")


@pytest.mark.parametrize("field, value, text", [
    ("output", {"format": "centernet", "names": ["heatmap", "wh", "offset"], "stride": 0},
     "output.stride must be an integer >= 1: 0"),
    ("output", {"format": "centernet", "names": ["heatmap", "wh", "offset"], "stride": "4"},
     "output.stride must be an integer >= 1: '4'"),
    ("output", {"format": "centernet", "names": ["heatmap", "wh", "offset"], "max_detections": 10**9},
     "output.max_detections must be an integer in 1..10000"),
    ("output", {"format": "centernet", "names": ["heatmap", "wh", "offset"], "score_threshold": float("nan")},
     "output.score_threshold must be a number in [0, 1]"),
    ("input", {"name": "images", "std": [1.0, 0.0, 1.0]}, "input.std must not hold 0"),
    ("input", {"name": "images", "height": -192}, "input height/width must be integers >= 1"),
    ("input", {"name": "images", "resize": "crop"}, "input.resize must be one of ['stretch']"),
    ("classes", [7, None], "classes must be a list of non-empty strings"),
])
def test_an_invalid_card_field_is_a_failed_check_in_the_report(ws: Path, tmp_path: Path, field, value, text):
    reg = gate_of(ws, params())
    name = f"acme-{field}-{abs(hash(json.dumps(value, default=str))) % 10_000}"
    pkg = package(tmp_path, name, centernet_graph(), **{field: value})
    report = admit(reg, pkg)  # before: `stride: 0` raised ZeroDivisionError out of admit
    assert not report.admitted
    assert set(failed(report.checks)) == {"card"}, failed(report.checks)
    assert text in failed(report.checks)["card"] and text in report.reason
    assert "runtime" not in {c.name for c in report.checks}
    assert json.loads(Path(report.path).read_text())["reason"] == report.reason


@pytest.mark.parametrize("field, value", [("input", []), ("output", 3), ("input", {"height": 192, "colour": 1})])
def test_a_manifest_of_the_wrong_shape_is_a_failed_check(ws: Path, tmp_path: Path, field, value):
    report = admit(gate_of(ws, params()), package(tmp_path, f"acme-shape-{field}", **{field: value}))
    assert not report.admitted and set(failed(report.checks)) == {"manifest"}, failed(report.checks)
    assert "manifest.json is not a model card" in report.reason


def test_a_valid_centernet_card_passes_the_card_check():  # the control: the check is not a blanket refusal
    card = ModelCard(name="acme", version="", vendor="acme", classes=["car", "person"])
    assert check_card(card, 4096 * 4096).passed


def test_the_sandbox_stops_a_graph_that_asks_for_too_much_memory(ws: Path, tmp_path: Path):
    reg = gate_of(ws, params(admission_memory_mb=1536))
    pkg = package(tmp_path, "acme-greedy", greedy_graph(3 * 2**30))  # 12 GiB of float32 at run time
    before = _peak_rss_mb()
    report = admit(reg, pkg)
    assert not report.admitted
    problems = failed(report.checks)
    assert set(problems) == {"runtime"}, problems  # the contract was fine: the run was stopped
    assert "[sandbox: 1536 MB address space" in problems["runtime"] or "1536 MB address-space limit" in \
        problems["runtime"], problems
    assert _peak_rss_mb() - before < 200  # the caller's process never held it
    assert not reg.store.list("acme-greedy")


def test_the_sandbox_stops_a_run_over_its_wall_time(ws: Path, tmp_path: Path):
    reg = gate_of(ws, params(admission_timeout_s=0.2))
    t0 = time.monotonic()
    report = admit(reg, package(tmp_path, "acme-slow"))
    assert time.monotonic() - t0 < 15
    assert not report.admitted
    assert "still running after 0.2 s (registry.admission_timeout_s)" in failed(report.checks)["runtime"]
