"""Training data: frames of a governed dataset version, augmented, with CenterNet targets.

The datamodule reads a published version (manifest + COCO) and nothing else, and refuses
benchmark sets: a dataset named in `holdout`, or any frame whose split is "bench".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from cityloop.governance.repository import DataRepository
from cityloop.governance.schema import CATEGORY_IDS, CLASSES
from cityloop.governance.store import FrameStore
from cityloop.scenarios import registry

MAX_OBJECTS = 64
# A label of IGNORED + c is a box of class c the truth marks hidden (COCO iscrowd 1: under half of the object
# shows): draw_targets teaches it neither as an object nor as background. One label array carries the flag
# through the augmentation (a zoom drops boxes, a paste adds some) without a second array to keep in step.
IGNORED = 1000


def class_index(labels: np.ndarray) -> np.ndarray:
    """The class index of each label, hidden or not."""
    labels = np.asarray(labels, np.int64)
    return np.where(labels >= IGNORED, labels - IGNORED, labels)


class BenchmarkLeakError(ValueError):
    """Training was asked to read a benchmark set."""


@dataclass
class Augment:
    """Photometric and geometric augmentation that mimics lighting, weather and cameras."""

    flip: float = 0.5
    zoom: float = 0.5  # probability of a random scale (zoom_range) and shift (up to `shift` of the frame)
    zoom_range: tuple[float, float] = (0.75, 1.35)
    shift: float = 0.12
    dark: float = 0.35  # probability of a low-light gain (0.2..0.6)
    tint: float = 0.5
    noise: float = 0.4
    blur: float = 0.2
    jpeg: float = 0.3
    fog: float = 0.15
    paste: float = 0.0  # probability of pasting objects of other frames (copy-paste; needs `donors`)

    def __call__(self, img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                 labels: np.ndarray | None = None, donors: list[tuple[np.ndarray, int]] | None = None):
        """img (H, W, 3) uint8 RGB; boxes (N, 4) xyxy px. Returns new arrays: (img, boxes), or with
        `labels` (N,) given, (img, boxes, labels): a zoom drops the boxes it pushes out of the frame.
        `donors` (crops of other frames' objects with their class index) are pasted with probability
        `paste`, before the photometric steps, so they get this frame's light, noise and JPEG."""
        h, w = img.shape[:2]
        keep = np.ones(len(boxes), bool)
        if rng.random() < self.flip:
            img = img[:, ::-1]
            boxes = boxes.copy()
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        if labels is not None and rng.random() < self.zoom:
            img, boxes, keep = self._zoom(img, boxes, rng)
        if labels is not None and donors and rng.random() < self.paste:
            boxes, labels = boxes[keep], labels[keep]
            img, boxes, labels = paste_objects(img, boxes, labels, donors, rng)
            keep = np.ones(len(boxes), bool)
        f = img.astype(np.float32)
        if rng.random() < self.dark:
            f *= rng.uniform(0.2, 0.6)
        if rng.random() < self.tint:
            f *= rng.uniform(0.8, 1.2, 3).astype(np.float32)
        if rng.random() < self.fog:
            a = rng.uniform(0.2, 0.6)
            f = f * (1 - a) + 200 * a
        if rng.random() < self.noise:
            f += rng.normal(0, rng.uniform(2, 10), f.shape).astype(np.float32)
        if rng.random() < self.blur:
            k = int(rng.integers(3, 7))
            kern = np.zeros((k, k), np.float32)
            kern[k // 2] = 1.0 / k
            f = cv2.filter2D(f, -1, kern)
        img = np.clip(f, 0, 255).astype(np.uint8)
        if rng.random() < self.jpeg:
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 90))])
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if labels is None:
            return np.ascontiguousarray(img), boxes
        return np.ascontiguousarray(img), boxes[keep], labels[keep]

    def _zoom(self, img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scale about the centre and shift (a camera nearer or farther, aimed a little aside); the border
        is filled with the frame's mean colour. A box keeps the simulator's rule: labeled while at least
        half of it stays in the frame, clipped to it, and 4 px or more on each side."""
        h, w = img.shape[:2]
        s = rng.uniform(*self.zoom_range)
        tx, ty = rng.uniform(-self.shift, self.shift, 2) * (w, h)
        m = np.array([[s, 0, (1 - s) * w / 2 + tx], [0, s, (1 - s) * h / 2 + ty]], np.float32)
        fill = tuple(float(v) for v in img.reshape(-1, 3).mean(0))
        img = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
        b = boxes * s + np.array([m[0, 2], m[1, 2], m[0, 2], m[1, 2]], np.float32)
        c = np.clip(b, 0, [w, h, w, h]).astype(np.float32)
        area = np.maximum(0, b[:, 2] - b[:, 0]) * np.maximum(0, b[:, 3] - b[:, 1])
        kept = np.maximum(0, c[:, 2] - c[:, 0]) * np.maximum(0, c[:, 3] - c[:, 1])
        keep = (kept >= 0.5 * np.maximum(area, 1e-6)) & (c[:, 2] - c[:, 0] >= 4) & (c[:, 3] - c[:, 1] >= 4)
        return img, c, keep


def repeat_factors(labels: list[np.ndarray], num_classes: int, t: float) -> np.ndarray:
    """Repeat-factor sampling weights (LVIS, Gupta et al. 2019; detectron2's RepeatFactorTrainingSampler):
    a frame's factor is the largest max(1, sqrt(t / f_c)) over the classes c it holds, f_c the share of
    frames that hold c. Frames of rare classes are drawn more often, at the same number of steps.
    Written here because detectron2 is not a dependency (eight lines of numpy)."""
    held = np.zeros((len(labels), num_classes), bool)
    for i, lab in enumerate(labels):
        held[i, np.asarray(lab, np.int64)] = True
    share = held.mean(0).clip(min=1e-9)
    per_class = np.maximum(1.0, np.sqrt(t / share))
    return np.where(held, per_class, 1.0).max(1) if num_classes else np.ones(len(labels))


def donor_crop(img: np.ndarray, box: np.ndarray, margin: int = 2) -> np.ndarray:
    """An object's pixels with a `margin` of its surroundings (uint8 RGB), for `paste_objects`; at the
    frame's edge the margin repeats the edge's pixels, so the object is always `margin` px inside."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = int(box[0]) - margin, int(box[1]) - margin, int(np.ceil(box[2])) + margin, \
        int(np.ceil(box[3])) + margin
    crop = img[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
    pad = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)), (0, 0))
    return np.ascontiguousarray(np.pad(crop, pad, mode="edge"))


