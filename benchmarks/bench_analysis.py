"""Video analysis benchmark, side by side in one run: end-to-end frames/s (decode → infer → track
→ rules → event store) against inference-only frames/s on the same frames (the overhead ratio),
time to discovery per scenario, with the simulator's boxes (the rules' own delay) and with the
model, and cameras per edge node: a real `cityloop edge start` node (its Bento server, the compact
route, hard-example selection, the analysis sink into the event store) streaming many cameras as
fast as it can; its frames/s through the sink over 2 fps per camera.

    .venv/bin/python benchmarks/bench_analysis.py --root WORKSPACE [--model cityloop-detector:latest]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchkit import Row, command_line, edge_node, finish, fmt, loadavg, log, machine_facts  # noqa: E402

from cityloop.analysis.params import AnalysisParams  # noqa: E402
from cityloop.analysis.patrol import frame_files, load_detector, run_patrol  # noqa: E402
from cityloop.models.runtime import decode_image  # noqa: E402
from cityloop.scenarios import registry  # noqa: E402
from cityloop.scenarios.zones import read_cameras  # noqa: E402
from cityloop.scenes.video import generate_video  # noqa: E402

SECTION = "## Video analysis"
RATES = {"riders": 6.0, "p_no_helmet": 0.5, "cars": 4.0, "pedestrians": 4.0, "parking": 2.0, "garbage": 2.0,
         "vending": 3.0, "waterlogging": 3.0, "crowds": 2.0}


def render(out: Path, cameras: int, seconds: float, fps: float) -> list[Path]:
    """Two stream folders: rain (waterlogging) and night (vending), every other scenario in both."""
    folders = []
    for k, cond in enumerate(("rain", "night")):
        generate_video("field", cameras, seconds, fps, 100 + k, out / cond, rates=RATES, condition=cond, workers=2)
        folders.append(out / cond)
    return folders


def inference_only(detector, folders: list[Path], batch: int) -> tuple[int, float]:
    """Frames/s of detector.detect alone on pre-decoded frames (no I/O, no tracking)."""
    images = [decode_image(p.read_bytes()) for f in folders for c in read_cameras(f)
              for p in frame_files(f, c["camera_id"])]
    detector.detect(images[:batch])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(images), batch):
        detector.detect(images[i: i + batch])
    return len(images), time.perf_counter() - t


def patrol_all(root: Path, folders: list[Path], model: str, db_dir: Path) -> tuple[int, float, dict, dict]:
    """Frames, seconds, timings and merged per-scenario metrics over the folders."""
    db_dir.mkdir(parents=True, exist_ok=True)
    params = AnalysisParams(sinks=[])
    frames, seconds, timings, per = 0, 0.0, {}, {}
    for f in folders:
        res = run_patrol(root, f, model, params, f"sqlite:///{db_dir}/{f.name}-{model.replace(':', '_')}.db")
        frames, seconds = frames + res.frames, seconds + res.seconds
        for k, v in res.timings.items():
            timings[k] = timings.get(k, 0.0) + v
        for sc, m in (res.metrics or {}).items():
            per.setdefault(sc, []).append(m)
    return frames, seconds, timings, per


def merged(ms: list[dict]) -> dict:
    """Truth/hits/raised summed; ttd as the worst median/p95 of the folders (a conservative merge)."""
    out = {k: sum(m[k] for m in ms) for k in ("truth", "raised", "hits", "duplicates", "false_alarms")}
    med = [m["ttd_median_s"] for m in ms if m["ttd_median_s"] is not None]
    p95 = [m["ttd_p95_s"] for m in ms if m["ttd_p95_s"] is not None]
    out["ttd_median_s"], out["ttd_p95_s"] = (max(med) if med else None), (max(p95) if p95 else None)
    return out


def ttd_rows(per: dict, label: str) -> list[Row]:
    rows = []
    for sc in registry().names:
        m = merged(per.get(sc, []))
        note = (f"p95 {fmt(m['ttd_p95_s'])} s; found {m['hits']}/{m['truth']}, {m['raised']} alerts, "
                f"{m['duplicates']} duplicate, {m['false_alarms']} false")
        rows.append(Row(f"time to discovery, {sc} ({label})", m["ttd_median_s"], "s (median)", note))
    return rows


def node_rate(root: Path, model: str, streams: Path, tmp: Path, args: argparse.Namespace) -> dict:
    """A real edge node (`cityloop edge start`, its own `bentoml serve`, the analysis sink writing the event
    store) over every camera of `streams`, as fast as it can: frames/s delivered through the sink, from its
    first frame to the last, and what was dropped or failed on the way."""
    import shutil

    from cityloop.edge.node import node_dir, read_json
    from cityloop.models.store import ModelStore

    ws = tmp / "node-ws"
    shutil.copytree(root / "data" / "models", ws / "data" / "models", symlinks=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["serve"]["workers"] = args.node_workers  # a node that owns the machine: one server process per core
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    mv = ModelStore(ws, track=False).get(model)
    cams = read_cameras(streams)
    total = sum(len(frame_files(streams, c["camera_id"])) for c in cams)
    specs = [f"{c['camera_id']}={streams / c['camera_id'] / 'frames'}" for c in cams]
    status = node_dir(ws, "bench") / "status.json"
    with edge_node(ws, mv.id, specs, "--sink", "cityloop.analysis.sink:edge_sink", log_path=tmp / "node.log") as proc:
        deadline, first, st = time.time() + 180, None, {}
        while time.time() < deadline:
            st = read_json(status) or {}
            sink = st.get("sink") or {}
            if first is None and st.get("frames", 0) > 0:
                first = (time.perf_counter(), sink.get("delivered", 0) + sink.get("queued", 0))
            if st.get("streams_done") and sink.get("queued", 1) == 0:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the node exited ({proc.returncode}): {(tmp / 'node.log').read_text()[-2000:]}")
            time.sleep(args.node_poll)
        end = time.perf_counter()
        if first is None or not st.get("streams_done"):
            raise RuntimeError(f"the node did not get through its streams: {st}")
        sink = st["sink"]
        if sink["delivered"] - first[1] < total / 2:  # the status is written once a second
            raise RuntimeError(f"only {sink['delivered'] - first[1]} of {total} frames came after the node's first "
                               "status: too few to time it (raise --node-cameras or --node-seconds)")
        return {"fps": (sink["delivered"] - first[1]) / (end - first[0]), "frames": st["frames"], "total": total,
                "dropped": sink.get("dropped", 0), "failed": sink.get("failed", 0), "errors": st.get("errors", 0),
                "cameras": len(cams), "latency_p50_ms": st.get("latency_p50_ms"), "selected": st.get("selected"),
                "inflight": params["edge"]["inflight"], "per_request": params["edge"]["frames_per_request"]}


def run(args: argparse.Namespace) -> tuple[list[Row], str]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = render(tmp / "streams", args.cameras, args.seconds, args.fps)
        detector, version = load_detector(args.root, args.model)
        best_inf, best_e2e = None, None
        for r in range(args.repeat):  # alternate the two, keep each one's best (least disturbed) pass
            log(f"pass {r + 1}/{args.repeat}: inference only ({version}), then end to end")
            n_inf, s = inference_only(detector, folders, args.batch)
            best_inf = s if best_inf is None else min(best_inf, s)
            e2e = patrol_all(args.root, folders, args.model, tmp / f"pass{r}")
            best_e2e = e2e if best_e2e is None or e2e[1] < best_e2e[1] else best_e2e
        s_inf = best_inf
        n_e2e, s_e2e, timings, per_model = best_e2e
        log("end to end with the simulator's boxes")
        _, s_truth, t_truth, per_truth = patrol_all(args.root, folders, "truth", tmp)
        log(f"one edge node: {args.node_cameras} cameras × {args.node_seconds:.0f} s at {args.fps:g} fps")
        generate_video("field", args.node_cameras, args.node_seconds, args.fps, 200, tmp / "node-streams",
                       rates=RATES, workers=2)
        node = node_rate(args.root, args.model, tmp / "node-streams", tmp, args)
    fps_inf, fps_e2e = n_inf / s_inf, n_e2e / s_e2e
    rows = [Row(f"inference only (onnxruntime, batch {args.batch}, pre-decoded)", fps_inf, "frames/s",
                f"best of {args.repeat} passes, alternating with end to end"),
            Row("end to end: decode → infer → track → rules → store", fps_e2e, "frames/s",
                f"decode {timings.get('decode_s', 0):.1f} s, infer {timings.get('infer_s', 0):.1f} s, "
                f"track+rules+store {timings.get('analysis_s', 0):.1f} s of {s_e2e:.1f} s"),
            Row("overhead ratio (inference-only / end-to-end frames/s)", fps_inf / fps_e2e, "x"),
            Row("track → rules → store alone (simulator boxes)", n_e2e / max(t_truth.get("analysis_s", 1e-9), 1e-9),
                "frames/s", "no decode, no inference")]
    rows += [Row("one edge node, end to end: stream → Bento server → track → rules → store", node["fps"], "frames/s",
                 f"{node['frames']}/{node['total']} frames of {node['cameras']} cameras; sink dropped "
                 f"{node['dropped']}, failed {node['failed']}; request errors {node['errors']}; "
                 f"p50 {fmt(node['latency_p50_ms'])} ms per request"),
             Row(f"cameras per edge node at {args.fps:g} fps", node["fps"] / args.fps, "cameras",
                 f"the node's frames/s over each camera's frames/s; serve.workers {args.node_workers}, "
                 f"edge.inflight {node['inflight']} × edge.frames_per_request {node['per_request']}")]
    rows += ttd_rows(per_truth, "simulator boxes")
    rows += ttd_rows(per_model, version)
    note = (f"`{version}` from `{args.root}`; {n_e2e} frames: {2 * args.cameras} simulated field cameras "
            f"(rain, night) × {args.seconds:.0f} s at {args.fps:g} fps; stream seconds; the edge node: "
            f"{args.node_cameras} field cameras × {args.node_seconds:.0f} s")
    return rows, note


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path.cwd(), help="workspace holding the registry (default: cwd)")
    p.add_argument("--model", default="cityloop-detector:latest", help="registry version (default :latest)")
    p.add_argument("--cameras", type=int, default=3, help="cameras per condition (default 3)")
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3, help="timing passes (best of each kept)")
    p.add_argument("--node-cameras", type=int, default=24, help="cameras streamed through one edge node")
    p.add_argument("--node-workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="the node's server processes (serve.workers; default: one per core)")
    p.add_argument("--node-seconds", type=float, default=60.0, help="seconds of stream per camera")
    p.add_argument("--node-poll", type=float, default=0.2, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.root = args.root.resolve()
    cmd, load = command_line(), loadavg()
    if os.getloadavg()[0] > 0.5:
        log(f"[yellow]load average {load} at start: other work on this machine skews the timings[/]")
    t0 = time.perf_counter()
    rows, note = run(args)
    seconds = time.perf_counter() - t0
    import onnxruntime

    facts = machine_facts(load, onnxruntime=onnxruntime.__version__)
    finish("cityloop video analysis benchmark", SECTION, rows, facts, cmd, seconds, args.out, f"Streams: {note}")


if __name__ == "__main__":
    main()
