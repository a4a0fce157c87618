"""Two-stage helmet probe: the detector finds the rider, a small classifier calls helmet / no helmet on a
crop of the camera's larger stream. Measured before building it into the platform.

    .venv/bin/python benchmarks/probe_attribute.py /tmp/w.pt [--main 640] [--frames 2000] [--crop 48]

`/tmp/w.pt`: a detector state_dict (`probe_accuracy.py --save`, or a registered version's weights.pt).

Deployed helmet systems find the rider first and then classify the head on a crop (the issue's
"two-stage attributes"). A real camera serves a substream (the 320 px frame the detector reads) and a
main stream of the same view at a higher resolution; the crop comes from the main stream, where a near
rider's head is tens of pixels instead of eight. The simulator draws the same scene at any size from the
same seed (objects, camera, condition), so `--main 640` renders each frame a second time at 640 px as
that main stream. Its motion blur is a kernel in pixels, so the main stream gets it scaled to its size
(a shutter's smear covers the same part of the scene in either stream); noise and JPEG quality are the
camera's, per pixel. `--main 320` crops the detector's own frame (the same pixels the cue head reads).

Steps: rider truth boxes (not the mostly hidden ones) of `--frames` field frames (seed 50, the ceiling
probe's; `--train-domain lab`: lab frames of seed 0, the demo's lab set, as a classifier shipped with the
launch model would learn) give head crops, jittered as a detector's boxes are; a small CNN learns helmet
vs bare head.
On the probe's 400 field-bench-like frames (seed 1; `--bench-seed` another) it reports
- the detector as it is (its cue head at the rider's head), mAP@0.5 and both rider classes' AP;
- two-stage: the detector's rider group (its heat before the cue split) x the classifier's probability,
  crops from the main stream; the same figures, and the helmet confusions either way;
- the classifier's accuracy on the bench frames' truth crops, and its cost per crop (onnxruntime).
Replaces the "## Two-stage helmet probe" section of benchmarks/results.md.
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
sys.path.insert(0, str(REPO / "benchmarks"))

from benchkit import Row, command_line, finish, loadavg, log, machine_facts  # noqa: E402

SECTION = "## Two-stage helmet probe"
HEAD_BOX = (0.5, 0.15, 0.55)  # the crop: centre x, centre y (fractions of the rider box), side (x its width)


def render_main(domain: str, n: int, seed: int, size: int, main: int, workers: int = 2
                ) -> tuple[list[np.ndarray], list[list], list[np.ndarray]]:
    """The detector's frames (size px), their truth [(class, box, shown)], and the same frames' main stream
    (main px; the same images when main == size)."""
    from cityloop.scenes.frames import iter_frames

    lo, truth, hi = [], [], []
    for fr in iter_frames(domain, n, seed, size, "jpg", workers):
        lo.append(cv2.imdecode(np.frombuffer(fr.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].copy())
        truth.append([(c, b, s) for (c, b, _), s in zip(fr.boxes, fr.shown)])
    if main == size:
        return lo, truth, lo
    k = main / size
    for fr in iter_frames(domain, n, seed, main, "jpg", workers):
        img = cv2.imdecode(np.frombuffer(fr.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        if fr.condition.blur:  # the smear in main-stream pixels: the kernel the condition drew, x main / size
            extra = int(round(fr.condition.blur * (k - 1))) + 1
            kern = np.zeros((extra, extra), np.float32)
            kern[extra // 2, :] = 1.0 / extra
            img = cv2.filter2D(img, -1, kern)
        hi.append(np.ascontiguousarray(img))
    return lo, truth, hi


def head_crop(img: np.ndarray, box, out: int, jitter: np.ndarray | None = None) -> np.ndarray:
    """A square crop around the rider's head (HEAD_BOX of its box, in `img`'s px), resized to out x out.
    `jitter` (dx, dy, scale): shifts in box widths and a size factor, as a detector's box errs."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy, side = x0 + HEAD_BOX[0] * w, y0 + HEAD_BOX[1] * h, HEAD_BOX[2] * w
    if jitter is not None:
        cx, cy, side = cx + jitter[0] * w, cy + jitter[1] * w, side * jitter[2]
    side = max(side, 2.0)
    H, W = img.shape[:2]
    a = np.float32([[out / side, 0, out / 2 - cx * out / side], [0, out / side, out / 2 - cy * out / side]])
    return cv2.warpAffine(img, a, (out, out), flags=cv2.INTER_AREA if side > out else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def classifier(width: int = 16):
    """A small CNN: helmet (0) vs no helmet (1) from a head crop; standardised per crop like the detector."""
    from torch import nn

    from cityloop.models.components.detector import conv_bn as cbr  # the detector's 3x3 conv + BN + ReLU

    class HeadNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.body = nn.Sequential(cbr(3, w), cbr(w, w), cbr(w, 2 * w, 2), cbr(2 * w, 2 * w), cbr(2 * w, 4 * w, 2),
                                      cbr(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 2))

        def forward(self, x):
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True) + 1e-3
            return self.body((x - mean) / std)

    return HeadNet()


