"""Serving benchmark, side by side in one run: adaptive batching vs none at the same concurrency,
HTTP serving throughput as a fraction of in-process onnxruntime, where an image's time goes in-process
(JPEG decode, preprocess, onnxruntime, box decode with its NMS), and one edge node's memory.

    .venv/bin/python benchmarks/bench_serving.py --root WORKSPACE [--model cityloop-detector:v1]

Every server is a real `bentoml serve` on 127.0.0.1 with one onnxruntime thread (the edge
setting); clients are asyncio + httpx in this process, sharing the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchkit import Row, command_line, edge_node, finish, loadavg, log, machine_facts  # noqa: E402

from cityloop.bento.serving import free_port, multipart_frames, start_server, stop_server  # noqa: E402
from cityloop.models.runtime import OnnxDetector, decode_image  # noqa: E402
from cityloop.models.store import ModelStore  # noqa: E402

SECTION = "## Serving"


@dataclass
class Load:
    rps: float
    img_s: float
    p50: float
    p99: float
    errors: dict[int, int]


async def _load(url: str, endpoint: str, bodies: list, concurrency: int, n: int, images: int = 1,
                fresh: bool = False) -> Load:
    """n requests from `concurrency` workers; requests/s, images/s, latency percentiles, error codes. Bodies
    are JSON objects ({"images": [...]}), raw frames, or (body, Content-Type) pairs (multipart/mixed), each
    holding `images` images. `fresh`: a connection per request (as an edge node talks to a server of
    several processes: a kept-alive connection stays with the process that accepted it).

    The load generator is aiohttp (BentoML's own dependency): it shares the two cores with the server,
    and costs about half of what httpx did per request, so more of them are left to the server."""
    import aiohttp

    lat: list[float] = []
    errors: dict[int, int] = {}
    counter = iter(range(n))
    if isinstance(bodies[0], dict):
        payloads = [(json.dumps(b).encode(), "application/json") for b in bodies]
    elif isinstance(bodies[0], bytes):
        payloads = [(b, "image/jpeg") for b in bodies]
    else:
        payloads = bodies

    async def post(session: aiohttp.ClientSession, payload: tuple[bytes, str]) -> int:
        async with session.post(url + endpoint, data=payload[0], headers={"content-type": payload[1]}) as r:
            await r.read()
            return r.status

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            t0 = time.perf_counter()
            status = await post(session, payloads[i % len(payloads)])
            if status == 200:
                lat.append((time.perf_counter() - t0) * 1000)
            else:
                errors[status] = errors.get(status, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=fresh)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await post(session, payloads[0])  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = len(lat)
    return Load(ok / wall, ok * images / wall, float(np.percentile(lat, 50)) if lat else 0.0,
                float(np.percentile(lat, 99)) if lat else 0.0, errors)


def in_process(model_dir: Path, frames: list[bytes], batch: int, threads: int, repeat: int) -> float:
    """img/s of bytes -> decode -> preprocess -> onnxruntime -> box arrays, in this process (the compact
    route's own code, `detect_arrays`)."""
    from cityloop.models.card import ModelCard

    det = OnnxDetector(model_dir / "model.onnx", ModelCard.load(model_dir / "card.json"), threads)
    det.detect_arrays([decode_image(b) for b in frames[:batch]], batch)
    t0 = time.perf_counter()
    for _ in range(repeat):
        det.detect_arrays([decode_image(b) for b in frames], batch)
    return repeat * len(frames) / (time.perf_counter() - t0)


def stage_ms(model_dir: Path, frames: list[bytes], batch: int, repeat: int) -> dict[str, float]:
    """Median ms per image of each stage of `detect_arrays` on one thread: JPEG decode, preprocess,
    onnxruntime, and the box decode (3x3 peaks, class-wise NMS, scaling back)."""
    from cityloop.models.card import ModelCard
    from cityloop.models.runtime import decode_outputs, preprocess

    card = ModelCard.load(model_dir / "card.json")
    det = OnnxDetector(model_dir / "model.onnx", card, 1)
    times: dict[str, list[float]] = {"decode": [], "preprocess": [], "onnxruntime": [], "boxes": []}
    for _ in range(repeat):
        for k in range(0, len(frames), batch):
            chunk = frames[k : k + batch]
            t0 = time.perf_counter()
            imgs = [decode_image(b) for b in chunk]
            t1 = time.perf_counter()
            x = preprocess(imgs, card.input)
            t2 = time.perf_counter()
            out = det.raw(x)
            t3 = time.perf_counter()
            decode_outputs(out, card.output)
            t4 = time.perf_counter()
            for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[name].append(dt * 1000 / len(chunk))
    return {name: float(np.median(v)) for name, v in times.items()}


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (MiB)."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
        return sum(q.memory_info().rss for q in procs if q.is_running()) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def edge_node_memory(root: Path, model_id: str, frames_dir: Path, seconds: float) -> tuple[float, float, float]:
    """(node MiB, server MiB, fps) of a real `cityloop edge start` node streaming a frame folder."""
    from cityloop.edge.node import node_dir, read_json

    with edge_node(root, model_id, [f"bench-cam={frames_dir}"], "--loop") as proc:
        deadline = time.time() + 120
        while time.time() < deadline and (read_json(node_dir(root, "bench") / "status.json") or {}).get(
                "frames", 0) < 10:
            time.sleep(0.5)
        time.sleep(seconds)
        st = read_json(node_dir(root, "bench") / "status.json") or {}
        node = tree_rss_mib(proc.pid)
        server = tree_rss_mib(st["server_pid"]) if st.get("server_pid") else 0.0
        return node - server if server and node > server else node, server, float(st.get("fps") or 0)


def run(args: argparse.Namespace) -> tuple[list[Row], str]:
    reg = ModelStore(args.root, track=False)
    mv = reg.get(args.model)
    frames = sorted(args.images.glob("*.jpg"))[: args.frames] if args.images else []
    tmp = Path(tempfile.mkdtemp(prefix="cityloop-bench-serving-"))
    try:
        if not frames:
            from cityloop.scenes.frames import generate_frames

            log(f"rendering {args.frames} field frames (not timed)")
            generate_frames("field", args.frames, 7, tmp / "frames")
            frames = sorted((tmp / "frames" / "images").glob("*.jpg"))
        data = [p.read_bytes() for p in frames]
        bodies = [{"images": [base64.b64encode(b).decode()]} for b in data]
        rows: list[Row] = []
        log("in-process onnxruntime, batch 32, 1 and 2 threads")
        ort_ips = in_process(mv.path, data, 32, 1, args.repeat)
        ort2_ips = in_process(mv.path, data, 32, 2, args.repeat)
        rows += [Row("in-process ORT (bytes → boxes), batch 32, 1 thread", ort_ips, "img/s",
                     "the service's code (decode, preprocess, infer, box arrays)"),
                 Row("in-process ORT (bytes → boxes), batch 32, 2 threads", ort2_ips, "img/s", "both cores")]
        stages = stage_ms(mv.path, data, 32, args.repeat)
        total = sum(stages.values())
        parts = ", ".join(f"{k} {v:.2f} ms" for k, v in stages.items())
        rows.append(Row("in-process, batch 32, 1 thread: onnxruntime's share of an image's time",
                        stages["onnxruntime"] / total, "share",
                        f"{total:.2f} ms per image: {parts} (boxes: 3x3 peaks, class-wise NMS, scaling back)"))
        multi = [multipart_frames(data[k: k + args.per_request]) for k in range(0, len(data), args.per_request)]
        one_by_one = {"/detect_unbatched": bodies, "/detect": bodies, "/detect_raw": data}
        # (label, server processes, endpoint, images per request, concurrent clients)
        plans = [("JSON, no batching, 1 process(es)", 1, "/detect_unbatched", 1, args.concurrency)]
        for w in args.workers:
            plans += [(f"JSON, adaptive batching, {w} process(es)", w, "/detect", 1, args.concurrency),
                      (f"compact, adaptive batching, {w} process(es)", w, "/detect_raw", 1, args.concurrency),
                      (f"compact, {args.per_request} frames/request, adaptive batching, {w} process(es)", w,
                       "/detect_raw", args.per_request, args.multi_concurrency)]
        results: dict[str, Load] = {}
        for w in sorted({p[1] for p in plans}):
            env = {"CITYLOOP_MAX_BATCH_SIZE": str(args.max_batch), "CITYLOOP_MAX_LATENCY_MS": str(args.latency),
                   "CITYLOOP_ORT_THREADS": "1", "CITYLOOP_WORKERS": str(w), "CITYLOOP_MAX_INFLIGHT": "1000"}
            srv = start_server(tmp, free_port(), model_dir=mv.path, extra_env=env, log_path=tmp / f"serve-{w}.log")
            try:
                for label, workers, endpoint, per, conc in plans:
                    if workers != w:
                        continue
                    log(f"{label}: {conc} concurrent clients, {args.requests // per} requests")
                    load = one_by_one[endpoint] if per == 1 else multi
                    results[label] = asyncio.run(_load(srv.url, endpoint, load, conc, args.requests // per, per,
                                                       fresh=w > 1))
            finally:
                stop_server(srv)
        for label, workers, _, per, conc in plans:
            r = results[label]
            errs = ", ".join(f"{c}: {n}" for c, n in sorted(r.errors.items())) or "none"
            rows += [Row(f"{label}: images/s", r.img_s, "img/s",
                         f"{per} image(s)/request, {conc} concurrent clients"
                         f"{', a connection per request' if workers > 1 else ''}; errors {errs}"),
                     Row(f"{label}: p50 latency", r.p50, "ms", "per request"),
                     Row(f"{label}: p99 latency", r.p99, "ms", "per request")]
        base = results["JSON, no batching, 1 process(es)"]
        best = max(results.values(), key=lambda r: r.img_s)
        best_label = next(k for k, v in results.items() if v is best)
        w_max = max(args.workers)
        rows += [Row("JSON: adaptive batching / no batching (1 process)",
                     results["JSON, adaptive batching, 1 process(es)"].img_s / base.img_s, "x",
                     f"same route, same {args.concurrency} clients"),
                 Row("compact vs JSON, adaptive batching (1 process)",
                     results["compact, adaptive batching, 1 process(es)"].img_s
                     / results["JSON, adaptive batching, 1 process(es)"].img_s, "x", "1 image/request"),
                 Row(f"compact, adaptive batching, {w_max} processes / JSON no batching, 1 process",
                     results[f"compact, adaptive batching, {w_max} process(es)"].img_s / base.img_s, "x",
                     "1 image/request: what the levers buy together"),
                 Row("HTTP serving (best) / in-process ORT, 2 threads", best.img_s / ort2_ips, "x",
                     f"{best_label}; both sides on the same two cores (the clients too)"),
                 Row("HTTP serving (best) / in-process ORT, 1 thread", best.img_s / ort_ips, "x", "")]
        log("one edge node streaming a frame folder")
        ws = tmp / "ws"
        shutil.copytree(args.root / "data" / "models", ws / "data" / "models", symlinks=True)
        (ws / "frames").mkdir()
        for p in frames:
            shutil.copy(p, ws / "frames" / p.name)
        node_mib, server_mib, fps = edge_node_memory(ws, mv.id, ws / "frames", args.node_seconds)
        rows += [Row("edge node: node process RSS", node_mib, "MiB", "streams, selection, outbox, uploader"),
                 Row("edge node: bento server RSS", server_mib, "MiB", "bentoml serve: CLI/arbiter + 1 worker"),
                 Row("edge node: total RSS", node_mib + server_mib, "MiB",
                     f"streaming one camera at {fps:.0f} fps (defaults: serve.workers 1)")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = mv.model_path.stat().st_size / 1024
    return rows, f"`{mv.id}` from `{args.root}` ({size:.0f} KiB ONNX), {len(data)} field frames"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path.cwd(), help="workspace holding the registry (default: cwd)")
    p.add_argument("--model", default="cityloop-detector:latest", help="registry version (default :latest)")
    p.add_argument("--images", type=Path, help="folder of JPEG frames (default: render 64 field frames)")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--requests", type=int, default=600, help="requests per configuration (default 600)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--latency", type=int, default=1000, help="max_latency_ms (100 gave 503s at 16 clients)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server processes to compare")
    p.add_argument("--per-request", type=int, default=8, help="frames per multipart request (default 8)")
    p.add_argument("--multi-concurrency", type=int, default=8, help="clients sending multipart requests")
    p.add_argument("--repeat", type=int, default=5, help="passes over the frames in-process")
    p.add_argument("--node-seconds", type=float, default=8.0, help="edge node streaming time before measuring")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.root = args.root.resolve()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    cmd, load = command_line(), loadavg()
    if os.getloadavg()[0] > 0.5:
        log(f"[yellow]load average {load} at start: other work on this machine skews the timings[/]")
    t0 = time.perf_counter()
    rows, note = run(args)
    seconds = time.perf_counter() - t0
    import bentoml
    import onnxruntime

    facts = machine_facts(load, bentoml=bentoml.__version__, onnxruntime=onnxruntime.__version__)
    finish("cityloop serving benchmark", SECTION, rows, facts, cmd, seconds, args.out, f"Model: {note}")


if __name__ == "__main__":
    main()
