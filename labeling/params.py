"""The `labeling:` section of params.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from cityloop.core.settings import from_section
from cityloop.labeling.annotator import ErrorModel
from cityloop.labeling.push import PushParams


@dataclass
class LabelingParams:
    project: str = "cityloop-field"
    port: int = 8089
    pool: str = "field-pool@latest"  # unlabeled frames to draw batches from
    dataset: str = "field-labeled"  # where pulled labels become versions
    split: str = "auto"
    budget: int = 100
    strategy: str = "active"
    random_share: float = 0.2
    max_camera_share: float = 0.25
    prediction_threshold: float = 0.3
    honeypot_dataset: str | None = "lab@latest"
    honeypot_share: float = 0.05
    overlap_share: float = 0.1
    min_agreement: float = 0.7
    iou: float = 0.5
    gate: dict[str, Any] = field(default_factory=dict)  # overrides of the `gate:` section for labeled batches
    webhook_port: int = 8790
    retrain_after: int = 200
    wait_timeout_s: float = 3600.0
    seed: int = 0
    annotators: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "annotator-1"}])

    @classmethod
    def from_dict(cls, d: dict | None) -> LabelingParams:
        return from_section(cls, d, "labeling")

    def push_params(self, **over: Any) -> PushParams:
        base = {f.name: getattr(self, f.name) for f in fields(PushParams)}
        return PushParams(**{**base, **{k: v for k, v in over.items() if v is not None}})

    def error_models(self) -> list[ErrorModel]:
        return [ErrorModel.from_dict({"seed": self.seed, **a}) for a in self.annotators]
