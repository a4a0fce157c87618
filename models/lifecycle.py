"""The life of a model version, written once: train → export → parity → register → evaluate.

`build_version` is the one sequence every entry point calls (the `train` flow, the closed loop,
the tests, the benchmarks); each of its steps is a plain function here, run through a
`cityloop.core.steps.StepRunner` (directly, or as a Prefect task by the flow). The dvc.yaml
stages call the same step functions through `cityloop stage …`.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cityloop.core.settings import from_section, load_params, load_section
from cityloop.core.steps import StepRunner, run_direct
from cityloop.governance.repository import DataRepository, IngestParams
from cityloop.governance.schema import CLASSES
from cityloop.governance.store import FrameStore
from cityloop.models.card import InputSpec, ModelCard, OutputSpec
from cityloop.models.gate import open_gate
from cityloop.models.runtime import decode_image
from cityloop.models.store import DEFAULT_PARITY_TOLERANCE, ModelStore

MODEL_NAME = "cityloop-detector"


@dataclass
class ExportParams:
    """The `export:` section of params.yaml: the parity check and the optional INT8 variant."""

    parity_frames: int = 16  # validation frames run through torch and onnxruntime
    int8: bool = False  # also register a static-INT8 variant when its mAP delta is within int8_max_delta
    int8_max_delta: float = 0.02

    @classmethod
    def from_dict(cls, d: dict | None) -> ExportParams:
        return from_section(cls, d, "export")


def git_commit(root: Path) -> str | None:
    """HEAD of the workspace (None outside git or before the first commit)."""
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() or None


def build_card(root: Path, data: str, parent: str | None, params: dict, score_threshold: float = 0.05) -> ModelCard:
    """The card of a cityloop-trained detector (version assigned by the registry)."""
    return ModelCard(
        name=MODEL_NAME, version="", vendor="cityloop", classes=list(CLASSES),
        input=InputSpec(height=int(params.get("size", 192)), width=int(params.get("size", 192))),
        output=OutputSpec(score_threshold=score_threshold),
        dataset=data, git_commit=git_commit(root), parent=parent, extra={"train_params": params},
    )


def sample_frames(root: Path, version: str, n: int = 16, split: str | None = None, seed: int = 0) -> list[np.ndarray]:
    """n decoded RGB frames of a dataset version (parity checks, INT8 calibration)."""
    manifest, _ = DataRepository(root).load(version)
    if split is not None and (manifest["split"] == split).any():
        manifest = manifest[manifest["split"] == split]
    rows = manifest.sample(n=min(n, len(manifest)), random_state=seed)
    store = FrameStore(Path(root) / "data")
    return [decode_image(store.read(p)) for p in rows["path"]]


log = logging.getLogger(__name__)
ARCH_PARAMS = ("width", "stage_mult", "depth", "neck")  # train params that shape the network (and its weights)


def load_detector(weights: Path, params: dict):
    """A plain Detector of a run's train params (width, stage_mult, depth, neck; the defaults where a run
    predates them) with the weights of that run or a registered version (torch imported lazily)."""
    from cityloop.models.components.detector import Detector, DetectorConfig
    from cityloop.models.module import load_weights

    arch = {k: tuple(params[k]) for k in ("stage_mult", "depth") if k in params}
    model = Detector(DetectorConfig(width=int(params.get("width", 16)), neck=int(params.get("neck", 0)), **arch))
    load_weights(model, weights)
    return model.eval()


def evaluate_split(root: Path, model_path: Path, card: ModelCard, version: str, split: str) -> dict:
    """mAP of an ONNX model on one split of a dataset version (e.g. the lab test split)."""
    from cityloop.models.evaluate import evaluate, load_benchmark
    from cityloop.models.runtime import OnnxDetector

    _, manifest, coco, images = load_benchmark(root, version, split)
    dets = OnnxDetector(Path(model_path), card).detect(images)
    result = evaluate(coco, {im["id"]: d for im, d in zip(coco["images"], dets)}, manifest)
    return {**result, "dataset": version, "split": split}


# ------------------------------------------------------------------ lifecycle steps
# Each step is one plain function: the `train` flow makes each a task, the dvc.yaml stages
# call them through `cityloop stage …`.


def train_step(root: Path, data: str, params: dict, parent: str | None = None, runs_dir: Path | None = None,
               replay: tuple[str, ...] | None = None) -> dict:
    """Train (resuming an interrupted run of the same inputs); warm start + replay from a parent.

    replay: dataset versions mixed in (default: the parent's training data, when it differs);
    "name@latest" resolves to a version id, so the run stays reproducible.
    """
    from cityloop.governance import versioning
    from cityloop.models.train import TrainParams, train

    data = versioning.resolve(Path(root), data).id  # "lab@latest" -> "lab@v3": the card names a real version
    weights, default_replay = None, ()
    if parent:
        pv = ModelStore(Path(root), track=False).get(parent)
        weights = pv.path / "weights.pt"
        # A warm start keeps the parent's network: its shape comes from the parent's card, not from today's
        # params.yaml, so a lineage born before a change of train.width/stage_mult/depth/neck goes on as it
        # was (a key the card lacks was the TrainParams default when the parent was trained).
        born = pv.card.extra.get("train_params")
        if born:
            first = asdict(TrainParams.from_dict({k: born[k] for k in ARCH_PARAMS if k in born}))
            asked = asdict(TrainParams.from_dict(params))
            if changed := [k for k in ARCH_PARAMS if asked[k] != first[k]]:
                log.info("warm start from %s keeps its network: %s", parent,
                         ", ".join(f"{k} {first[k]} (params ask {asked[k]})" for k in changed))
            params = {**params, **{k: first[k] for k in ARCH_PARAMS}}
        default_replay = (pv.card.dataset,) if pv.card.dataset and pv.card.dataset != data else ()
    replay = default_replay if replay is None else tuple(versioning.resolve(Path(root), v).id for v in replay)
    holdout = load_section(Path(root), "ingest", IngestParams).holdout
    res = train(Path(root), data, TrainParams.from_dict(params), parent=parent, parent_weights=weights,
                replay=replay, holdout=holdout, runs_dir=runs_dir, progress=False)
    val = res.metrics["val/loss"].dropna() if "val/loss" in res.metrics else []
    return {"run_dir": str(res.run_dir), "weights": str(res.weights), "epochs": res.epochs, "steps": res.steps,
            "resumed": res.resumed, "val_loss": float(val.iloc[-1]) if len(val) else None, "replay": list(replay),
            "data": data, "parent": parent, "params": params}


def export_step(root: Path, run: dict, out_dir: Path, name: str | None = None) -> tuple[Path, ModelCard]:
    """Export a run's plain module to one self-contained ONNX file, with its card beside it
    (`name`: the model it is a version of, default cityloop-detector)."""
    from dataclasses import replace

    from cityloop.models.export import export_onnx

    card = build_card(Path(root), run["data"], run["parent"], run["params"])
    card = replace(card, name=name) if name else card
    model = load_detector(Path(run["weights"]), run["params"])
    path = export_onnx(model, card, Path(out_dir) / "model.onnx")
    card.save(Path(out_dir) / "card.json")
    return path, card


def parity_step(root: Path, run: dict, onnx_path: Path, card: ModelCard, n: int = 16,
                tolerance: float = 1e-4) -> dict:
    """Same validation frames through torch and onnxruntime: raw outputs and decoded boxes agree."""
    from cityloop.models.export import check_parity

    model = load_detector(Path(run["weights"]), run["params"])
    frames = sample_frames(Path(root), run["data"], n, split="val")
    return check_parity(model, Path(onnx_path), card, frames, tolerance).to_dict()


def register_step(root: Path, onnx_path: Path, card: ModelCard, run: dict, parity: dict,
                  parity_tolerance: float = DEFAULT_PARITY_TOLERANCE) -> str:
    """Store the version with its training weights (refused when parity failed); its id."""
    store = ModelStore(Path(root), parity_tolerance=parity_tolerance)
    return store.register(Path(onnx_path), card, {"weights.pt": Path(run["weights"])}, parity).id


def build_version(root: Path, data: str, train_params: dict, *, parent: str | None = None,
                  replay: tuple[str, ...] | None = None, name: str | None = None, runs_dir: Path | None = None,
                  parity_frames: int | None = None, parity_tolerance: float | None = None,
                  step: StepRunner = run_direct) -> dict:
    """Train on `data` (warm start + replay from `parent`), export ONNX, check parity, register.

    Idempotent: a finished run resumes and the stored artifact is found again. Parity frames and
    tolerance default to params.yaml `export.parity_frames` and `registry.parity_tolerance`.
    Returns {"model": id, "run", "parity", "onnx", "card"}.
    """
    frames = parity_frames or load_section(Path(root), "export", ExportParams).parity_frames
    # raw: RegistryParams has required keys (benchmark, target, ...) a workspace that only trains may lack
    tol = parity_tolerance or (load_params(Path(root)).get("registry") or {}).get("parity_tolerance",
                                                                                   DEFAULT_PARITY_TOLERANCE)
    run = step("train", train_step, root, data, train_params, parent, runs_dir, replay)
    onnx_path, card = step("export", export_step, root, run, Path(run["run_dir"]), name)
    parity = step("parity", parity_step, root, run, onnx_path, card, frames, tol)
    model_id = step("register", register_step, root, onnx_path, card, run, parity, tol)
    return {"model": model_id, "run": run, "parity": parity, "onnx": str(onnx_path), "card": card.to_dict()}


def evaluate_version(root: Path, model_id: str, data: str | None = None) -> dict:
    """The benchmark set through the gate (recorded in the events log) and the training data's
    test split (lab): {"benchmark": metrics, "test": metrics or None}."""
    gate = open_gate(Path(root))
    bench = gate.evaluate(model_id)
    mv = gate.store.get(model_id)
    data = data or mv.card.dataset
    test = evaluate_split(Path(root), mv.model_path, mv.card, data, "test") if data else None
    return {"benchmark": bench, "test": test}


def evaluate_step(root: Path, model_path: Path, card: ModelCard, benchmark: str) -> dict:
    """A model on the benchmark set (field) and on its training data's test split (lab)."""
    from cityloop.models.evaluate import evaluate_onnx

    bench = evaluate_onnx(Path(model_path), card, Path(root), benchmark)
    test = evaluate_split(Path(root), Path(model_path), card, card.dataset, "test") if card.dataset else None
    return {"benchmark": bench, "test": test}


def int8_step(root: Path, run: dict, onnx_path: Path, card: ModelCard, fp32: dict, max_delta: float,
              calibration_frames: int = 64) -> dict:
    """Static INT8 calibrated on the training version; its benchmark mAP delta and speed vs FP32.

    `fp32` is the FP32 model's benchmark evaluation. The variant may be registered only when
    the mAP@0.5 it loses is within max_delta.
    """
    from dataclasses import replace

    from cityloop.models.evaluate import evaluate_onnx
    from cityloop.models.export import quantize_int8

    calib = sample_frames(Path(root), run["data"], calibration_frames, split="train")
    path = quantize_int8(Path(onnx_path), Path(run["run_dir"]) / "model.int8.onnx", card, calib)
    card8 = replace(card, variant="int8")
    q = evaluate_onnx(path, card8, Path(root), fp32["benchmark"])
    delta = float(fp32["mAP50"] - q["mAP50"])
    speed = fp32["latency"]["batch1_median_ms"] / max(1e-9, q["latency"]["batch1_median_ms"])
    return {"path": str(path), "card": card8.to_dict(), "fp32_mAP50": fp32["mAP50"], "int8_mAP50": q["mAP50"],
            "delta": delta, "max_delta": max_delta, "speedup_batch1": speed, "passed": delta <= max_delta,
            "reason": f"INT8 loses {delta:.4f} mAP@0.5 on {fp32['benchmark']} (allowed {max_delta})",
            "metrics": q}
