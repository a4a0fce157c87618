"""Partner admission: a third-party model enters the repository only through the standard interface.

Torch-free on purpose: never import torch, lightning, models.export or models.components here.

A partner package is a folder:

    model.onnx      the partner's artifact (any architecture or exporter)
    manifest.json   the partner's card: ModelCard fields (name, vendor, classes, class_map onto
                    platform classes — a class mapped to null is deliberately ignored —, input
                    spec, output spec with format "centernet" or "boxes")
    [*.bin ...]     external-data files the model references, if any

`admit(gate, package_dir)` first checks the contract statically (nothing of the partner's
is executed): package layout, manifest, every card field the runtime uses (types and ranges:
stride >= 1, the declared input H x W within params.yaml `limits.max_image_pixels`, before
anything is allocated), classes, size, ONNX parse, external-data locations, opset, operator
domains, input and output signature. Only then does onnxruntime open it (a session and a smoke
run on a blank batch) and score it on the gate's benchmark, both in a child process under an
address-space limit (RLIMIT_AS, `registry.admission_memory_mb`) and a wall-clock limit
(`registry.admission_timeout_s`): a graph that asks for 240 GB or never returns fails its check
in the report, and the caller goes on. Any failure, of the package or of the run, is a failed
check in the report, never an exception out of `admit`. It is
admitted, and registered with the manifest's vendor and parity "n/a (partner artifact)", only if
its target metric reaches `admission_fraction * target`. A rejected package is never copied into
the store. Either way the report goes to `data/models/admissions/<timestamp>-<name>.json` and
the events log.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnx

from cityloop.core.images import image_limit
from cityloop.core.private import child_env
from cityloop.core.settings import QUIET_ENV
from cityloop.governance.schema import CLASSES
from cityloop.models.card import ModelCard
from cityloop.models.gate import Check, Checked, PromotionGate
from cityloop.models.store import (
    ADMISSIONS_DIR,
    OWN_VENDOR,
    PARTNER_PARITY,
    ModelStore,
    RegistryError,
    check_model_name,
    model_classes,
)

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
OPSET_RANGE = (13, 21)
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
_STANDARD_SHOWN = "'' / ai.onnx / ai.onnx.ml"
OUTPUT_RANKS = {"centernet": (4, 4, 4), "boxes": (3, 2, 2)}  # in the order of card.output.names
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
_INTS = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
         onnx.TensorProto.UINT8}
RESIZE_MODES = ("stretch",)
MAX_DETECTIONS = 10_000
# what the admission child keeps of the caller's environment (by prefix): the data repository's access
CHILD_PREFIXES = ("DVC_", "GIT_", "AWS_", "OMP_NUM_THREADS")


@dataclass
class AdmissionReport(Checked):
    """The verdict on a partner package: every check, the benchmark metrics, the registered version."""

    admitted: bool
    checks: list[Check]
    metrics: dict[str, Any] | None
    reason: str
    version: str | None = None  # "<name>:v<N>" when admitted
    name: str = ""
    package: str = ""
    created: str = ""
    path: str | None = None  # the report file

    def to_markdown(self) -> str:
        verdict = f"**ADMITTED** as `{self.version}`" if self.admitted else "**REJECTED**"
        lines = [f"# Admission of `{self.name}`", "", f"Package: `{self.package}`  ", f"Time: {self.created}", "",
                 f"{verdict}: {self.reason}", "", "| check | result | value | threshold | detail |",
                 "|---|---|---|---|---|"]
        for c in self.checks:
            detail = str(c.detail).replace("|", "\\|")
            lines.append(f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {_fmt(c.value)} | {_fmt(c.threshold)} "
                         f"| {detail} |")
        if self.metrics:
            lines += ["", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(self.metrics.get(k))} |" for k in ("mAP50", "mAP")]
            for cond, m in ((self.metrics.get("by") or {}).get("condition") or {}).items():
                lines.append(f"| mAP50 {cond} | {_fmt(m.get('mAP50'))} |")
            lat = self.metrics.get("latency") or {}
            lines.append(f"| ms/image (batch 1) | {_fmt(lat.get('batch1_median_ms'))} |")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        head = f"{'ADMITTED ' + str(self.version) if self.admitted else 'REJECTED'} {self.name}: {self.reason}"
        return "\n".join([head] + [f"  [{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.detail}"
                                   for c in self.checks])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


# ---------------------------------------------------------------------- static checks


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str] | None:
    """Static dims (int) or symbolic names (str, '?' when unnamed); None when the rank is unknown."""
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and all its subgraphs (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("g"):
                yield from _graphs(a.g)
            for g in a.graphs:
                yield from _graphs(g)


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for g in _graphs(model.graph):
        yield from g.node
    for fn in model.functions:
        for node in fn.node:
            yield node
            for a in node.attribute:
                if a.HasField("g"):
                    for g in _graphs(a.g):
                        yield from g.node


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that can carry external data: initializers, sparse parts, attribute tensors."""
    graphs = list(_graphs(model.graph))
    for g in graphs:
        yield from g.initializer
        for st in g.sparse_initializer:
            yield st.values
            yield st.indices
    for node in _all_nodes(model):
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor.values
                yield a.sparse_tensor.indices


