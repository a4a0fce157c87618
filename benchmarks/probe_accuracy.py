"""Accuracy probe: how far the detector gets on field data with unlimited truth labels, no loop.

    .venv/bin/python benchmarks/probe_accuracy.py [--frames 2000] [--epochs 10,20,30] [--width 16]
        [--mult 2,4,8,12] [--depth 0,1,1,1] [--neck 4] [--giou 0]
        [--size N (default: generate.size)] [--domain field|lab] [--precision auto|32|bf16] [--paste 0.5 --paste-n 3]
        [--init weights.pt] [--save weights.pt] [--rfs T] [--hidden ignore|object]

Renders `--frames` field frames (seed 50) and 400 field-bench-like frames (seed 1, the benchmark's
seed) in memory, trains the plain Detector from scratch with the project's augmentation, targets,
loss, bf16 autocast (where native) and EMA weights (one OneCycle schedule of max(--epochs) epochs)
and reports mAP@0.5 overall and per class with the project's decoder and pycocotools evaluation
at each mark. `--domain lab` trains on lab frames instead (the launch model) and scores them on lab
frames of cameras it never saw (seed 1000) beside the field frames. It is the ceiling the closed
loop's fine-tunes work under: if this is far from loop.target, more labels will not close the gap,
a stronger detector (or a simulator whose cues survive 192 px) will.

A plain training loop rather than Lightning: the frames never become a governed dataset version
(this measures the model, not the platform), and evaluation runs mid-schedule at the marks.
The network's shape flags default to params.yaml's `train:` section (the detector `make demo` trains).
`--init` starts from a Detector state_dict instead of from scratch (the launch model: a registered
version's weights.pt), its shape read from the weights: the ceiling of fine-tuning the launch model on
field truth, which is what the loop does.

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


def render(domain: str, n: int, seed: int, size: int, workers: int = 2
           ) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """RGB frames, per frame (N, 5) boxes [x0, y0, x1, y1, label], and their COCO truth. A box under half
    shown is iscrowd in the COCO and its label is data.IGNORED + its class index (draw_targets ignores it)."""
    from cityloop.governance.schema import CLASSES
    from cityloop.models.data import IGNORED
    from cityloop.scenes.frames import HIDDEN_BELOW, add_to_coco, coco_skeleton, iter_frames

    imgs, boxes, coco = [], [], coco_skeleton()
    for fr in iter_frames(domain, n, seed, size, "jpg", workers):
        imgs.append(cv2.imdecode(np.frombuffer(fr.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].copy())
        b = [(x0, y0, x1, y1, CLASSES.index(c) + IGNORED * (share < HIDDEN_BELOW))
             for (c, (x0, y0, x1, y1), _), share in zip(fr.boxes, fr.shown)]
        boxes.append(np.asarray(b, np.float32).reshape(-1, 5))
        add_to_coco(coco, fr.name, size, fr.boxes, {}, fr.shown)  # "shown" and iscrowd per box (probe_errors)
    return imgs, boxes, coco


def predict(model, imgs: list[np.ndarray]) -> dict[int, list]:
    """The model's decoded detections per COCO image id (1-based, in `imgs` order)."""
    import torch

    from cityloop.governance.schema import CLASSES
    from cityloop.models.card import OutputSpec
    from cityloop.models.runtime import Detection, decode_centernet

    was_training = model.training
    model.eval()
    preds: dict[int, list] = {}
    with torch.no_grad():
        for s in range(0, len(imgs), 32):
            x = torch.from_numpy(np.stack(imgs[s : s + 32]).transpose(0, 3, 1, 2).copy()).float() / 255
            outs = [o.float().numpy() for o in model(x)]
            for b, rows in enumerate(decode_centernet(*outs, OutputSpec())):
                preds[s + b + 1] = [Detection(float(x0), float(y0), float(x1), float(y1), float(sc), int(lab),
                                              CLASSES[int(lab)]) for x0, y0, x1, y1, sc, lab in rows]
    model.train(was_training)
    return preds


def evaluate_model(model, imgs: list[np.ndarray], coco: dict) -> tuple[float, dict[str, float]]:
    from cityloop.models.evaluate import evaluate

    r = evaluate(coco, predict(model, imgs))
    return r["mAP50"], r["per_class"]


