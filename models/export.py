"""Export a Detector to ONNX, check the export against torch, and quantize it to INT8.

This module imports torch; the torch-free side (models.card, models.runtime) never imports it.

- ``export_onnx``: one self-contained .onnx file (weights inside, no .onnx.data), dynamic batch,
  input/output names from the model card, checked by ``onnx.checker`` (full check).
- ``check_parity``: the same frames through torch and onnxruntime; raw outputs and decoded
  detections compared.
- ``quantize_int8``: static INT8 (QDQ, per-channel weights) calibrated on given frames.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from cityloop.models.card import ModelCard, OutputSpec
from cityloop.models.components.detector import Detector
from cityloop.models.runtime import OnnxDetector, _sigmoid, decode_outputs, preprocess

BATCH = 32  # frames per forward pass in check_parity and per calibration batch


# ---------------------------------------------------------------------- export


def export_onnx(model: Detector, card: ModelCard, path: Path, opset: int = 18) -> Path:
    """Write `model` (eval mode) as one self-contained ONNX file with a dynamic batch dimension.

    Uses torch's default (dynamo / torch.export based) exporter. Input name and (H, W) come from
    card.input, output names from card.output.names. The file is checked with
    ``onnx.checker.check_model(full_check=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = tuple(card.output.names)
    if len(names) != 3:
        raise ValueError(f"a Detector has 3 outputs (heatmap, wh, offset); card names {names}")
    spec = card.input
    was_training = model.training
    model.eval()
    # Batch 2, not 1: torch.export specialises dimensions of size 0/1, which would pin the batch.
    dummy = torch.rand(2, 3, spec.height, spec.width, generator=torch.Generator().manual_seed(0))
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model, (dummy,), str(path), input_names=[spec.name], output_names=list(names),
                opset_version=opset, dynamo=True, external_data=False, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
    finally:
        model.train(was_training)
    graph = onnx.load(str(path))
    if split_reduce_means(graph):
        onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path


def split_reduce_means(model: onnx.ModelProto) -> int:
    """Rewrite every ReduceMean over several axes as a chain of single-axis ReduceMeans, in place.

    Why: the Detector standardises each image by its own mean and std (x.mean/x.std over C, H, W:
    110,592 values at 192 px). onnxruntime's CPU ReduceMean sums them in float32 one after the
    other, so the mean comes out ~4e-5 off (torch's pairwise sum: ~1e-7) and the standardised
    input ~2.5e-4 off; a trained model amplifies that to ~5e-3 in the heatmap logits and ~0.07 px
    in box sizes (measured), which fails a 1e-4 parity check. A mean of means over whole axes
    is the same mean (every slice has the same length), and each step sums at most a few hundred
    values, so the error drops back to ~1e-7. Returns the number of nodes rewritten.
    """
    g = model.graph
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    nodes, rewritten = [], 0
    for n in g.node:
        axes = None
        if n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx") and len(n.input) > 1 and n.input[1] in consts:
            axes = sorted({int(a) for a in np.atleast_1d(consts[n.input[1]])}, reverse=True)
        if axes is None or len(axes) < 2 or axes[-1] < 0:
            nodes.append(n)
            continue
        keepdims = next((a.i for a in n.attribute if a.name == "keepdims"), 1)
        current = n.input[0]
        for k, axis in enumerate(axes):  # highest axis first: lower indices stay valid without keepdims
            name = f"{n.name or 'ReduceMean'}_axis{axis}"
            g.initializer.append(onnx.numpy_helper.from_array(np.array([axis], np.int64), f"{name}_axes"))
            out = n.output[0] if k == len(axes) - 1 else f"{name}_out"
            nodes.append(onnx.helper.make_node("ReduceMean", [current, f"{name}_axes"], [out], name=name,
                                               keepdims=keepdims))
            current = out
        rewritten += 1
    if rewritten:
        del g.node[:]
        g.node.extend(nodes)
        used = {i for n in g.node for i in n.input}
        unused = [t for t in g.initializer if t.name not in used and t.name not in {i.name for i in g.input}]
        for t in unused:
            g.initializer.remove(t)
        dead = [n for n in g.node if n.op_type == "Constant" and n.output[0] not in used
                and n.output[0] not in {o.name for o in g.output}]
        for n in dead:
            g.node.remove(n)
    return rewritten


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's 'torchvision is not installed. Skipping torchvision::nms' log lines
    and the FutureWarning it triggers inside torch (treespec LeafSpec); errors still raise.
    (verbose=False already drops its '[torch.onnx] ...' progress prints.)"""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def has_external_data(path: Path) -> bool:
    """True when any initializer of the ONNX file lives outside it."""
    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


# ---------------------------------------------------------------------- parity


@dataclass
class ParityResult:
    """torch vs onnxruntime on the same frames.

    max_abs_diff: per output name, max |torch - onnx| over all frames and cells.
    boxes_equal: every decoded detection has a counterpart (same label, coords within box_tolerance),
        float-noise ties aside (see check_parity).
    max_box_diff: worst coordinate difference (input px) over paired detections.
    score_diff: worst score difference over paired detections.
    """

    max_abs_diff: dict[str, float]
    boxes_equal: bool
    max_box_diff: float
    score_diff: float
    tolerance: float
    frames: int
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def torch_outputs(model: Detector, batch: np.ndarray) -> list[np.ndarray]:
    """model(batch) in eval/inference mode, outputs as numpy."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            outs = model(torch.from_numpy(batch))
    finally:
        model.train(was_training)
    return [o.float().numpy() for o in outs]


def _fragile(dets: np.ndarray, heat: np.ndarray, spec: OutputSpec, tolerance: float) -> np.ndarray:
    """Per detection (N, 6) of one image: is it kept or placed by float noise alone?

    True when its score is within `tolerance` of the cut (the score threshold, or the last kept
    score when the list hit max_detections), or when its 3x3 peak test is a near-tie (another
    cell of the neighbourhood within `tolerance`): on a flat heatmap float noise decides which of
    two cells is the peak. `heat` is that image's (C, h, w) logits; a detection's cell is found by
    its score, which decode copies from the probability map bit for bit.
    """
    if not len(dets) or spec.format != "centernet":
        return np.zeros(len(dets), bool)
    prob = _sigmoid(heat)
    ring = np.ones((3, 3), np.uint8)
    ring[1, 1] = 0
    cut = float(dets[:, 4].min()) if len(dets) >= spec.max_detections else spec.score_threshold
    out = dets[:, 4] - cut <= tolerance
    neighbour_max: dict[int, np.ndarray] = {}
    for i, (x0, y0, x1, y1, score, label) in enumerate(dets):
        if out[i]:
            continue
        c = int(label)
        if c not in neighbour_max:
            neighbour_max[c] = cv2.dilate(prob[c], ring)
        ys, xs = np.nonzero(prob[c] == score)
        if not len(ys):
            continue
        k = int(np.argmin(np.abs(xs * spec.stride - (x0 + x1) / 2) + np.abs(ys * spec.stride - (y0 + y1) / 2)))
        out[i] = neighbour_max[c][ys[k], xs[k]] >= score - tolerance
    return out


def _match(ref: np.ndarray, got: np.ndarray, ref_fragile: np.ndarray, got_fragile: np.ndarray,
           box_tolerance: float) -> tuple[float, float, int, str]:
    """Pair the detections (N, 6) [x0, y0, x1, y1, score, label] of one image.

    Greedy, in ref's score order: each ref box takes the closest unused box of the same label if
    all its coordinates are within `box_tolerance`, so that two near-equal scores ranked the other
    way round do not count as a difference. Unpaired detections are forgiven when fragile (see
    _fragile). Returns (worst coord diff, worst score diff over pairs, forgiven, what differed).
    """
    used = np.zeros(len(got), bool)
    box_diff = score_diff = 0.0
    hard: list[tuple[np.ndarray, float]] = []
    forgiven = 0
    for i, r in enumerate(ref):
        cand = np.nonzero(~used & (got[:, 5] == r[5]))[0]
        d = np.abs(got[cand, :4] - r[:4]).max(1) if len(cand) else np.array([np.inf])
        k = int(np.argmin(d))
        if d[k] <= box_tolerance:
            used[cand[k]] = True
            box_diff = max(box_diff, float(d[k]))
            score_diff = max(score_diff, float(abs(got[cand[k], 4] - r[4])))
        elif ref_fragile[i]:
            forgiven += 1
        else:
            hard.append((r, float(d[k])))
    for j in np.nonzero(~used)[0]:
        if got_fragile[j]:
            forgiven += 1
        else:
            hard.append((got[j], float("inf")))
    if not hard:
        return box_diff, score_diff, forgiven, ""
    box_diff = max(box_diff, max(d for _, d in hard))
    h = hard[0][0]
    return (box_diff, score_diff, forgiven,
            f"{len(ref)} torch vs {len(got)} onnx detections, {len(hard)} without a counterpart within "
            f"{box_tolerance:g} px (e.g. label {int(h[5])} score {h[4]:.4f} at ({h[0]:.1f}, {h[1]:.1f}))")


def check_parity(model: Detector, onnx_path: Path, card: ModelCard, images: list[np.ndarray],
                 tolerance: float = 1e-4, box_tolerance: float = 0.5) -> ParityResult:
    """Run RGB uint8 `images` through torch and onnxruntime and compare.

    Raw outputs: an output is within tolerance when |torch - onnx| <= tolerance * max(1, |torch|)
    everywhere (absolute for offsets, relative for large values such as box sizes in px), except a
    centernet heatmap, whose logits are compared as the scores the decoder reads: |sigmoid(torch) -
    sigmoid(onnx)| <= tolerance. (Deep in the background a logit of -13 moves by 1e-3 between two
    correct float32 runtimes, a score change of 2e-9: a deeper network failed the logit rule on that
    alone, while a 1e-3 logit error where a score is 0.5 still fails.) max_abs_diff reports the plain
    absolute difference of each output. Decoded detections (card.output): every
    detection has a counterpart of the same label with all coordinates within `box_tolerance` px,
    and paired scores are within `tolerance`. Detections that float noise alone can add, drop or
    move (a score at the threshold/top-k cut, a near-tied 3x3 peak on a flat heatmap) are not
    counted against parity; `reason` says how many there were. `passed` is all of the above;
    `reason` names what differed (empty when passed and nothing was fragile).
    """
    if not images:
        raise ValueError("check_parity needs at least one image")
    names, spec = list(card.output.names), card.output
    scores_from_logits = spec.format == "centernet"  # output 0: heatmap logits (card.OutputSpec)
    runner = OnnxDetector(Path(onnx_path), card)
    max_abs = dict.fromkeys(names, 0.0)
    max_excess = dict.fromkeys(names, 0.0)  # worst |diff| / max(1, |torch|)
    problems: list[str] = []
    box_ok, box_diff, score_diff, borderline = True, 0.0, 0.0, 0
    for start in range(0, len(images), BATCH):
        batch = preprocess(images[start : start + BATCH], card.input)
        ref, got = torch_outputs(model, batch), runner.raw(batch)
        for k, (name, r, g) in enumerate(zip(names, ref, got)):
            if r.shape != g.shape:
                problems.append(f"{name}: shape {tuple(g.shape)} vs torch {tuple(r.shape)}")
                max_abs[name] = float("inf")
                continue
            diff = np.abs(r.astype(np.float64) - g)
            max_abs[name] = max(max_abs[name], float(diff.max(initial=0.0)))
            if k == 0 and scores_from_logits:
                excess = np.abs(_sigmoid(r.astype(np.float64)) - _sigmoid(g.astype(np.float64)))
            else:
                excess = diff / np.maximum(1.0, np.abs(r))
            max_excess[name] = max(max_excess[name], float(excess.max(initial=0.0)))
        if problems:
            break
        for i, (dr, dg) in enumerate(zip(decode_outputs(ref, spec), decode_outputs(got, spec))):
            bd, sd, soft, why = _match(dr, dg, _fragile(dr, ref[0][i], spec, tolerance),
                                       _fragile(dg, got[0][i], spec, tolerance), box_tolerance)
            box_diff, score_diff, borderline = max(box_diff, bd), max(score_diff, sd), borderline + soft
            if why:
                box_ok = False
                problems.append(f"detections, frame {start + i}: {why}")
    for name in reversed(names):
        if max_excess[name] > tolerance and not any(p.startswith(f"{name}:") for p in problems):
            what = (f"max score diff {max_excess[name]:.3g} (logits {max_abs[name]:.3g})"
                    if scores_from_logits and name == names[0] else f"max abs diff {max_abs[name]:.3g}")
            problems.insert(0, f"{name}: {what} > tolerance {tolerance:g}")
    if score_diff > tolerance:
        problems.append(f"scores: max diff {score_diff:.3g} > tolerance {tolerance:g}")
    reason = "; ".join(problems[:6]) + (f"; ... ({len(problems) - 6} more)" if len(problems) > 6 else "")
    if borderline:
        reason += ("; " if reason else "") + (f"note: {borderline} fragile detection(s) (near-tie peak or at the "
                                              "score/top-k cut) found by one runtime only, not counted")
    return ParityResult(max_abs_diff=max_abs, boxes_equal=box_ok, max_box_diff=box_diff, score_diff=score_diff,
                        tolerance=tolerance, frames=len(images), passed=not problems, reason=reason)


# ---------------------------------------------------------------------- INT8


class FrameCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed batches of RGB uint8 frames to onnxruntime's calibrator."""

    def __init__(self, card: ModelCard, images: list[np.ndarray], batch_size: int = 8) -> None:
        self.card, self.images, self.batch_size = card, images, batch_size
        self._it = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), self.batch_size):
            yield {self.card.input.name: preprocess(self.images[start : start + self.batch_size], self.card.input)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def head_convs(model: onnx.ModelProto, output_names: tuple[str, ...]) -> list[str]:
    """Names of the nodes that produce the graph outputs, walked back through elementwise ops
    (the wh head is Conv -> Clip -> Exp -> Mul) to the last Conv of each head, inclusive."""
    producer = {o: n for n in model.graph.node for o in n.output}
    init = {t.name for t in model.graph.initializer}
    found: list[str] = []
    for out in output_names:
        node = producer.get(out)
        while node is not None:
            found.append(node.name)
            if node.op_type == "Conv":
                break
            data_in = [i for i in node.input if i and i not in init and i in producer]
            node = producer[data_in[0]] if len(data_in) == 1 else None
    return found


def quantize_int8(fp32_path: Path, out_path: Path, card: ModelCard, calibration_images: list[np.ndarray]) -> Path:
    """Static INT8 (QDQ: U8 activations, per-channel S8 weights), MinMax-calibrated on the frames.

    The graph is first run through ``quant_pre_process`` (ONNX shape inference + ORT graph
    optimisation; Conv+BN are already fused by the exporter). Its symbolic shape inference is
    skipped: it fails on this graph ("Incomplete symbolic shape inference", the Resize/Expand of
    the dynamic batch) and, failing, leaves sym_shape_infer_temp.onnx and a <uuid>.data file in
    the working directory; it only matters for transformer-style graphs anyway.

    Measured (lab-trained width-16 model, 200 held-out lab frames, 32 calibration frames):
    mAP50 0.6607 -> 0.6620, mAP 0.3456 -> 0.3436; 3.7x smaller file, ORT throughput 1.4-2x.
    Quantizing the heads too (all op types, nothing excluded) kept 65% instead of 73% of the
    FP32 top-20 peaks (untrained, earlier depthwise width-24 Detector) and 8x the wh error, for
    no measurable speed.

    Kept in float on purpose:
    - the output heads (last Conv of heatmap/wh/offset and the Clip/Exp/Mul after wh's Conv):
      heatmap logits feed a sigmoid + 3x3 peak test and a score threshold, and wh goes through exp,
      so 8-bit steps there move scores and box sizes the most; these are 3 small 1x1 convs, cheap
      in float.
    - the per-image standardisation at the input (ReduceMean/Sub/Sqrt/Div): only Conv, Resize,
      Add, Mul, Relu and Concat are quantized (op_types_to_quantize), so the statistics of the
      frame itself stay exact.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not calibration_images:
        raise ValueError("quantize_int8 needs calibration images")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cityloop-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre))
        exclude = head_convs(graph, tuple(card.output.names))
        first_conv = next(n for n in graph.graph.node if n.op_type == "Conv")
        feeds_conv = {first_conv.input[0]}
        # The elementwise ops of the input standardisation (Sub/Div/Mul...) come before the first
        # Conv: exclude every node upstream of it.
        producer = {o: n for n in graph.graph.node for o in n.output}
        stack = list(feeds_conv)
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in exclude:
                exclude.append(node.name)
                stack.extend(node.input)
        quantize_static(
            str(pre), str(out_path), FrameCalibrationReader(card, calibration_images),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "Relu", "Add", "Mul", "Resize", "Concat"],
            nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=False,
        )
    onnx.checker.check_model(str(out_path), full_check=True)
    return out_path