def to_tensor(crops: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy()).float() / 255


def train_classifier(crops_fn, n_epochs: int, seed: int = 0):
    """Train on crops_fn(rng) -> (crops, labels) drawn afresh each epoch (jitter, flips)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = classifier()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    x0, y0 = crops_fn(rng)
    steps = n_epochs * int(np.ceil(len(x0) / 64))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    net.train()
    for ep in range(n_epochs):
        xs, ys = (x0, y0) if ep == 0 else crops_fn(rng)
        x, y = to_tensor(xs), torch.as_tensor(ys)
        perm = torch.randperm(len(x))
        for s in range(0, len(x), 64):
            idx = perm[s : s + 64]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net


def p_no_helmet(net, crops: list[np.ndarray]) -> np.ndarray:
    import torch

    if not crops:
        return np.zeros(0, np.float32)
    with torch.no_grad():
        return torch.softmax(net(to_tensor(crops)), 1)[:, 1].numpy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", type=Path, help="a detector state_dict (probe_accuracy.py --save)")
    p.add_argument("--main", type=int, default=640, help="the main stream's size in px (the crops' source)")
    p.add_argument("--frames", type=int, default=2000, help="frames whose riders train the classifier")
    p.add_argument("--train-domain", default="field", choices=["field", "lab"],
                   help="their domain: field (seed 50, the ceiling probe's) or lab (seed 0, the demo's lab set: "
                        "a classifier shipped with the launch model)")
    p.add_argument("--bench-frames", type=int, default=400, help="field-bench-like frames scored")
    p.add_argument("--bench-seed", type=int, default=1,
                   help="their seed (1: the benchmark's, as the other probes; another: frames nobody tuned on)")
    p.add_argument("--crop", type=int, default=48, help="the classifier's input in px")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    args = p.parse_args(argv)
    cmd, load, t0 = command_line(), loadavg(), time.perf_counter()
    import torch
    from probe_accuracy import predict
    from pycocotools import mask

    from cityloop.core.settings import load_params
    from cityloop.governance.schema import CLASSES
    from cityloop.models.card import OutputSpec
    from cityloop.models.components.detector import Detector, DetectorConfig
    from cityloop.models.evaluate import evaluate
    from cityloop.models.runtime import Detection, decode_centernet
    from cityloop.scenes.frames import HIDDEN_BELOW, add_to_coco, coco_skeleton

    torch.set_num_threads(2)
    size = int(load_params(REPO).get("generate", {}).get("size", 192))
    k = args.main / size
    riders = ("rider_helmet", "rider_no_helmet")
    t = time.perf_counter()
    train_seed = 50 if args.train_domain == "field" else 0
    _, tr_truth, tr_hi = render_main(args.train_domain, args.frames, train_seed, size, args.main)
    be_lo, be_truth, be_hi = render_main("field", args.bench_frames, args.bench_seed, size, args.main)
    log(f"rendered {args.frames} {args.train_domain} + {args.bench_frames} field frames at {size} and "
        f"{args.main} px in {time.perf_counter() - t:.0f} s")
    heads = [(i, np.asarray(b) * k, int(c == "rider_no_helmet")) for i, boxes in enumerate(tr_truth)
             for c, b, s in boxes if c in riders and s >= HIDDEN_BELOW]

    def crops_fn(rng):
        xs, ys = [], []
        for i, b, y in heads:
            j = np.array([rng.normal(0, 0.06), rng.normal(0, 0.06), np.exp(rng.normal(0, 0.12))])
            c = head_crop(tr_hi[i], b, args.crop, j)
            xs.append(c[:, ::-1] if rng.random() < 0.5 else c)
            ys.append(y)
        return xs, ys

    t = time.perf_counter()
    net = train_classifier(crops_fn, args.epochs)
    train_s = time.perf_counter() - t
    log(f"classifier: {sum(p.numel() for p in net.parameters()):,} parameters, {len(heads)} rider crops, "
        f"{args.epochs} epochs in {train_s:.0f} s")

    coco = coco_skeleton()
    for i, boxes in enumerate(be_truth):
        add_to_coco(coco, f"b{i}", size, [(c, b, 0) for c, b, _ in boxes], {}, [s for _, _, s in boxes])
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    cfg = DetectorConfig.from_state_dict(state)
    model = Detector(cfg)
    model.load_state_dict(state)
    base = predict(model, be_lo)  # the cue head's call
    r_base = evaluate(coco, base)

    # the rider group: the raw outputs, before the cue split (the group's heat is on its first class's channel)
    model.eval()
    ix = [CLASSES.index(c) for c in riders]
    two = {}
    with torch.no_grad():
        for s in range(0, len(be_lo), 32):
            x = torch.from_numpy(np.stack(be_lo[s : s + 32]).transpose(0, 3, 1, 2).copy()).float() / 255
            heat, logwh, off, _ = model.forward_raw(x)
            wh = torch.exp(logwh.clamp(-6, 6)) * cfg.wh_unit
            heat, wh, off = heat.numpy(), wh.numpy(), off.numpy()
            for b, rows in enumerate(decode_centernet(heat, wh, off, OutputSpec())):
                img_id = s + b + 1
                keep = [Detection(*map(float, r[:5]), int(r[5]), CLASSES[int(r[5])]) for r in rows
                        if int(r[5]) not in ix]
                rid = [r for r in rows if int(r[5]) == ix[0]]
                pn = p_no_helmet(net, [head_crop(be_hi[s + b], np.asarray(r[:4]) * k, args.crop) for r in rid])
                for r, q in zip(rid, pn):
                    for c, pc in ((ix[0], 1 - q), (ix[1], q)):
                        keep.append(Detection(*map(float, r[:4]), float(r[4] * pc), c, CLASSES[c]))
                two[img_id] = keep
    r_two = evaluate(coco, two)

    # the classifier alone on the bench's truth riders (no detector): accuracy, both ways
    tb = [(i, np.asarray(b) * k, int(c == "rider_no_helmet")) for i, boxes in enumerate(be_truth)
          for c, b, s in boxes if c in riders and s >= HIDDEN_BELOW]
    pn = p_no_helmet(net, [head_crop(be_hi[i], b, args.crop) for i, b, _ in tb])
    y = np.array([v for _, _, v in tb])
    acc, miss_h, miss_n = float(np.mean((pn >= 0.5) == y)), float(np.mean(pn[y == 0] >= 0.5)), \
        float(np.mean(pn[y == 1] < 0.5))

    def confusions(preds) -> tuple[float, float]:
        """Share of truth helmet / no-helmet riders (not hidden) whose best same-place detection (IoU >= 0.5,
        score >= 0.3) is the other rider class."""
        wrong = {0: [], 1: []}
        for img_id, boxes in enumerate(be_truth, start=1):
            d = [x for x in preds.get(img_id, []) if x.cls in riders and x.score >= 0.3]
            for c, b, s in boxes:
                if c not in riders or s < HIDDEN_BELOW or not d:
                    continue
                m = mask.iou([[x.x0, x.y0, x.x1 - x.x0, x.y1 - x.y0] for x in d],
                             [[b[0], b[1], b[2] - b[0], b[3] - b[1]]], [0])[:, 0]
                cand = [(x.score, x.cls) for x, v in zip(d, m) if v >= 0.5]
                if cand:
                    wrong[riders.index(c)].append(max(cand)[1] != c)
        return tuple(float(np.mean(v)) if v else 0.0 for v in (wrong[0], wrong[1]))

    import onnxruntime as ort

    onnx_path = Path("/tmp") / f"headnet-{args.main}.onnx"
    torch.onnx.export(net, (to_tensor([np.zeros((args.crop, args.crop, 3), np.uint8)] * 8),), str(onnx_path),
                      input_names=["crops"], output_names=["logits"], dynamo=True, external_data=False,
                      verbose=False, dynamic_shapes=({0: torch.export.Dim("batch")},))  # as models/export.py
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    batch = to_tensor([head_crop(be_hi[i], b, args.crop) for i, b, _ in tb[:8]]).numpy()
    with torch.no_grad():
        parity = float(np.abs(sess.run(None, {"crops": batch})[0] - net(torch.from_numpy(batch)).numpy()).max())
    t = time.perf_counter()
    for _ in range(50):
        sess.run(None, {"crops": batch})
    per_crop_ms = (time.perf_counter() - t) / 50 / len(batch) * 1000
    onnx_kb = onnx_path.stat().st_size / 1024

    rows = []
    for name, r, preds in (("detector alone (cue head, 320 px)", r_base, base),
                           (f"two-stage (crops of the {args.main} px stream)", r_two, two)):
        pc = r["per_class"]
        ch, cn = confusions(preds)
        rows.append(Row(f"{name}: field mAP@0.5", r["mAP50"], "",
                        f"rider_helmet {pc['rider_helmet']:.3f}, rider_no_helmet {pc['rider_no_helmet']:.3f}; "
                        f"helmet called no helmet {ch:.3f}, no helmet called helmet {cn:.3f}"))
    rows.append(Row(f"classifier on truth head crops of the {args.main} px stream: accuracy", acc, "",
                    f"{len(tb)} riders of {args.bench_frames} frames (seed {args.bench_seed}); helmet called "
                    f"no helmet {miss_h:.3f}, no helmet called helmet {miss_n:.3f}; trained on {len(heads)} crops "
                    f"of {args.frames} {args.train_domain} frames in {train_s:.0f} s"))
    rows.append(Row("classifier cost (onnxruntime, 1 thread, batches of 8)", per_crop_ms, "ms per crop",
                    f"{sum(p.numel() for p in net.parameters()):,} parameters, {onnx_kb:.0f} KiB ONNX; "
                    f"{args.crop} px crops; onnxruntime vs torch: logits within {parity:.1e}"))
    from importlib.metadata import version

    finish("Two-stage helmet probe", SECTION, rows, machine_facts(load, torch=version("torch")), cmd,
           time.perf_counter() - t0, args.out,
           extra=f"Detector weights `{args.weights}`; crops {HEAD_BOX[2]} x the rider box's width around "
                 f"({HEAD_BOX[0]}, {HEAD_BOX[1]}) of it, resized to {args.crop} px; "
                 + (f"the main stream rendered from the same seeds at {args.main} px." if args.main != size
                    else "crops of the detector's own frames."))


if __name__ == "__main__":
    main()