def run(frames: int, marks: list[int], width: int, lr: float, threads: int, size: int, precision: str,
        bench_frames: int, domain: str = "field", paste: float = 0.0, paste_n: int = 3,
        arch: dict | None = None, giou: float = 0.0, save: Path | None = None, init: Path | None = None,
        rfs: float = 0.0, hidden: str = "ignore") -> list[Row]:
    import torch

    from cityloop.governance.schema import CLASSES
    from cityloop.models.components.detector import Detector, DetectorConfig
    from cityloop.models.data import IGNORED, Augment, class_index, donor_crop, draw_targets, repeat_factors
    from cityloop.models.module import detection_loss, ema_model, use_bf16

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    tr_i, tr_b, _ = render(domain, frames, 50, size, threads)
    if hidden == "object":  # train on hidden boxes as plain objects (as before the ignore flag); scoring still ignores
        for b in tr_b:
            b[:, 4] = class_index(b[:, 4])
    be_i, _, be_coco = render("field", bench_frames, 1, size, threads)
    evals = {"field": (be_i, be_coco)}
    if domain != "field":  # a lab-trained (launch) model: also its own domain, frames it never saw
        lab_i, _, lab_coco = render(domain, bench_frames, 1000, size, threads)
        evals = {domain: (lab_i, lab_coco), **evals}
    log(f"rendered {frames} {domain} + {bench_frames} field frames of {size} px in {time.perf_counter() - t0:.0f} s")
    aug, rng = Augment(paste=paste), np.random.default_rng(0)
    objects = [(i, k) for i, b in enumerate(tr_b) for k in range(len(b)) if b[k, 4] < IGNORED]  # paste donors
    if init is not None:  # fine-tune a trained model (its shape from its weights; the flags do not apply)
        state = torch.load(init, map_location="cpu", weights_only=True)
        model = Detector(DetectorConfig.from_state_dict(state))
        model.load_state_dict(state)
        log(f"starting from {init}: {model.cfg}")
    else:
        model = Detector(DetectorConfig(width=width, **(arch or {})))
    bf16, fmt = use_bf16(precision), torch.channels_last  # oneDNN's convolutions run faster channels-last
    model = model.to(memory_format=fmt)
    ema = ema_model(model)
    epochs, bs = max(marks), 32
    steps = len(tr_i) // bs
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
    draw = None  # repeat-factor sampling: frames drawn with replacement, weighted, the same steps per epoch
    if rfs:
        rf = repeat_factors([class_index(b[:, 4]) for b in tr_b], len(CLASSES), rfs)
        draw = rf / rf.sum()
        log(f"repeat-factor sampling t={rfs}: factors {rf.min():.2f}-{rf.max():.2f}, mean {rf.mean():.2f}")
    rows: list[Row] = []
    log(f"training {sum(p.numel() for p in model.parameters()):,} parameters, bf16 autocast {bf16}")
    t0 = time.perf_counter()
    for ep in range(1, epochs + 1):
        perm = rng.permutation(len(tr_i)) if draw is None else rng.choice(len(tr_i), len(tr_i), p=draw)
        for s in range(steps):
            xs, ts = [], []
            for i in perm[s * bs : (s + 1) * bs]:
                picks = rng.integers(0, len(objects), paste_n) if paste and objects else []
                donors = [(donor_crop(tr_i[objects[j][0]], tr_b[objects[j][0]][objects[j][1]]),
                           int(tr_b[objects[j][0]][objects[j][1], 4])) for j in picks]
                img, bx, lab = aug(tr_i[i], tr_b[i][:, :4].copy(), rng, tr_b[i][:, 4].astype(np.int64), donors)
                xs.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 255)
                ts.append(draw_targets(bx, lab, len(CLASSES), (size, size), 4, 16.0))
            targets = {k: torch.from_numpy(np.stack([t[k] for t in ts])) for k in ts[0]}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model.forward_raw(torch.stack(xs).contiguous(memory_format=fmt))
            loss = detection_loss(tuple(o.float() for o in out), targets, model.cfg.cue_groups, giou)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            ema.update_parameters(model)
        if ep in marks:
            for name, (imgs, coco) in evals.items():
                m, per_class = evaluate_model(ema.module, imgs, coco)
                pcs = ", ".join(f"{k} {v:.2f}" for k, v in per_class.items())
                log(f"epoch {ep} ({time.perf_counter() - t0:.0f} s): {name} mAP@0.5 {m:.3f} ({pcs})")
                rows.append(Row(f"{name} mAP@0.5 after {ep} of {epochs} epochs ({frames} truth-labeled {domain} "
                                f"frames)", m, "", f"{time.perf_counter() - t0:.0f} s; min class "
                                f"{min(per_class.values()):.2f}; {pcs}"))
    if save is not None:  # the EMA weights, for error analysis (models.lifecycle.load_detector reads them)
        save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ema.module.state_dict(), save)
        log(f"saved the EMA weights to {save}")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=2000, help="truth-labeled field frames to train on")
    p.add_argument("--epochs", default="10,20,30", help="evaluation marks; the schedule is the largest")
    p.add_argument("--width", type=int, default=None, help="detector width (default: params train.width)")
    p.add_argument("--mult", default=None,
                   help="channels of the /4,/8,/16,/32 stages in units of width (default: params train.stage_mult)")
    p.add_argument("--depth", default=None,
                   help="residual blocks added to the /4,/8,/16,/32 stages (default: params train.depth)")
    p.add_argument("--neck", type=int, default=None, help="channels of the FPN neck and head trunk in units of "
                   "width (0: the /4 stage's; default: params train.neck)")
    p.add_argument("--giou", type=float, default=0.0, help="weight of the GIoU box loss (0: L1 only)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=None, help="frame size in px (default: params generate.size)")
    p.add_argument("--precision", default="auto", choices=["auto", "32", "bf16"],
                   help="auto: bf16 autocast where the CPU has native bf16 (AVX512-BF16/AMX), else float32")
    p.add_argument("--domain", default="field", choices=["field", "lab"],
                   help="train on field frames (the ceiling) or lab frames (the launch model; scored on both)")
    p.add_argument("--paste", type=float, default=0.0,
                   help="probability of copy-paste augmentation (objects of other training frames)")
    p.add_argument("--paste-n", type=int, default=3, help="objects pasted when it applies")
    p.add_argument("--bench-frames", type=int, default=400, help="field-bench-like frames scored (seed 1)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these Detector weights (a state_dict: a registered version's weights.pt)")
    p.add_argument("--save", type=Path, default=None, help="also save the final EMA weights (a state_dict) here")
    p.add_argument("--rfs", type=float, default=0.0,
                   help="repeat-factor sampling threshold t (LVIS; 0: off): frames of rarer classes drawn more often")
    p.add_argument("--hidden", default="ignore", choices=["ignore", "object"],
                   help="boxes under half shown in training: ignored (as the truth marks them) or plain objects")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    args = p.parse_args(argv)
    cmd, load = command_line(), loadavg()
    t0 = time.perf_counter()
    from cityloop.core.settings import load_params

    params = load_params(REPO)
    train = params.get("train", {})
    if args.size is None:
        args.size = int(params.get("generate", {}).get("size", 192))
    if args.width is None:
        args.width = int(train.get("width", 16))
    arch = {k: tuple(int(x) for x in v.split(",")) if v else tuple(train[k]) for k, v in
            (("stage_mult", args.mult), ("depth", args.depth)) if v or k in train}
    neck = train.get("neck", 0) if args.neck is None else args.neck
    if neck:
        arch["neck"] = int(neck)
    rows = run(args.frames, sorted(int(x) for x in args.epochs.split(",")), args.width, args.lr, args.threads,
               args.size, args.precision, args.bench_frames, args.domain, args.paste, args.paste_n, arch, args.giou,
               args.save, args.init, args.rfs, args.hidden)
    from importlib.metadata import version

    finish("Detector ceiling on field data", SECTION, rows, machine_facts(load, torch=version("torch")), cmd,
           time.perf_counter() - t0, args.out)


if __name__ == "__main__":
    main()
