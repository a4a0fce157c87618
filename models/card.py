"""The model card: what a model version is, how to feed it and how to read its outputs.

Torch-free on purpose: the registry, the Bento service and edge nodes read cards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("candidate", "staging", "production", "retired")


@dataclass
class InputSpec:
    """How an image becomes the model's input tensor (NCHW float32, RGB)."""

    name: str = "images"
    height: int = 192
    width: int = 192
    scale: float = 1.0 / 255.0  # applied to uint8 pixels first
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # then (x - mean) / std per channel
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "stretch"  # frames of another size are resized to (width, height)


@dataclass
class OutputSpec:
    """How to turn the model's outputs into boxes.

    format "centernet": outputs (heatmap logits (B,C,H/s,W/s), wh (B,2,..) in input px,
    offset (B,2,..) in cells), decoded by 3x3 peak picking, the score threshold, a class-wise box NMS
    (nms_iou) and top-k.
    format "boxes": outputs (boxes (B,K,4) xyxy in input px, scores (B,K), labels (B,K) int).
    """

    format: str = "centernet"
    names: tuple[str, ...] = ("heatmap", "wh", "offset")
    stride: int = 4
    score_threshold: float = 0.05
    max_detections: int = 100
    nms_iou: float = 0.7  # centernet: class-wise box NMS at this IoU after the peak picking (0: off)


@dataclass
class ModelCard:
    """card.json of a model version (cityloop's own or a partner's)."""

    name: str
    version: str
    vendor: str
    task: str = "detection"
    classes: list[str] = field(default_factory=list)  # model output order
    class_map: dict[str, str] = field(default_factory=dict)  # model class -> platform class
    input: InputSpec = field(default_factory=InputSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    metrics: dict[str, Any] = field(default_factory=dict)  # benchmark version -> metrics
    dataset: str | None = None  # the dataset version it was trained on
    git_commit: str | None = None
    parent: str | None = None
    stage: str = "candidate"
    variant: str = "fp32"
    gates: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def platform_class(self, index: int) -> str | None:
        """Platform class of model output class `index` (None when it maps to nothing)."""
        name = self.classes[index]
        return self.class_map.get(name, name) if self.class_map else name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=str))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        d = dict(d)
        d["input"] = InputSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.get("input", {}).items()})
        out = dict(d.get("output", {}))
        if "names" in out:
            out["names"] = tuple(out["names"])
        d["output"] = OutputSpec(**out)
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"card has unknown fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        return cls.from_dict(json.loads(Path(path).read_text()))
