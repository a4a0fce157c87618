"""From a training run to a registrable package: card, parity frames, the lab/field figures."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from governance.repository import DataRepository
from governance.schema import CLASSES
from governance.store import FrameStore
from models.card import InputSpec, ModelCard, OutputSpec
from models.runtime import decode_image

MODEL_NAME = "cityloop-detector"


def git_commit(root: Path) -> str | None:
    """HEAD of the workspace (None outside git or before the first commit)."""
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() or None


def build_card(root: Path, data: str, parent: str | None, params: dict, score_threshold: float = 0.05) -> ModelCard:
    """The card of a cityloop-trained detector (version assigned by the registry)."""
    return ModelCard(
        name=MODEL_NAME, version="", vendor="cityloop", classes=list(CLASSES),
        input=InputSpec(), output=OutputSpec(score_threshold=score_threshold),
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


def load_detector(weights: Path, width: int):
    """A plain Detector with the weights of a run or a registered version (torch imported lazily)."""
    from models.components.detector import Detector, DetectorConfig
    from models.module import load_weights

    model = Detector(DetectorConfig(width=width))
    load_weights(model, weights)
    return model.eval()


def evaluate_split(root: Path, model_path: Path, card: ModelCard, version: str, split: str) -> dict:
    """mAP of an ONNX model on one split of a dataset version (e.g. the lab test split)."""
    from models.evaluate import evaluate, load_benchmark
    from models.runtime import OnnxDetector

    _, manifest, coco, images = load_benchmark(root, version)
    keep = set(manifest.loc[manifest["split"] == split, "sha256"])
    pairs = [(im, img) for im, img in zip(coco["images"], images) if im["sha256"] in keep]
    sub = {**coco, "images": [im for im, _ in pairs],
           "annotations": [a for a in coco["annotations"] if a["sha256"] in keep]}
    dets = OnnxDetector(Path(model_path), card).detect([img for _, img in pairs])
    result = evaluate(sub, {im["id"]: d for (im, _), d in zip(pairs, dets)}, manifest)
    return {**result, "dataset": version, "split": split}
