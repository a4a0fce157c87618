"""A small anchor-free detector (CenterNet-style, stride 4) that trains in minutes on two cores.

Plain nn.Module: training wraps it in a LightningModule, export and serving use it as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from cityloop.scenarios import registry


@dataclass
class DetectorConfig:
    num_classes: int = field(default_factory=lambda: len(registry().classes))  # one output per class
    width: int = 16  # channels of the first stage; later stages widen (stage_mult)
    stride: int = 4  # output cell size in input px
    wh_unit: float = 16.0  # box sizes are predicted as log(size / wh_unit)
    stage_mult: tuple[int, ...] = (2, 4, 6, 8)  # channels of the /4, /8, /16, /32 stages, in units of width
    depth: tuple[int, ...] = (0, 0, 0, 0)  # residual blocks added after each stage's strided block
    neck: int = 0  # channels of the FPN neck and the head trunk in units of width; 0: the /4 stage's
    # Classes told apart by a cue at one point of their box (the registry's cue_groups: a rider's head):
    # ((class indices), (x, y) in the box). Each group is found as one class, on its first index's channel,
    # and its members are told apart by attribute logits read at the cue point.
    cue_groups: tuple[tuple[tuple[int, ...], tuple[float, float]], ...] = field(
        default_factory=lambda: registry().cue_groups)

    def __post_init__(self) -> None:
        for name in ("stage_mult", "depth"):
            v = tuple(getattr(self, name))
            if len(v) != 4 or any(int(x) != x or x < (1 if name == "stage_mult" else 0) for x in v):
                raise ValueError(f"{name} takes 4 whole numbers, one for each of the /4, /8, /16 and /32 "
                                 f"stages ({'>= 1' if name == 'stage_mult' else '>= 0'}), got {list(v)}")
            setattr(self, name, tuple(int(x) for x in v))
        if int(self.neck) != self.neck or self.neck < 0:
            raise ValueError(f"neck takes a whole number >= 0 (channels in units of width; 0: the /4 stage's), "
                             f"got {self.neck}")
        self.neck = int(self.neck)

    @classmethod
    def from_state_dict(cls, state: dict) -> DetectorConfig:
        """The config whose Detector takes `state` (a plain Detector's state_dict): width, stage channels,
        residual blocks per stage, neck and class count read from the weights' shapes (benchmarks, tools)."""
        w = int(state["stem.0.weight"].shape[0])
        stages = ("s4", "s8", "s16", "s32")
        mult = tuple(int(state[f"{s}.0.0.weight"].shape[0]) // w for s in stages)
        depth = tuple(len({k.split(".")[1] for k in state if k.startswith(f"{s}.") and ".body." in k}) for s in stages)
        cn = int(state["trunk.0.weight"].shape[0])
        return cls(num_classes=int(state["heat.weight"].shape[0]), width=w, stage_mult=mult, depth=depth,
                   neck=0 if cn == mult[0] * w else cn // w)


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Block(nn.Sequential):
    """Two 3x3 convs, the first strided, then `extra` residual blocks. Plain convs, not depthwise-separable
    ones: on these CPUs PyTorch runs them ~1.7x faster per image for more parameters (185k vs 135k, measured)."""

    def __init__(self, cin: int, cout: int, stride: int, extra: int = 0) -> None:
        super().__init__(conv_bn(cin, cout, stride), conv_bn(cout, cout), *(Residual(cout) for _ in range(extra)))


class Residual(nn.Module):
    """ResNet's basic block: two 3x3 convs added to their input (depth at a cheap, coarse stage)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(c, c), nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class Detector(nn.Module):
    """Input (B, 3, H, W) RGB scaled to 0..1; outputs heatmap logits, box size (px), centre offset.

    A plain-conv backbone down to /32 (a near car or stall spans 60+ px: /16 alone sees it in part),
    a top-down FPN back to /4, and one shared 3x3 head trunk under the three 1x1 outputs (at /4 the
    heads would otherwise cost more than the backbone).

    Each image is standardised by its own mean and std inside the graph, so a dark night frame
    and a bright day frame reach the backbone on the same scale.

    Classes of a cue group (a rider with or without a helmet) are found as one class, and told apart
    by cue logits read where the cue is (the head, 0.42 of the box height above the centre): read at
    the centre cell, the features carried no helmet at all (a linear probe scored 0.50; read at the
    head, 0.86 on cameras it never saw).
    """

    def __init__(self, cfg: DetectorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DetectorConfig()
        w = cfg.width
        c4, c8, c16, c32 = (m * w for m in cfg.stage_mult)
        d4, d8, d16, d32 = cfg.depth
        cn = cfg.neck * w or c4  # the neck's and head's channels
        self.stem = conv_bn(3, w, 2)  # /2
        self.s4 = Block(w, c4, 2, d4)  # /4
        self.s8 = Block(c4, c8, 2, d8)  # /8
        self.s16 = Block(c8, c16, 2, d16)  # /16
        self.s32 = Block(c16, c32, 2, d32)  # /32
        self.lat4 = nn.Conv2d(c4, cn, 1) if cn != c4 else nn.Identity()  # no weights at the default
        self.lat8 = nn.Conv2d(c8, cn, 1)
        self.lat16 = nn.Conv2d(c16, cn, 1)
        self.lat32 = nn.Conv2d(c32, cn, 1)
        self.fuse = conv_bn(cn, cn)
        self.trunk = conv_bn(cn, cn)
        self.heat = nn.Conv2d(cn, cfg.num_classes, 1)
        self.wh = nn.Conv2d(cn, 2, 1)
        self.off = nn.Conv2d(cn, 2, 1)
        n_cue = sum(len(ix) for ix, _ in cfg.cue_groups)
        self.cue = nn.Conv2d(cn, n_cue, 1) if n_cue else None
        nn.init.constant_(self.heat.bias, -math.log((1 - 0.1) / 0.1))  # prior p=0.1 (focal loss)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True) + 1e-3
        x = (x - mean) / std
        f4 = self.s4(self.stem(x))  # (B, 2w, H/4, W/4)
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        f32 = self.s32(f16)
        up = nn.functional.interpolate(self.lat32(f32), size=f16.shape[-2:], mode="nearest")
        up = nn.functional.interpolate(self.lat16(f16) + up, size=f8.shape[-2:], mode="nearest")
        up = nn.functional.interpolate(self.lat8(f8) + up, size=f4.shape[-2:], mode="nearest")
        return self.trunk(self.fuse(self.lat4(f4) + up))  # (B, neck channels, H/4, W/4)

    def forward_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Training view: heatmap logits, log box size (in wh_unit), cell offset, cue logits (B, n, h, w).

        A cue group's heat is on its first class's channel (the other members' channels are unused);
        the cue logits are those of every group's members in turn (an empty tensor when there are none).
        """
        f = self.features(x)
        cue = self.cue(f) if self.cue is not None else f[:, :0]
        return self.heat(f), self.wh(f), self.off(f), cue

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Export/serving view: heatmap logits (B,C,h,w), box size in px (B,2,h,w), offset (B,2,h,w).

        A cue group's members get heat logit(p_group * softmax(cue at the cue point)), the cue point
        placed from each cell's own box and offset, so the outputs keep the plain CenterNet contract.
        """
        heat, logwh, off, cue = self.forward_raw(x)
        wh = torch.exp(logwh.clamp(-6, 6)) * self.cfg.wh_unit
        if self.cfg.cue_groups:
            heat = self.compose(heat, wh, off, cue, x.shape[-2:])
        return heat, wh, off

    def compose(self, heat: torch.Tensor, wh: torch.Tensor, off: torch.Tensor, cue: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        """Heat logits with each cue group's members read at their cue point (see forward)."""
        b, _, h, w = heat.shape
        s = self.cfg.stride
        xs = torch.arange(w, dtype=heat.dtype, device=heat.device).view(1, 1, w)
        ys = torch.arange(h, dtype=heat.dtype, device=heat.device).view(1, h, 1)
        cx, cy = (xs + off[:, 0]) * s, (ys + off[:, 1]) * s  # (B, h, w) box centres in input px
        chans = list(heat.unbind(1))
        k = 0
        for idx, (u, v) in self.cfg.cue_groups:
            px, py = cx + (u - 0.5) * wh[:, 0], cy + (v - 0.5) * wh[:, 1]
            grid = torch.stack([px / size[1] * 2 - 1, py / size[0] * 2 - 1], -1)  # (B, h, w, 2)
            logits = nn.functional.grid_sample(cue[:, k : k + len(idx)], grid, mode="bilinear",
                                               padding_mode="border", align_corners=False)
            k += len(idx)
            p = torch.sigmoid(heat[:, idx[0] : idx[0] + 1]) * torch.softmax(logits, 1)  # (B, n, h, w)
            p = p.clamp(1e-6, 1 - 1e-6)
            for j, c in enumerate(idx):
                chans[c] = torch.log(p[:, j]) - torch.log1p(-p[:, j])
        return torch.stack(chans, 1)


def sample_cue(cue: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Cue logits (B, n, h, w) read at points (B, M, 2), x and y scaled to -1..1 over the input
    (grid_sample's, as Detector.compose reads them) -> (B, M, n)."""
    grid = points.to(cue.dtype).unsqueeze(1)
    out = nn.functional.grid_sample(cue, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0].permute(0, 2, 1)
