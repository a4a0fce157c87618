"""Models benchmark: torch eager vs onnxruntime (FP32, INT8) inference, training speed, export cost.

What one run measures, on the default ``Detector()`` (width 24, random init with a fixed seed) or
on ``--weights`` (a state_dict, or a Lightning checkpoint holding one), with simulator ``field``
frames of ``--size`` px (default: params.yaml's frame contract, ``generate.size``; the model's input
is the same size; rendered first, not timed):

1. Export to ONNX (``models.export.export_onnx``: seconds, file size) and torch/onnxruntime
   parity on the frames (``check_parity``: max abs diff of the raw outputs).
2. Static INT8 quantization (``quantize_int8``, calibrated on ``--calib-frames`` frames): seconds
   and file size.
3. Inference latency (median ms per batch) and throughput (img/s) at batch 1, 8 and 32 of torch
   eager (``torch.inference_mode``), onnxruntime FP32 and onnxruntime INT8, each at its best thread
   count of ``--sweep`` (default 1 and 2), and the ratios ORT/torch and INT8/FP32.
4. Training images/s of the same module: ``forward_raw`` + a simple loss (BCE on the heatmap,
   L1 on size and offset) + backward + AdamW step, batch 32, after a warm-up.
5. Parameter count.
6. Only with ``--eval-images DIR --eval-coco FILE`` (a trained model's benchmark set): mAP50/mAP
   of FP32 and INT8 with ``models.evaluate.evaluate`` and their difference; otherwise skipped
   with a note (mAP of random weights means nothing).

Prints a table and replaces the "## Models" section of ``--out`` (other sections are kept; the
file is read and rewritten only at the very end).

Run: ``.venv/bin/python benchmarks/bench_models.py`` (about a minute on 2 cores), or e.g.
``.venv/bin/python benchmarks/bench_models.py --weights w.pt --eval-images DIR --eval-coco coco.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version as pkg_version
from pathlib import Path

import numpy as np
import torch
from benchkit import Row, command_line, cpuinfo, fmt, loadavg, log, print_table, write_results

from cityloop.models.card import InputSpec, ModelCard
from cityloop.models.components.detector import Detector, DetectorConfig
from cityloop.models.export import check_parity, export_onnx, quantize_int8, torch_outputs
from cityloop.models.runtime import OnnxDetector, decode_image, preprocess
from cityloop.scenes.frames import iter_frames

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Models"
SEED = 0
BATCHES = (1, 8, 32)
TRAIN_BATCH = 32




# ---------------------------------------------------------------------- model and data


def load_model(weights: Path | None) -> Detector:
    """Detector() with seeded random init, or one built to fit a saved state_dict."""
    torch.manual_seed(SEED)
    if weights is None:
        return Detector().eval()
    obj = torch.load(weights, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not any(k.startswith("stem.") for k in state):  # a LightningModule's "model." / "detector." prefix
        prefix = next(k.split("stem.")[0] for k in state if ".stem." in k)
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    model = Detector(DetectorConfig.from_state_dict(state))
    model.load_state_dict(state)
    return model.eval()


def make_card(model: Detector, size: int) -> ModelCard:
    from cityloop.governance.schema import CLASSES  # platform classes: the default Detector's outputs

    n = model.cfg.num_classes
    classes = list(CLASSES[:n]) if n <= len(CLASSES) else [f"class{i}" for i in range(n)]
    return ModelCard(name="detector-bench", version="0", vendor="cityloop", classes=classes,
                     input=InputSpec(height=size, width=size))


def frames(n: int, seed: int, size: int) -> list[np.ndarray]:
    return [decode_image(f.data) for f in iter_frames("field", n, seed=seed, size=size)]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------- timing


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def repeats_for(batch: int, scale: float) -> int:
    return max(5, round(scale * 240 / batch))


def bench_inference(model: Detector, fp32: Path, int8: Path, card: ModelCard, images: list[np.ndarray],
                    thread_counts: list[int], scale: float) -> dict[str, dict[int, tuple[float, int]]]:
    """(median ms per batch, threads) at each runtime's best thread count, per batch size: every runtime is
    timed at every count in `thread_counts` (runtimes and counts interleaved per batch size), its fastest
    kept. onnxruntime runs with its default spinning threads (nothing else shares the cores here)."""
    sessions = {t: (OnnxDetector(fp32, card, t), OnnxDetector(int8, card, t)) for t in thread_counts}
    ms: dict[str, dict[int, tuple[float, int]]] = {"torch": {}, "ort": {}, "int8": {}}
    for b in BATCHES:
        x = preprocess((images * (b // len(images) + 1))[:b], card.input)
        xt = torch.from_numpy(x)
        n = repeats_for(b, scale)
        log(f"inference: batch {b}, {n} runs each at {thread_counts} threads")

        def eager(xt: torch.Tensor = xt) -> None:
            with torch.inference_mode():
                model(xt)

        for t in thread_counts:
            torch.set_num_threads(t)
            ort32, ort8 = sessions[t]
            for key, fn in (("torch", eager), ("ort", lambda x=x, s=ort32: s.raw(x)),
                            ("int8", lambda x=x, s=ort8: s.raw(x))):
                m = median_ms(fn, n)
                if b not in ms[key] or m < ms[key][b][0]:
                    ms[key][b] = (m, t)
    torch.set_num_threads(max(thread_counts))
    return ms


def bench_training(model: Detector, card: ModelCard, images: list[np.ndarray], iters: int,
                   warmup: int = 2) -> float:
    """Training images/s: forward_raw + BCE/L1 loss + backward + AdamW step, batch TRAIN_BATCH."""
    net = Detector(model.cfg)
    net.load_state_dict(model.state_dict())
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.from_numpy(preprocess((images * (TRAIN_BATCH // len(images) + 1))[:TRAIN_BATCH], card.input))
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        heat, wh, off = net.forward_raw(x[:1])[:3]
    target = (torch.rand((TRAIN_BATCH, *heat.shape[1:]), generator=g) > 0.995).float()  # sparse "centres"
    wh_t = torch.randn((TRAIN_BATCH, *wh.shape[1:]), generator=g) * 0.5
    off_t = torch.rand((TRAIN_BATCH, *off.shape[1:]), generator=g)

    def step() -> None:
        heat, wh, off = net.forward_raw(x)[:3]
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(heat, target)
                + (wh - wh_t).abs().mean() + (off - off_t).abs().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return iters * TRAIN_BATCH / (time.perf_counter() - t0)


def eval_map(fp32: Path, int8: Path, card: ModelCard, images_dir: Path, coco_file: Path,
             threads: int) -> tuple[dict, dict, int]:
    """mAP of FP32 and INT8 on a COCO-annotated image folder (models.evaluate does the scoring)."""
    from cityloop.models.evaluate import evaluate

    gt = json.loads(coco_file.read_text())
    ids = [im["id"] for im in gt["images"]]
    imgs = [decode_image((images_dir / im["file_name"]).read_bytes()) for im in gt["images"]]
    out = []
    for path in (fp32, int8):
        dets = OnnxDetector(path, card, threads).detect(imgs)
        out.append(evaluate(gt, dict(zip(ids, dets))))
    return out[0], out[1], len(imgs)


# ---------------------------------------------------------------------- report


def machine_facts(load_at_start: str, threads: int) -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo() if line.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    import onnx
    import onnxruntime

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "isa": " ".join(isa) or "?",
        "load avg 1/5/15 min at start": load_at_start,
        "at end": loadavg(),
        "threads": str(threads),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": pkg_version("onnxscript"),
    }










def markdown(rows: list[Row], facts: dict[str, str], cmd: str, seconds: float, model_note: str) -> str:
    lines = [SECTION, "", f"Command: `{cmd}` (whole run {seconds:.0f} s)", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()), "",
             f"Model: {model_note}", "",
             "| measure | value | unit | notes |", "|---|---:|---|---|"]
    lines += [f"| {r.what} | {fmt(r.value)} | {r.unit} | {r.note} |" for r in rows]
    return "\n".join(lines) + "\n"






# ---------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> tuple[list[Row], str]:
    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    card = make_card(model, args.size)
    params = count_params(model)
    model_note = (f"`{args.weights}`" if args.weights else f"default `Detector()` random init (seed {SEED})"
                  ) + f", width {model.cfg.width}, {params:,} parameters, input {card.input.width} px"
    log(f"rendering {args.frames} field frames (not timed)")
    images = frames(args.frames, SEED, args.size)
    calib = images[: args.calib_frames]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cityloop-bench-models-") as tmp:
        fp32, int8 = Path(tmp) / "detector.onnx", Path(tmp) / "detector.int8.onnx"
        log("export + parity")
        t0 = time.perf_counter()
        export_onnx(model, card, fp32)
        export_s = time.perf_counter() - t0
        parity = check_parity(model, fp32, card, images)
        log("INT8 quantization")
        t0 = time.perf_counter()
        quantize_int8(fp32, int8, card, calib)
        quant_s = time.perf_counter() - t0
        x = preprocess(images, card.input)
        ref, q = torch_outputs(model, x), OnnxDetector(int8, card, args.threads).raw(x)
        int8_err = {n: float(np.abs(a - b).max()) for n, a, b in zip(card.output.names, q, ref)}
        ms = bench_inference(model, fp32, int8, card, images, args.sweep or [args.threads], args.scale)
        log(f"training: batch {TRAIN_BATCH}, {args.train_iters} iterations after 2 warm-up")
        train_ips = bench_training(model, card, images, args.train_iters)
        mAP = None
        if args.eval_images and args.eval_coco:
            log(f"mAP: {args.eval_coco}")
            mAP = eval_map(fp32, int8, card, args.eval_images, args.eval_coco, args.threads)
        fp32_kib, int8_kib = fp32.stat().st_size / 1024, int8.stat().st_size / 1024

    diffs = ", ".join(f"{k} {v:.1e}" for k, v in parity.max_abs_diff.items())
    rows += [
        Row("parameters", params, "", f"width {model.cfg.width}, {model.cfg.num_classes} classes"),
        Row("export to ONNX (dynamo, opset 18)", export_s, "s", "torch.onnx.export + onnx.checker full check"),
        Row("ONNX FP32 file", fp32_kib, "KiB", "self-contained, dynamic batch"),
        Row("parity torch vs ORT FP32: max abs diff", max(parity.max_abs_diff.values()), "",
            f"{'passed' if parity.passed else 'FAILED'}{': ' + parity.reason if parity.reason else ''}; {diffs}; "
            f"{parity.frames} frames"),
        Row("INT8 quantization", quant_s, "s", f"QDQ static, per-channel, {len(calib)} calibration frames"),
        Row("ONNX INT8 file", int8_kib, "KiB", f"{fp32_kib / int8_kib:.1f}x smaller"),
        Row("INT8 vs FP32 torch: max abs diff", max(int8_err.values()), "",
            ", ".join(f"{k} {v:.3f}" for k, v in int8_err.items()) + " (heads kept in float)"),
    ]
    for b in BATCHES:
        for key, label in (("torch", "torch eager"), ("ort", "ORT FP32"), ("int8", "ORT INT8")):
            m, t = ms[key][b]
            rows.append(Row(f"{label}, batch {b}", m, "ms/batch", f"{1000 * b / m:,.0f} img/s at {t} thread(s)"))
    for b in BATCHES:
        rows.append(Row(f"ORT FP32 / torch eager, batch {b}", ms["torch"][b][0] / ms["ort"][b][0], "x",
                        "throughput ratio, each at its best thread count (>1: ORT faster)"))
    for b in BATCHES:
        rows.append(Row(f"ORT INT8 / ORT FP32, batch {b}", ms["ort"][b][0] / ms["int8"][b][0], "x",
                        "throughput ratio, each at its best thread count (>1: INT8 faster)"))
    rows.append(Row(f"training, batch {TRAIN_BATCH}", train_ips, "img/s",
                    f"forward_raw + BCE/L1 + backward + AdamW, {args.train_iters} iters, {args.threads} threads"))
    if mAP is None:
        rows.append(Row("mAP INT8 - FP32", None, "", "skipped: needs a trained model (--weights) and "
                        "--eval-images DIR --eval-coco FILE"))
    else:
        f, q8, n = mAP
        for k in ("mAP50", "mAP"):
            rows.append(Row(f"{k} INT8 - FP32", q8[k] - f[k], "", f"FP32 {f[k]:.4f}, INT8 {q8[k]:.4f}, {n} images"))
    return rows, model_note


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, help="state_dict (.pt) of a Detector; default: random init")
    p.add_argument("--eval-images", type=Path, help="folder the file_name of each --eval-coco image is relative to")
    p.add_argument("--eval-coco", type=Path, help="COCO ground truth of --eval-images, for the INT8 mAP delta")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads (default 2)")
    p.add_argument("--sweep", type=int, nargs="*", default=[1, 2],
                   help="thread counts each runtime's inference is timed at, the best kept (default 1 2)")
    p.add_argument("--frames", type=int, default=64, help="field frames for parity and timing (default 64)")
    p.add_argument("--size", type=int, default=None,
                   help="frame and model input size in px (default: params.yaml generate.size, the frame contract)")
    p.add_argument("--calib-frames", type=int, default=32, help="INT8 calibration frames (default 32)")
    p.add_argument("--train-iters", type=int, default=5, help="timed training iterations (default 5)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the number of timed runs (default 1)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md", help="markdown results file")
    args = p.parse_args(argv)
    if bool(args.eval_images) != bool(args.eval_coco):
        p.error("--eval-images and --eval-coco go together")
    if args.size is None:
        from cityloop.core.settings import load_params

        args.size = int(load_params(REPO).get("generate", {}).get("size", 192))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cmd, load = command_line(), loadavg()
    if os.getloadavg()[0] > 0.5:
        log(f"[yellow]load average {load} at start: other work on this machine skews the timings[/]")
    t0 = time.perf_counter()
    rows, model_note = run(args)
    seconds = time.perf_counter() - t0
    facts = machine_facts(load, args.threads)
    print_table(f"cityloop models benchmark ({seconds:.0f} s)", rows, fmt, facts)
    write_results(args.out, SECTION, markdown(rows, facts, cmd, seconds, model_note))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
