"""Accuracy probe: how far the detector gets on field data with unlimited truth labels, no loop.

    .venv/bin/python benchmarks/probe_accuracy.py [--frames 1500] [--epochs 8,16,32] [--width 16]

Renders `--frames` field frames (seed 50) and 400 field-bench-like frames (seed 1, the benchmark's
seed) in memory, trains the plain Detector from scratch with the project's augmentation, targets
and loss (one OneCycle schedule of max(--epochs) epochs) and reports mAP@0.5 overall and per class
with the project's decoder and pycocotools evaluation at each mark. It is the ceiling the closed
loop's fine-tunes work under: if this is far from loop.target, more labels will not close the gap,
a stronger detector (or a simulator whose cues survive 192 px) will.

A plain training loop rather than Lightning: the frames never become a governed dataset version
(this measures the model, not the platform), and evaluation runs mid-schedule at the marks.
Replaces the "## Detector ceiling" section of benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchkit import Row, command_line, finish, loadavg, log, machine_facts  # noqa: E402

SECTION = "## Detector ceiling"


def render(domain: str, n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """RGB frames, per frame (N, 5) boxes [x0, y0, x1, y1, class index], and their COCO truth."""
    from cityloop.governance.schema import CLASSES
    from cityloop.scenes.frames import add_to_coco, coco_skeleton, iter_frames

    imgs, boxes, coco = [], [], coco_skeleton()
    for fr in iter_frames(domain, n, seed, 192, "jpg", 1):
        imgs.append(cv2.imdecode(np.frombuffer(fr.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].copy())
        b = [(x0, y0, x1, y1, CLASSES.index(c)) for c, (x0, y0, x1, y1), _ in fr.boxes]
        boxes.append(np.asarray(b, np.float32).reshape(-1, 5))
        add_to_coco(coco, fr.name, 192, fr.boxes, {})
    return imgs, boxes, coco


def evaluate_model(model, imgs: list[np.ndarray], coco: dict) -> tuple[float, dict[str, float]]:
    import torch

    from cityloop.governance.schema import CLASSES
    from cityloop.models.card import OutputSpec
    from cityloop.models.evaluate import evaluate
    from cityloop.models.runtime import Detection, decode_centernet

    model.eval()
    preds: dict[int, list] = {}
    with torch.no_grad():
        for s in range(0, len(imgs), 64):
            x = torch.from_numpy(np.stack(imgs[s : s + 64]).transpose(0, 3, 1, 2).copy()).float() / 255
            outs = [o.numpy() for o in model(x)]
            for b, rows in enumerate(decode_centernet(*outs, OutputSpec())):
                preds[s + b + 1] = [Detection(float(x0), float(y0), float(x1), float(y1), float(sc), int(lab),
                                              CLASSES[int(lab)]) for x0, y0, x1, y1, sc, lab in rows]
    model.train()
    r = evaluate(coco, preds)
    return r["mAP50"], r["per_class"]


def run(frames: int, marks: list[int], width: int, lr: float, threads: int) -> list[Row]:
    import torch

    from cityloop.governance.schema import CLASSES
    from cityloop.models.components.detector import Detector, DetectorConfig
    from cityloop.models.data import Augment, draw_targets
    from cityloop.models.module import detection_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    tr_i, tr_b, _ = render("field", frames, 50)
    be_i, _, be_coco = render("field", 400, 1)
    log(f"rendered {frames} + 400 frames in {time.perf_counter() - t0:.0f} s")
    aug, rng = Augment(), np.random.default_rng(0)
    model = Detector(DetectorConfig(width=width))
    epochs, bs = max(marks), 32
    steps = len(tr_i) // bs
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
    rows: list[Row] = []
    t0 = time.perf_counter()
    for ep in range(1, epochs + 1):
        perm = rng.permutation(len(tr_i))
        for s in range(steps):
            xs, ts = [], []
            for i in perm[s * bs : (s + 1) * bs]:
                img, bx = aug(tr_i[i], tr_b[i][:, :4].copy(), rng)
                xs.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 255)
                ts.append(draw_targets(bx, tr_b[i][:, 4].astype(np.int64), len(CLASSES), (192, 192), 4, 16.0))
            targets = {k: torch.from_numpy(np.stack([t[k] for t in ts])) for k in ts[0]}
            loss = detection_loss(model.forward_raw(torch.stack(xs)), targets)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if ep in marks:
            m, per_class = evaluate_model(model, be_i, be_coco)
            pcs = ", ".join(f"{k} {v:.2f}" for k, v in per_class.items())
            log(f"epoch {ep}: mAP@0.5 {m:.3f} ({pcs})")
            rows.append(Row(f"field mAP@0.5 after {ep} of {epochs} epochs ({frames} truth-labeled frames)", m, "",
                            f"{time.perf_counter() - t0:.0f} s; {pcs}"))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1500, help="truth-labeled field frames to train on")
    p.add_argument("--epochs", default="8,16,32", help="evaluation marks; the schedule is the largest")
    p.add_argument("--width", type=int, default=16, help="detector width (params train.width)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    args = p.parse_args(argv)
    cmd, load = command_line(), loadavg()
    t0 = time.perf_counter()
    rows = run(args.frames, sorted(int(x) for x in args.epochs.split(",")), args.width, args.lr, args.threads)
    from importlib.metadata import version

    finish("Detector ceiling on field data", SECTION, rows, machine_facts(load, torch=version("torch")), cmd,
           time.perf_counter() - t0, args.out)


if __name__ == "__main__":
    main()
