"""The LightningModule: CenterNet losses around the plain Detector."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from cityloop.models.components.detector import Detector, DetectorConfig


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of objects."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg_w = torch.pow(1 - target, 4)
    pos_loss = torch.log(p) * torch.pow(1 - p, 2) * pos
    neg_loss = torch.log(1 - p) * torch.pow(p, 2) * neg_w * (1 - pos)
    n = pos.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / n


def gather(feat: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) features at flat indices (B, M) -> (B, M, C)."""
    b, c = feat.shape[:2]
    flat = feat.view(b, c, -1).permute(0, 2, 1)  # (B, hw, C)
    return flat.gather(1, ind.unsqueeze(-1).expand(-1, -1, c))


def detection_loss(outputs: tuple[torch.Tensor, ...], t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Heatmap focal loss + L1 on log box size and centre offset at object cells."""
    heat, logwh, off = outputs
    mask = t["mask"].unsqueeze(-1)  # (B, M, 1)
    n = mask.sum().clamp(min=1.0)
    l_heat = focal_loss(heat, t["heat"])
    l_wh = (torch.abs(gather(logwh, t["ind"]) - t["wh"]) * mask).sum() / n
    l_off = (torch.abs(gather(off, t["ind"]) - t["off"]) * mask).sum() / n
    return {"loss": l_heat + l_wh + l_off, "heat": l_heat, "wh": l_wh, "off": l_off}


class DetectorModule(pl.LightningModule):
    """Trains a Detector; metric names read split/name (train/loss, val/loss)."""

    def __init__(self, width: int = 16, lr: float = 3e-3, weight_decay: float = 1e-4, epochs: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = Detector(DetectorConfig(width=width))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.forward_raw(x)

    def _step(self, batch, split: str) -> torch.Tensor:
        x, targets = batch
        losses = detection_loss(self(x), targets)
        on_step = split == "train"
        for k, v in losses.items():
            self.log(f"{split}/{k}", v, prog_bar=k == "loss", on_step=on_step, on_epoch=True, batch_size=len(x))
        return losses["loss"]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=total, pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def load_weights(model: nn.Module, path) -> None:
    """Load a plain Detector state_dict (weights.pt of a registered version) into `model`."""
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