def check_external_data(model: onnx.ModelProto, pkg: Path) -> tuple[Check, dict[str, Path]]:
    """External-data locations must be relative files inside the package (no absolute, no `..`, no links out)."""
    root = pkg.resolve()
    files: dict[str, Path] = {}
    bad: list[str] = []
    n = 0
    for t in _all_tensors(model):
        entries = {e.key: e.value for e in t.external_data}
        if t.data_location != onnx.TensorProto.EXTERNAL and not entries:
            continue
        n += 1
        loc = entries.get("location", "")
        pure = PurePosixPath(loc.replace("\\", "/"))
        if not loc or pure.is_absolute() or re.match(r"^[A-Za-z]:", loc) or ".." in pure.parts:
            bad.append(f"{t.name}: location {loc!r} is absolute or escapes the package")
            continue
        target = (root / pure).resolve()
        if not target.is_relative_to(root):
            bad.append(f"{t.name}: location {loc!r} resolves outside the package ({target})")
            continue
        if not target.is_file():
            bad.append(f"{t.name}: location {loc!r} is not a file in the package")
            continue
        try:
            offset, length = int(entries.get("offset", 0)), int(entries.get("length", 0) or 0)
        except ValueError:
            bad.append(f"{t.name}: offset/length are not integers")
            continue
        if offset < 0 or length < 0 or offset + length > target.stat().st_size:
            bad.append(f"{t.name}: offset/length outside {loc!r}")
            continue
        files[pure.as_posix()] = target
    if bad:
        return Check("external_data", False, len(bad), 0, "hostile or broken external data: " + "; ".join(bad[:5])
                     + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")), {}
    detail = f"{n} tensors in {len(files)} files inside the package" if n else "none (all weights inline)"
    return Check("external_data", True, len(files), None, detail), files


def check_opset(model: onnx.ModelProto) -> Check:
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    lo, hi = OPSET_RANGE
    if not default:
        return Check("opset", False, None, f"{lo}..{hi}", "no default-domain (ai.onnx) opset import")
    v = max(default)
    return Check("opset", lo <= v <= hi, v, f"{lo}..{hi}", f"ai.onnx opset {v}")


def check_domains(model: onnx.ModelProto) -> Check:
    """Only standard operator domains; a model-local function counts if its body is standard."""
    functions = {(f.domain, f.name): f for f in model.functions}

    def standard(node: onnx.NodeProto, seen: frozenset = frozenset()) -> bool:
        if node.domain in STANDARD_DOMAINS:
            return True
        key = (node.domain, node.op_type)
        if key in functions and key not in seen:
            return all(standard(n, seen | {key}) for n in functions[key].node)
        return False

    custom = sorted({f"{n.domain}::{n.op_type}" for g in _graphs(model.graph) for n in g.node if not standard(n)})
    local = {d for d, _ in functions}
    imports = sorted({o.domain for o in model.opset_import
                      if o.domain not in STANDARD_DOMAINS and o.domain not in local})
    if custom or imports:
        return Check("domains", False, custom or imports, _STANDARD_SHOWN,
                     "custom operator domains: " + ", ".join(custom or imports))
    return Check("domains", True, None, _STANDARD_SHOWN, "standard ONNX domains only")


def check_input(model: onnx.ModelProto, card: ModelCard) -> Check:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    want = f"1 x float[N,3,{card.input.height},{card.input.width}] named {card.input.name!r}"
    if len(inputs) != 1:
        return Check("input", False, [i.name for i in inputs], want, f"expected exactly one input, got {len(inputs)}")
    inp = inputs[0]
    dims = _dims(inp)
    problems = []
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        problems.append(f"element type {onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type)}, not FLOAT")
    if dims is None or len(dims) != 4:
        problems.append(f"rank {len(dims) if dims is not None else 'unknown'}, not 4")
    else:
        if dims[1] != 3:
            problems.append(f"{dims[1]} channels, not 3")
        if dims[2] != card.input.height or dims[3] != card.input.width:
            problems.append(f"H x W {dims[2]} x {dims[3]}, declared {card.input.height} x {card.input.width}")
    if inp.name != card.input.name:
        problems.append(f"named {inp.name!r}, declared {card.input.name!r}")
    return Check("input", not problems, f"{inp.name}{dims}", want, "; ".join(problems) or "matches the manifest")


def check_outputs(model: onnx.ModelProto, card: ModelCard) -> Check:
    fmt, names = card.output.format, list(card.output.names)
    if fmt not in OUTPUT_RANKS:
        return Check("outputs", False, fmt, list(OUTPUT_RANKS), f"unknown output format {fmt!r}")
    ranks = OUTPUT_RANKS[fmt]
    want = ", ".join(f"{n}:rank {r}" for n, r in zip(names, ranks))
    if len(names) != len(ranks):
        return Check("outputs", False, names, len(ranks), f"format {fmt} has {len(ranks)} outputs, declared {names}")
    graph_out = {o.name: o for o in model.graph.output}
    problems = []
    for i, (name, rank) in enumerate(zip(names, ranks)):
        if name not in graph_out:
            problems.append(f"declared output {name!r} not in the graph (has {sorted(graph_out)})")
            continue
        dims, etype = _dims(graph_out[name]), graph_out[name].type.tensor_type.elem_type
        if dims is None or len(dims) != rank:
            problems.append(f"{name}: rank {len(dims) if dims is not None else 'unknown'}, expected {rank}")
            continue
        is_label = fmt == "boxes" and i == 2
        if etype not in (_FLOATS | _INTS if is_label else _FLOATS):
            problems.append(f"{name}: element type {onnx.TensorProto.DataType.Name(etype)}")
        if fmt == "boxes" and i == 0 and isinstance(dims[2], int) and dims[2] != 4:
            problems.append(f"{name}: last dim {dims[2]}, expected 4 (x0, y0, x1, y1)")
        if fmt == "centernet" and isinstance(dims[1], int):
            expected = len(card.classes) if i == 0 else 2
            if dims[1] != expected:
                problems.append(f"{name}: {dims[1]} channels, expected {expected}")
    return Check("outputs", not problems, names, want, "; ".join(problems) or f"{fmt}: {want}")


def check_classes(card: ModelCard) -> Check:
    if not card.classes:
        return Check("classes", False, 0, ">= 1 mapped", "the manifest declares no classes")
    dup = sorted({c for c in card.classes if card.classes.count(c) > 1})
    mapped, ignored, unmapped = {}, [], []
    for i, name in enumerate(card.classes):
        target = card.platform_class(i)
        if target is None:
            ignored.append(name)
        elif target in CLASSES:
            mapped[name] = target
        else:
            unmapped.append(f"{name} -> {target}" if target != name else name)
    problems = []
    if dup:
        problems.append(f"duplicate classes {dup}")
    if unmapped:
        problems.append(f"unmapped classes (not platform classes; map them or map them to null): {unmapped}")
    if not mapped:
        problems.append("no class maps onto a platform class")
    detail = "; ".join(problems) or (f"mapped {mapped}" + (f"; ignored (mapped to null): {ignored}" if ignored else ""))
    return Check("classes", not problems, len(mapped), ">= 1 mapped, none unknown", detail)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _card_problems(card: ModelCard, max_pixels: int) -> list[str]:
    """What is wrong with the card's fields the runtime uses (types, ranges, the input's size)."""
    i, o, problems = card.input, card.output, []
    if not isinstance(card.classes, list) or not all(isinstance(c, str) and c for c in card.classes):
        problems.append("classes must be a list of non-empty strings")
    if not isinstance(card.class_map, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in card.class_map.items()):
        problems.append("class_map must map class names to platform classes (or null)")
    if not isinstance(i.name, str) or not i.name:
        problems.append("input.name must be a non-empty string")
    if not (_is_int(i.height) and _is_int(i.width) and i.height >= 1 and i.width >= 1):
        problems.append(f"input height/width must be integers >= 1: {i.height!r} x {i.width!r}")
    elif i.height * i.width > max_pixels:
        problems.append(f"declared input {i.height} x {i.width} = {i.height * i.width} pixels is over the limit "
                        f"of {max_pixels} (params.yaml limits.max_image_pixels): refused before allocating it")
    if not _is_number(i.scale) or i.scale == 0:
        problems.append(f"input.scale must be a finite non-zero number: {i.scale!r}")
    for key in ("mean", "std"):
        v = getattr(i, key)
        if not (isinstance(v, tuple) and len(v) == 3 and all(_is_number(x) for x in v)):
            problems.append(f"input.{key} must be 3 finite numbers: {v!r}")
        elif key == "std" and any(x == 0 for x in v):
            problems.append(f"input.std must not hold 0 (a division by zero): {v!r}")
    if i.resize not in RESIZE_MODES:
        problems.append(f"input.resize must be one of {list(RESIZE_MODES)}: {i.resize!r}")
    if not (isinstance(o.names, tuple) and all(isinstance(n, str) and n for n in o.names)):
        problems.append(f"output.names must be a list of strings: {o.names!r}")
    if not _is_int(o.stride) or o.stride < 1:
        problems.append(f"output.stride must be an integer >= 1: {o.stride!r}")
    elif _is_int(i.height) and _is_int(i.width) and o.stride > min(i.height, i.width, 10**9):
        problems.append(f"output.stride {o.stride} is larger than the input ({i.height} x {i.width})")
    if not _is_number(o.score_threshold) or not 0 <= o.score_threshold <= 1:
        problems.append(f"output.score_threshold must be a number in [0, 1]: {o.score_threshold!r}")
    if not _is_int(o.max_detections) or not 1 <= o.max_detections <= MAX_DETECTIONS:
        problems.append(f"output.max_detections must be an integer in 1..{MAX_DETECTIONS}: {o.max_detections!r}")
    return problems


def check_card(card: ModelCard, max_pixels: int) -> Check:
    """Every card field the runtime reads, typed and in range; the declared input within the image limit."""
    problems = _card_problems(card, max_pixels)
    size = f"{card.input.height} x {card.input.width}"
    return Check("card", not problems, size, f"<= {max_pixels} px, stride >= 1",
                 "; ".join(problems) or f"input {size}, stride {card.output.stride}: fields valid")


def _parse_manifest(path: Path, store: ModelStore) -> tuple[Check, ModelCard | None]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("manifest.json is not a JSON object")
        raw.setdefault("version", "")
        card = ModelCard.from_dict(raw)
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # e.g. "input": [] or "output": 3
        return Check("manifest", False, None, "ModelCard", f"manifest.json is not a model card: {exc}"), None
    problems = []
    try:
        check_model_name(card.name)
    except (RegistryError, TypeError) as exc:
        problems.append(str(exc))
    if not card.vendor or card.vendor == OWN_VENDOR:
        problems.append(f"vendor must name the partner (not empty, not {OWN_VENDOR!r})")
    if card.task != "detection":
        problems.append(f"task {card.task!r}: only detection is admitted")
    if not problems:
        others = {mv.card.vendor for mv in store.list(card.name)} - {card.vendor}
        if others:
            problems.append(f"model name {card.name!r} already belongs to vendor(s) {sorted(others)}")
    if problems:
        return Check("manifest", False, card.name, "ModelCard", "; ".join(problems)), card
    return Check("manifest", True, card.name, "ModelCard", f"{card.name} by {card.vendor}"), card


# ---------------------------------------------------------------------- runtime checks


def _smoke(model_path: Path, card: ModelCard) -> Check:
    """onnxruntime opens it, and a blank batch of 2 gives outputs of the declared shapes."""
    from cityloop.models.runtime import OnnxDetector

    try:
        det = OnnxDetector(model_path, card)
        outs = det.raw(np.zeros((2, 3, card.input.height, card.input.width), np.float32))
    except Exception as exc:  # noqa: BLE001 - any failure of the partner's graph is a rejection
        return Check("runtime", False, None, None, f"onnxruntime cannot run it: {type(exc).__name__}: {exc}"[:500])
    shapes = [tuple(int(s) for s in np.shape(o)) for o in outs]
    problems = []
    if card.output.format == "boxes":
        (b, s, labels) = shapes
        if not (len(b) == 3 and b[0] == 2 and b[2] == 4 and s == b[:2] and labels == b[:2]):
            problems.append(f"boxes/scores/labels shapes {shapes}, expected (2,K,4), (2,K), (2,K)")
    else:
        h, w = card.input.height // card.output.stride, card.input.width // card.output.stride
        expected = [(2, len(card.classes), h, w), (2, 2, h, w), (2, 2, h, w)]
        if shapes != expected:
            problems.append(f"heatmap/wh/offset shapes {shapes}, expected {expected}")
    if not all(np.all(np.isfinite(np.asarray(o, np.float64))) for o in outs):
        problems.append("non-finite outputs on a blank batch")
    return Check("runtime", not problems, shapes, None, "; ".join(problems) or "session created; blank batch of 2 ok")


# ---------------------------------------------------------------------- the sandbox


def _jsonable(o: Any) -> Any:
    return o.item() if hasattr(o, "item") else str(o)  # numpy scalars stay numbers


def _run_partner(job: dict[str, Any]) -> dict[str, Any]:
    """In the child: the smoke run, then (if it passed) the benchmark. Failures are data, not raises."""
    model, card = Path(job["model"]), ModelCard.from_dict(job["card"])
    smoke = _smoke(model, card)
    out: dict[str, Any] = {"runtime": smoke.to_dict(), "metrics": None, "benchmark_error": None}
    if smoke.passed:
        from cityloop.models.evaluate import evaluate_onnx

        try:
            out["metrics"] = evaluate_onnx(model, card, Path(job["root"]), job["benchmark"], classes=job["classes"])
        except Exception as exc:  # noqa: BLE001 - the partner's graph failing on real frames is a rejection
            out["benchmark_error"] = f"{type(exc).__name__}: {exc}"[:500]
    return out


def _child_main() -> int:
    """`python -m cityloop.models.admission`: one job (JSON on stdin) under the address-space limit."""
    import resource

    job = json.loads(sys.stdin.read())
    limit = int(job["memory_mb"] * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # before the partner's graph is opened
    try:
        out = {"ok": True, **_run_partner(job)}
    except MemoryError:
        out = {"ok": False, "error": f"MemoryError: over the {job['memory_mb']:g} MB address-space limit "
                                     "(registry.admission_memory_mb)"}
    except Exception as exc:  # noqa: BLE001 - reported, never raised into the caller
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    Path(job["result"]).write_text(json.dumps(out, default=_jsonable))
    return 0


def run_sandboxed(job: dict[str, Any], memory_mb: float, timeout_s: float) -> dict[str, Any]:
    """Run `job` (_run_partner's) in a child process with RLIMIT_AS = `memory_mb` and a wall-clock
    limit; its result, or {"ok": False, "error": why} when it failed, died or ran out of time."""
    with tempfile.TemporaryDirectory(prefix="cityloop-admission-") as tmp:
        result = Path(tmp) / "result.json"
        payload = json.dumps({**job, "memory_mb": memory_mb, "result": str(result)}, default=_jsonable)
        env = child_env(QUIET_ENV, keep=[k for k in os.environ if k.startswith(CHILD_PREFIXES)])
        try:
            proc = subprocess.run([sys.executable, "-m", "cityloop.models.admission"], input=payload, text=True,
                                  capture_output=True, timeout=timeout_s, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"still running after {timeout_s:g} s (registry.admission_timeout_s): "
                                          "stopped"}
        if result.exists():
            return json.loads(result.read_text())
    code = proc.returncode
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    return {"ok": False, "error": f"the admission run died ({how}) under the {memory_mb:g} MB address-space "
                                  f"limit (registry.admission_memory_mb): {tail}"[:500]}


# ---------------------------------------------------------------------- admit


def _sandboxed_checks(checks: list[Check], model_path: Path, card: ModelCard, gate: PromotionGate
                      ) -> dict[str, Any] | None:
    """The smoke run and the benchmark, in the limited child: their checks appended; the metrics."""
    params = gate.params
    threshold = params.admission_fraction * params.target
    out = run_sandboxed({"model": str(model_path), "card": card.to_dict(), "root": str(gate.store.root),
                         "benchmark": params.benchmark, "classes": model_classes(card) or None},
                        params.admission_memory_mb, params.admission_timeout_s)
    if not out.get("ok"):
        checks.append(Check("runtime", False, None, f"<= {params.admission_memory_mb:g} MB, "
                            f"<= {params.admission_timeout_s:g} s", f"sandboxed run failed: {out.get('error')}"))
        return None
    runtime = Check(**out["runtime"])
    if not runtime.passed:  # e.g. an allocation refused under the address-space limit
        runtime.detail += (f" [sandbox: {params.admission_memory_mb:g} MB address space, "
                           f"{params.admission_timeout_s:g} s]")
    checks.append(runtime)
    if not runtime.passed:
        return None
    metrics, metric = out["metrics"], params.target_metric
    if metrics is None:
        checks.append(Check("benchmark", False, None, threshold, f"benchmark run failed: {out['benchmark_error']}"))
        return None
    value = metrics.get(metric)
    checks.append(Check("benchmark", value is not None and value >= threshold, value, threshold,
                        f"{metric} on {metrics['benchmark']} (classes {model_classes(card)}) >= "
                        f"{params.admission_fraction} x target {params.target}"))
    return metrics


def admit(gate: PromotionGate, package_dir: Path) -> AdmissionReport:
    """Check a partner package against the contract, benchmark it (the gate's params: benchmark,
    target, admission_fraction, max_model_mb), and store it if it qualifies."""
    params, store = gate.params, gate.store
    created = datetime.now(UTC)
    pkg = Path(package_dir).absolute()
    checks: list[Check] = []
    card: ModelCard | None = None
    model: onnx.ModelProto | None = None
    external: dict[str, Path] = {}
    model_path, manifest_path = pkg / MODEL_FILE, pkg / MANIFEST_FILE

    layout = [f"{f.name}: missing" for f in (model_path, manifest_path) if not f.exists()]
    layout += [f"{f.name}: a symbolic link or not a regular file" for f in (model_path, manifest_path)
               if f.exists() and (f.is_symlink() or not f.is_file())]
    checks.append(Check("package", not layout, str(pkg), f"{MODEL_FILE} + {MANIFEST_FILE}",
                        "; ".join(layout) or "model.onnx and manifest.json present"))
    if not layout:
        mcheck, card = _parse_manifest(manifest_path, store)
        checks.append(mcheck)
        if card is not None:
            checks.append(check_card(card, image_limit(store.root)))
            if checks[-1].passed:
                checks.append(check_classes(card))
            else:
                card = None  # its fields are not safe to use: no check or run below reads them
        limit = params.max_model_mb
        size_mb = model_path.stat().st_size / 1e6
        if size_mb > limit:
            checks.append(Check("size", False, round(size_mb, 3), limit,
                                f"model.onnx is {size_mb:.3f} MB > {limit} MB"))
        else:
            try:
                model = onnx.load(str(model_path), load_external_data=False)
                checks.append(Check("onnx", True, model.ir_version, None,
                                    f"parses (IR {model.ir_version}, producer {model.producer_name or '?'})"))
            except Exception as exc:  # noqa: BLE001 - DecodeError and friends
                checks.append(Check("onnx", False, None, None, f"model.onnx does not parse as ONNX: "
                                    f"{type(exc).__name__}: {exc}"[:400]))
        if model is not None:
            ext_check, external = check_external_data(model, pkg)
            checks.append(ext_check)
            total = size_mb + sum(p.stat().st_size for p in external.values()) / 1e6
            checks.append(Check("size", total <= limit, round(total, 3), limit,
                                f"{total:.3f} MB (model.onnx + {len(external)} external-data files)"))
            checks.append(check_opset(model))
            checks.append(check_domains(model))
            if card is not None:
                checks.append(check_input(model, card))
                checks.append(check_outputs(model, card))

    metrics: dict[str, Any] | None = None
    contract_ok = model is not None and card is not None and all(c.passed for c in checks)
    if contract_ok:
        metrics = _sandboxed_checks(checks, model_path, card, gate)

    admitted = all(c.passed for c in checks) and metrics is not None
    name = card.name if card is not None and _valid_name(card.name) else _slug(pkg.name)
    failed = [c for c in checks if not c.passed]
    reason = ("all checks passed" if admitted else "failed " + "; ".join(f"{c.name}: {c.detail}" for c in failed))
    report = AdmissionReport(admitted, checks, metrics, reason, None, name, str(pkg),
                             created.strftime("%Y-%m-%dT%H:%M:%SZ"))
    report_path = store.dir / ADMISSIONS_DIR / f"{created.strftime('%Y%m%dT%H%M%S%fZ')}-{name}.json"
    report.path = str(report_path)

    def write(version: str | None = None) -> None:
        report.version = version
        if version:
            report.reason = f"admitted as {version}: all {len(checks)} checks passed"
        report_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = report_path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(report.to_dict(), indent=1, default=str))
        os.replace(tmp, report_path)

    if admitted:
        if card.version:  # the partner's own version label; ours is assigned at registration
            card = dataclasses.replace(card, extra={**card.extra, "partner_version": card.version})
        try:
            store.register(model_path, card, extra_files=external, parity=PARTNER_PARITY, evaluation=metrics,
                           attach=write, source=str(pkg))
        except RegistryError as exc:  # e.g. refused at registration: keep the report truthful
            report.admitted = False
            report.reason = f"registration refused: {exc}"
            store.record([store.event("rejected", None, why=report.reason, name=name, action="admit",
                                      package=str(pkg), report=str(report_path))], attach=write)
    else:
        store.record([store.event("rejected", None, why=reason, name=name, action="admit",
                                  vendor=card.vendor if card else None, package=str(pkg),
                                  report=str(report_path))], attach=write)
    return report


def _valid_name(name: str) -> bool:
    try:
        check_model_name(name)
        return True
    except RegistryError:
        return False


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")[:60]
    return s or "package"


__all__ = ["AdmissionReport", "admit", "check_card", "check_classes", "check_domains", "check_external_data",
           "check_input", "check_opset", "check_outputs", "run_sandboxed"]


if __name__ == "__main__":  # the sandbox's child (run_sandboxed)
    sys.exit(_child_main())
