"""The LightningModule: CenterNet losses around the plain Detector."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn

from cityloop.models.components.detector import Detector, DetectorConfig, sample_cue


def focal_loss(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of objects. `ignore` (same shape,
    1 inside hidden boxes: draw_targets) takes the background penalty off those cells."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg_w = torch.pow(1 - target, 4)
    if ignore is not None:
        neg_w = neg_w * (1 - ignore.float())
    pos_loss = torch.log(p) * torch.pow(1 - p, 2) * pos
    neg_loss = torch.log(1 - p) * torch.pow(p, 2) * neg_w * (1 - pos)
    n = pos.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / n


def cue_loss(cue: torch.Tensor, t: dict[str, torch.Tensor], groups: tuple) -> torch.Tensor:
    """Cross-entropy of each cue group's member logits read at its objects' cue points (draw_targets)."""
    total, n, k = cue.new_zeros(()), 0, 0
    for g, (idx, _) in enumerate(groups):
        logits = sample_cue(cue[:, k : k + len(idx)], t["cue_pt"])  # (B, M, n)
        k += len(idx)
        sel = t["cue_mask"].bool() & t["cue_grp"].eq(g)
        if sel.any():
            total = total + nn.functional.cross_entropy(logits[sel].float(), t["cue_cls"][sel], reduction="sum")
            n += int(sel.sum())
    return total / max(n, 1)


def giou_loss(logwh: torch.Tensor, off: torch.Tensor, t: dict[str, torch.Tensor], cells: float = 4.0) -> torch.Tensor:
    """1 - GIoU between each regression cell's predicted box and its object's box, per cell (B, h, w).

    Both boxes are taken in cells, relative to the cell: centre = offset (cells), size = exp(log size)
    x `cells` (wh_unit / stride: sizes are regressed in units of 16 px, offsets in cells of 4 px). A
    centre one cell off costs a flat box (water, ~10 px tall) most of its overlap and a tall box
    little, where the L1 on the offset charges both the same."""
    pw, ph = torch.exp(logwh[:, 0].clamp(-6, 6)) * cells, torch.exp(logwh[:, 1].clamp(-6, 6)) * cells
    tw, th = torch.exp(t["reg_wh"][:, 0]) * cells, torch.exp(t["reg_wh"][:, 1]) * cells
    px, py, tx, ty = off[:, 0], off[:, 1], t["reg_off"][:, 0], t["reg_off"][:, 1]
    ix = (torch.minimum(px + pw / 2, tx + tw / 2) - torch.maximum(px - pw / 2, tx - tw / 2)).clamp(min=0)
    iy = (torch.minimum(py + ph / 2, ty + th / 2) - torch.maximum(py - ph / 2, ty - th / 2)).clamp(min=0)
    inter = ix * iy
    union = pw * ph + tw * th - inter + 1e-7
    cx = torch.maximum(px + pw / 2, tx + tw / 2) - torch.minimum(px - pw / 2, tx - tw / 2)
    cy = torch.maximum(py + ph / 2, ty + th / 2) - torch.minimum(py - ph / 2, ty - th / 2)
    hull = cx * cy + 1e-7
    return 1 - (inter / union - (hull - union) / hull)


def detection_loss(outputs: tuple[torch.Tensor, ...], t: dict[str, torch.Tensor],
                   cue_groups: tuple = (), giou: float = 0.0) -> dict[str, torch.Tensor]:
    """Heatmap focal loss + L1 on log box size and centre offset at each object's central cells + the cue loss
    (outputs: Detector.forward_raw's; cue_groups: its config's) + `giou` x the GIoU loss at the same cells."""
    heat, logwh, off = outputs[:3]
    n = t["mask"].sum().clamp(min=1.0)  # objects in the batch
    l_heat = focal_loss(heat, t["heat"], t.get("ignore"))
    w = t["reg_w"].unsqueeze(1)  # dense: every cell of an object's central gaussian, weighted (draw_targets)
    l_wh = (torch.abs(logwh - t["reg_wh"]) * w).sum() / n
    l_off = (torch.abs(off - t["reg_off"]) * w).sum() / n
    l_cue = cue_loss(outputs[3], t, cue_groups) if cue_groups and len(outputs) > 3 else heat.new_zeros(())
    l_iou = (giou_loss(logwh, off, t) * t["reg_w"]).sum() / n if giou else heat.new_zeros(())
    return {"loss": l_heat + l_wh + l_off + l_cue + giou * l_iou, "heat": l_heat, "wh": l_wh, "off": l_off,
            "cue": l_cue, "giou": l_iou}


class DetectorModule(pl.LightningModule):
    """Trains a Detector; metric names read split/name (train/loss, val/loss)."""

    def __init__(self, width: int = 16, lr: float = 3e-3, weight_decay: float = 1e-4, epochs: int = 10,
                 stage_mult: tuple[int, ...] = (2, 4, 6, 8), depth: tuple[int, ...] = (0, 0, 0, 0),
                 giou: float = 0.0, neck: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        cfg = DetectorConfig(width=width, stage_mult=tuple(stage_mult), depth=tuple(depth), neck=neck)
        self.model = Detector(cfg).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(o.float() for o in self.model.forward_raw(x.contiguous(memory_format=torch.channels_last)))

    def _step(self, batch, split: str) -> torch.Tensor:
        x, targets = batch
        losses = detection_loss(self(x), targets, self.model.cfg.cue_groups, self.hparams.giou)
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


def native_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX): there autocast trains ~2x faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(precision: str = "auto") -> bool:
    """Whether training runs under bfloat16 autocast (`train.precision`).

    "auto": where the CPU has bf16 natively (emulated bf16 is slower than float32); "32": never; "bf16": always.
    """
    if precision not in ("auto", "32", "bf16"):
        raise ValueError(f"train.precision must be auto, 32 or bf16, not {precision!r}")
    return precision == "bf16" or (precision == "auto" and native_bf16())


def ema_avg_fn(decay: float = 0.999, warmup: float = 500.0):
    """The averaging of an exponential moving average of weights and BatchNorm buffers (AveragedModel's
    multi_avg_fn). The decay ramps up as decay * (1 - exp(-updates / warmup)) (YOLOv5's), so early
    averages follow the fast-moving weights instead of the random initialisation (or a fine-tune's parent)."""

    @torch.no_grad()
    def avg(ema_params, params, num_updates):
        d = decay * (1.0 - math.exp(-float(num_updates) / warmup))
        floats = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1.0 - d)
        for e, p in zip(ema_params, params):  # counters (BatchNorm's num_batches_tracked) are copied
            if not e.is_floating_point():
                e.copy_(p)

    return avg


def ema_model(model: nn.Module, decay: float = 0.999, warmup: float = 500.0) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of `model` (ema_avg_fn), for plain training loops (the probe)."""
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, multi_avg_fn=ema_avg_fn(decay, warmup), use_buffers=True)


class EMA(pl.callbacks.WeightAveraging):
    """Lightning's weight averaging with ema_avg_fn: validation, checkpoints' kept weights and the
    exported model are the averaged ones."""

    def __init__(self, decay: float = 0.999, warmup: float = 500.0) -> None:
        super().__init__(multi_avg_fn=ema_avg_fn(decay, warmup))