def paste_objects(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, donors: list[tuple[np.ndarray, int]],
                  rng: np.random.Generator, max_cover: float = 0.2, tries: int = 6, margin: int = 2
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copy-paste augmentation at the donors' own scale (no resizing: a frame's sizes stay a camera's).

    Each crop goes where it hides at most `max_cover` of any box already there (the simulator's rule labels
    an object while 20% or more of it shows) and is at most `max_cover` hidden by them; its light is scaled
    to the spot it lands on (a day rider pasted into a night street is dimmed), and its box is the crop less
    its `margin` (donor_crop's). A crop with no such spot in `tries` draws is left out.
    Returns new (img, boxes, labels)."""
    h, w = img.shape[:2]
    img = np.array(img, copy=True)
    out_b, out_l = [boxes.reshape(-1, 4)], [labels]
    placed = boxes.reshape(-1, 4).copy()
    for crop, lab in donors:
        ch, cw = crop.shape[:2]
        if ch < 6 or cw < 6 or ch >= h or cw >= w:
            continue
        for _ in range(tries):
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            nb = np.array([x0 + margin, y0 + margin, x0 + cw - margin, y0 + ch - margin], np.float32)
            if len(placed):
                iw = np.clip(np.minimum(placed[:, 2], nb[2]) - np.maximum(placed[:, 0], nb[0]), 0, None)
                ih = np.clip(np.minimum(placed[:, 3], nb[3]) - np.maximum(placed[:, 1], nb[1]), 0, None)
                inter = iw * ih
                area = (placed[:, 2] - placed[:, 0]) * (placed[:, 3] - placed[:, 1])
                new_area = (nb[2] - nb[0]) * (nb[3] - nb[1])
                if (inter > max_cover * np.maximum(area, 1)).any() or inter.sum() > max_cover * new_area:
                    continue
            spot = img[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32)
            gain = np.clip((spot.mean() + 1) / (crop.mean() + 1), 0.3, 2.0)
            img[y0 : y0 + ch, x0 : x0 + cw] = np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            out_b.append(nb[None])
            out_l.append(np.array([lab], labels.dtype))
            placed = np.concatenate([placed, nb[None]])
            break
    return img, np.concatenate(out_b).astype(np.float32), np.concatenate(out_l)


def draw_targets(boxes: np.ndarray, labels: np.ndarray, num_classes: int, size: tuple[int, int], stride: int,
                 wh_unit: float, cue_groups: tuple | None = None) -> dict[str, np.ndarray]:
    """CenterNet targets: gaussian heatmap per class, a mask of the objects, and the dense regression maps
    (reg_wh log size, reg_off offset to the centre in cells, reg_w: each object's weights sum to 1).

    A hidden box (label IGNORED + c) draws no peak and no regression; its cells are marked in `ignore`
    (C, h, w) on its class's channel, where the focal loss charges no background penalty: a detection
    there is neither rewarded nor punished, as pycocotools scores an iscrowd box.

    A class of a cue group (DetectorConfig.cue_groups; default the registry's) is drawn on its group's
    first channel, and its cue point (-1..1 over the image), group and member index are kept for the
    cue loss ("cue_pt", "cue_grp", "cue_cls", "cue_mask").
    """
    groups = registry().cue_groups if cue_groups is None else cue_groups
    member = {c: (g, j, idx[0], uv) for g, (idx, uv) in enumerate(groups) for j, c in enumerate(idx)}
    oh, ow = size[0] // stride, size[1] // stride
    heat = np.zeros((num_classes, oh, ow), np.float32)
    ignore = np.zeros((num_classes, oh, ow), np.uint8)
    mask = np.zeros(MAX_OBJECTS, np.float32)
    cue_pt = np.zeros((MAX_OBJECTS, 2), np.float32)
    cue_grp = np.zeros(MAX_OBJECTS, np.int64)
    cue_cls = np.zeros(MAX_OBJECTS, np.int64)
    cue_mask = np.zeros(MAX_OBJECTS, np.float32)
    reg_wh = np.zeros((2, oh, ow), np.float32)
    reg_off = np.zeros((2, oh, ow), np.float32)
    reg_w = np.zeros((oh, ow), np.float32)
    ys, xs = np.mgrid[0:oh, 0:ow].astype(np.float32)
    area = (boxes[:MAX_OBJECTS, 2] - boxes[:MAX_OBJECTS, 0]) * (boxes[:MAX_OBJECTS, 3] - boxes[:MAX_OBJECTS, 1])
    order = np.argsort(-area, kind="stable")  # large first: a small object's cells win where they overlap
    for k in order:
        (x0, y0, x1, y1), c = boxes[k], int(labels[k])
        bw, bh = x1 - x0, y1 - y0
        if bw < 1 or bh < 1:
            continue
        if c >= IGNORED:
            chan = member[c - IGNORED][2] if c - IGNORED in member else c - IGNORED
            gx0, gy0 = int(np.clip(np.floor(x0 / stride), 0, ow)), int(np.clip(np.floor(y0 / stride), 0, oh))
            gx1, gy1 = int(np.clip(np.ceil(x1 / stride), 0, ow)), int(np.clip(np.ceil(y1 / stride), 0, oh))
            ignore[chan, gy0:gy1, gx0:gx1] = 1
            continue
        chan = c
        if chan in member:
            g, j, chan, (u, v) = member[chan]
            cue_pt[k] = ((x0 + u * bw) / size[1] * 2 - 1, (y0 + v * bh) / size[0] * 2 - 1)
            cue_grp[k], cue_cls[k], cue_mask[k] = g, j, 1.0
        cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
        ix, iy = int(np.clip(cx, 0, ow - 1)), int(np.clip(cy, 0, oh - 1))
        sx, sy = max(0.5, 0.09 * bw / stride), max(0.5, 0.09 * bh / stride)  # TTFNet: alpha 0.54 / 6
        gauss = np.exp(-((xs - ix) ** 2) / (2 * sx * sx) - ((ys - iy) ** 2) / (2 * sy * sy))
        np.maximum(heat[chan], gauss, out=heat[chan])
        heat[chan, iy, ix] = 1.0
        mask[k] = 1.0
        # Dense box regression (TTFNet's): every cell of the object's central gaussian predicts its box,
        # weighted by the gaussian, so a peak one cell off the centre still carries the right box.
        near = gauss >= 0.1
        reg_wh[:, near] = np.log(np.array([bw, bh], np.float32) / wh_unit)[:, None]
        reg_off[0, near], reg_off[1, near] = cx - xs[near], cy - ys[near]
        reg_w[near] = gauss[near] / gauss[near].sum()
    return {"heat": heat, "mask": mask, "ignore": ignore,
            "reg_wh": reg_wh, "reg_off": reg_off, "reg_w": reg_w,
            "cue_pt": cue_pt, "cue_grp": cue_grp, "cue_cls": cue_cls, "cue_mask": cue_mask}


class FrameDataset(Dataset):
    """Frames of a manifest with their boxes, as (image tensor, targets) pairs."""

    def __init__(self, data_dir: Path, manifest: pd.DataFrame, coco: dict, size: tuple[int, int] = (192, 192),
                 stride: int = 4, wh_unit: float = 16.0, augment: Augment | None = None) -> None:
        self.data_dir, self.size, self.stride, self.wh_unit = Path(data_dir), size, stride, wh_unit
        self.paths = list(manifest["path"])
        self.shas = list(manifest["sha256"])
        boxes: dict[str, list] = {s: [] for s in self.shas}
        for a in coco["annotations"]:
            if a.get("sha256") in boxes and a["category_id"] in ID_TO_INDEX:
                x, y, w, h = a["bbox"]
                hidden = IGNORED if a.get("iscrowd", 0) else 0  # under half shown: neither object nor background
                boxes[a["sha256"]].append((x, y, x + w, y + h, ID_TO_INDEX[a["category_id"]] + hidden))
        self.boxes = [np.asarray(boxes[s], np.float32).reshape(-1, 5) for s in self.shas]
        self.augment = augment
        self._store: FrameStore | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        """RGB uint8 frame i at the training size."""
        if self._store is None:  # one handle per worker process
            self._store = FrameStore(self.data_dir)
        img = cv2.imdecode(np.frombuffer(self._store.read(self.paths[i]), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        return img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = self.image(i)
        b = self.boxes[i]
        boxes, labels = b[:, :4].copy(), b[:, 4].astype(np.int64)
        h, w = img.shape[:2]
        if (h, w) != self.size:
            sx, sy = self.size[1] / w, self.size[0] / h
            img = cv2.resize(img, self.size[::-1], interpolation=cv2.INTER_AREA)
            boxes *= np.array([sx, sy, sx, sy], np.float32)
        if self.augment is not None:  # drawn from torch's RNG: reproducible under seed_everything(workers=True)
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
            img, boxes, labels = self.augment(img, boxes, rng, labels)
        t = draw_targets(boxes, labels, len(CLASSES), self.size, self.stride, self.wh_unit)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
        return x, {k: torch.from_numpy(v) for k, v in t.items()}


ID_TO_INDEX = {CATEGORY_IDS[c]: i for i, c in enumerate(CLASSES)}


def check_not_benchmark(version: str, manifest: pd.DataFrame, holdout: tuple[str, ...]) -> None:
    """Refuse a benchmark set (named in holdout, or holding frames of split "bench")."""
    name = version.split("@")[0]
    if name in holdout:
        raise BenchmarkLeakError(f"{version} is a benchmark set (ingest.holdout): training never reads it")
    if (manifest["split"] == "bench").any():
        raise BenchmarkLeakError(f"{version} holds {int((manifest['split'] == 'bench').sum())} benchmark frames")


class GovernedDataModule(pl.LightningDataModule):
    """Train/val loaders over a published dataset version, with optional replay of earlier versions."""

    def __init__(self, root: Path, version: str, holdout: tuple[str, ...] = (), replay: tuple[str, ...] = (),
                 replay_ratio: float = 0.5, batch_size: int = 32, num_workers: int = 0,
                 augment: Augment | None = None, max_train: int | None = None, seed: int = 0,
                 size: int = 192) -> None:
        super().__init__()
        self.size = (size, size)
        self.root, self.version, self.holdout, self.replay = Path(root), version, holdout, replay
        self.replay_ratio, self.batch_size, self.num_workers = replay_ratio, batch_size, num_workers
        self.augment, self.max_train, self.seed = augment or Augment(), max_train, seed
        self.train_set: FrameDataset | None = None
        self.val_set: FrameDataset | None = None

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
        """(train rows, val rows, merged COCO) of the version plus replayed earlier data."""
        repo = DataRepository(self.root)
        manifest, coco = repo.load(self.version)
        check_not_benchmark(self.version, manifest, self.holdout)
        labeled = manifest[manifest["labeled"].astype(bool)]
        train = labeled[labeled["split"].isin(["train", "pool"])]
        val = labeled[labeled["split"] == "val"]
        if self.max_train:
            train = train.sample(n=min(self.max_train, len(train)), random_state=self.seed)
        coco_all = {"annotations": list(coco["annotations"])}
        for vid in self.replay:  # earlier data, so a fine-tune does not forget old conditions
            old, old_coco = repo.load(vid)
            check_not_benchmark(vid, old, self.holdout)
            old = old[old["labeled"].astype(bool) & old["split"].isin(["train", "pool"])]
            old = old[~old["sha256"].isin(train["sha256"])]
            n = min(len(old), int(round(self.replay_ratio * len(train) / max(1e-6, 1 - self.replay_ratio))))
            train = pd.concat([train, old.sample(n=n, random_state=self.seed)], ignore_index=True)
            coco_all["annotations"] += old_coco["annotations"]
        return train.reset_index(drop=True), val.reset_index(drop=True), coco_all

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val, coco = self.frames()
        if not len(train):
            raise ValueError(f"{self.version} has no labeled train frames")
        data = self.root / "data"
        self.train_set = FrameDataset(data, train, coco, self.size, augment=self.augment)
        self.val_set = FrameDataset(data, val if len(val) else train.head(64), coco, self.size)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=len(self.train_set) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
