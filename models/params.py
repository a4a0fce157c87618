"""The `train:` section of params.yaml (plain data: no torch import, so reading it stays cheap)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cityloop.core.settings import from_section


@dataclass
class TrainParams:
    """The training params of the `train:` section (every key but `data`)."""

    epochs: int = 12
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    width: int = 16
    stage_mult: list[int] = field(default_factory=lambda: [2, 4, 6, 8])  # /4../32 channels in units of width
    depth: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # residual blocks added per stage
    neck: int = 0  # channels of the FPN neck and head trunk in units of width (0: the /4 stage's)
    giou: float = 0.0  # weight of the GIoU box loss beside the L1 on log size and offset
    size: int = 192  # detector input in px (square); frames of another size are resized to it
    precision: str = "auto"  # auto: bf16 autocast where the CPU runs bf16 natively (AVX512-BF16/AMX) | 32 | bf16
    ema: bool = True  # keep an exponential moving average of the weights (what is validated and exported)
    num_workers: int = 0
    replay_ratio: float = 0.4  # share of replayed earlier frames when fine-tuning
    max_train: int | None = None  # cap on train frames (shrunk configs)
    limit_train_batches: float = 1.0
    seed: int = 0
    threads: int = 2

    @classmethod
    def from_dict(cls, d: dict | None) -> TrainParams:
        return from_section(cls, d, "train")


@dataclass
class TrainSection:
    """The whole `train:` section: `data`, the dataset version the `train` stage and `cityloop train`
    read (training itself never sees it: it is not part of a run's identity), beside the training params."""

    data: str = "lab@latest"
    params: TrainParams = field(default_factory=TrainParams)

    @classmethod
    def from_dict(cls, d: dict | None) -> TrainSection:
        d = dict(d or {})
        data = d.pop("data", cls.data)
        return cls(data=data, params=TrainParams.from_dict(d))

    def to_dict(self) -> dict[str, Any]:
        """The section as params.yaml writes it (flat)."""
        return {"data": self.data, **asdict(self.params)}
