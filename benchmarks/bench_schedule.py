"""Scheduling benchmark, side by side in one run: for a fixed compute budget on the two cores (2 nodes ×
8 cameras, each node able to infer `--budget` frames/s), event recall, precision and time to discovery
of the scheduler's plan against the uniform baseline (every scenario on every camera, each camera
sampled at budget / cameras frames/s), and the ratio scheduler / baseline.

    .venv/bin/python benchmarks/bench_schedule.py [--budget 4] [--seconds 90]

The city: 16 simulated field cameras in groups, each group installed for its scenarios and filmed at
an hour and in weather when they happen (a night market at 22:00, school kerbs at 07:00, low roads in
the rain, rooftops with washing on a sunny noon, crossings and a checkpoint by day and at dusk). Both
arms see the same frames and the simulator's boxes (5 % of them dropped, like a decent detector), run
through the same Analyzer; only which frames are processed and which scenarios run differ. Scores
count the events of the scenarios each camera is installed for (what the city asked for), in both arms.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchkit import Row, command_line, finish, fmt, loadavg, log, machine_facts  # noqa: E402

from cityloop.analysis.evaluate import evaluate_events, truth_boxes, unix  # noqa: E402
from cityloop.analysis.params import AnalysisParams  # noqa: E402
from cityloop.analysis.patrol import TruthNoise, open_analyzer, truth_frames  # noqa: E402
from cityloop.core.settings import load_params  # noqa: E402
from cityloop.scenarios import registry  # noqa: E402
from cityloop.scenarios.settings import scenario_settings  # noqa: E402
from cityloop.scenarios.zones import read_cameras  # noqa: E402
from cityloop.scenes.video import generate_video  # noqa: E402
from cityloop.schedule.plan import (  # noqa: E402
    Inputs,
    NodeSpec,
    Plan,
    Sampler,
    assignment_for,
    cameras_from,
    make_plan,
    rates_for,
    scenario_specs,
)

SECTION = "## Scheduling"
NOISE = TruthNoise(drop=0.05, seed=0)


# name, cameras, condition, hour (clip start, UTC), clip rates, installed for, sites
GROUPS: list[tuple[str, int, str, float, dict[str, float], tuple[str, ...], tuple[str, ...]]] = [
    ("crossing-am", 2, "day", 8.0, {"riders": 6.0, "p_no_helmet": 0.5, "crowds": 1.0},
     ("helmetless_rider", "disorderly_crowd"), ()),
    ("crossing-pm", 2, "dusk", 19.0, {"riders": 6.0, "p_no_helmet": 0.5, "crowds": 1.0},
     ("helmetless_rider", "disorderly_crowd"), ()),
    ("checkpoint", 2, "day", 10.0, {"breaches": 3.0}, ("checkpoint_breach",), ("checkpoint",)),
    ("night-market", 3, "night", 22.0, {"vending": 3.0, "garbage": 1.5}, ("street_vending", "garbage_pile"), ()),
    ("school-kerb", 2, "day", 7.0, {"parking": 2.0, "cars": 4.0}, ("illegal_parking",), ()),
    ("low-road", 3, "rain", 14.0, {"waterlogging": 3.0}, ("road_waterlogging",), ()),
    ("rooftops", 2, "day", 12.0, {"clothes": 2.5}, ("clothes_drying",), ()),
]


def render(out: Path, seconds: float, fps: float, seed: int, prefix: str = "") -> list[dict[str, Any]]:
    """Every group's clips; returns the cameras (ids prefixed with the group) with their folder and purpose."""
    reg = registry()
    cams = []
    for k, (name, n, cond, hour, rates, watch, sites) in enumerate(GROUPS):
        watch = tuple(s for s in watch if s in reg.scenarios)
        if not watch:
            log(f"[yellow]{name}: none of its scenarios is registered; skipped[/]")
            continue
        rates = {r: v for r, v in rates.items() if r in reg.rates}
        folder = out / name
        generate_video("field", n, seconds, fps, seed + k, folder, rates=rates, condition=cond, hour=hour,
                       sites=sites, workers=2)
        for c in read_cameras(folder):
            cams.append({**c, "camera_id": f"{prefix}{name}-{c['camera_id']}", "orig": c["camera_id"],
                         "dir": str(folder),
                         "group": name, "scenarios": list(watch)})
    return cams


def truth_of(cams: list[dict[str, Any]]) -> tuple[list[dict], dict]:
    """Ground-truth events and boxes under the prefixed camera ids."""
    by_dir: dict[str, list[dict]] = {}
    for c in cams:
        by_dir.setdefault(c["dir"], []).append(c)
    events, boxes = [], {}
    for folder, members in by_dir.items():
        ids = {c["orig"]: c["camera_id"] for c in members}
        for e in json.loads((Path(folder) / "events.json").read_text()):
            if e["camera_id"] in ids:
                events.append({**e, "id": f"{ids[e['camera_id']]}-{e['id']}", "camera_id": ids[e["camera_id"]]})
        for orig, b in truth_boxes(Path(folder)).items():
            if orig in ids:
                boxes[ids[orig]] = b
    return events, boxes


def run_arm(cams: list[dict[str, Any]], params: AnalysisParams, rate: Callable[[str, float], float],
            assignment: Callable[[str, float], Any] | None, db: Path) -> tuple[list, int]:
    """The sampled frames of every camera through one Analyzer; returns (events, frames processed)."""
    analyzer = open_analyzer(REPO, params, cams, f"sqlite:///{db}", None)
    analyzer.assignment = assignment
    sampler = Sampler(rate)
    frames = 0
    for c in cams:
        t0, fps = unix(c["start_ts"]), float(c["fps"])
        for index, dets in truth_frames(Path(c["dir"]), c["orig"], NOISE):
            ts = t0 + index / fps
            if sampler.take(c["camera_id"], ts):
                analyzer.on_detections(c["camera_id"], ts, index, dets, "truth")
                frames += 1
    analyzer.close()
    events = analyzer.dispatcher.store.events()
    analyzer.dispatcher.store.dispose()
    return events, frames


def score(cams: list[dict[str, Any]], truth: list[dict], boxes: dict, events: list, tol: float) -> dict:
    """Metrics over the (camera, scenario) pairs each camera is installed for."""
    wanted = {(c["camera_id"], s) for c in cams for s in c["scenarios"]}
    t = [e for e in truth if (e["camera_id"], e["scenario"]) in wanted]
    r = [e for e in events if (e.camera_id, e.scenario) in wanted]
    return {k: v.to_dict() for k, v in evaluate_events(t, r, cams, boxes, tol).items()}


def plan_for(cams: list[dict[str, Any]], scenarios: list, nodes: int, budget: float) -> Plan:
    """The scheduler's day plan for these cameras on `nodes` nodes of `budget` frames/s."""
    inputs = Inputs(cameras_from(cams), [NodeSpec(f"node-{k}", budget) for k in range(nodes)], scenarios)
    day = datetime.fromisoformat(cams[0]["start_ts"]).astimezone(UTC).replace(hour=0, minute=0, second=0,
                                                                               microsecond=0)
    return make_plan(inputs, day)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b


def rows_for(base: dict, sched: dict, frames: tuple[int, int], uniform: float, plan: Plan) -> list[Row]:
    b, s = base["all"], sched["all"]
    rows = [Row(f"event recall, baseline (every scenario, every camera, {uniform:g} fps)", b["recall"], "",
                f"found {b['hits']}/{b['truth']}"),
            Row("event recall, scheduler (plan)", s["recall"], "", f"found {s['hits']}/{s['truth']}"),
            Row("recall ratio scheduler / baseline", ratio(s["recall"], b["recall"]), "x"),
            Row("precision, baseline", b["precision"], "", f"{b['raised']} alerts, {b['false_alarms']} false"),
            Row("precision, scheduler", s["precision"], "", f"{s['raised']} alerts, {s['false_alarms']} false"),
            Row("precision ratio scheduler / baseline", ratio(s["precision"], b["precision"]), "x"),
            Row("time to discovery, baseline", b["ttd_median_s"], "s (median)", f"p95 {fmt(b['ttd_p95_s'])} s"),
            Row("time to discovery, scheduler", s["ttd_median_s"], "s (median)", f"p95 {fmt(s['ttd_p95_s'])} s"),
            Row("time to discovery ratio scheduler / baseline", ratio(s["ttd_median_s"], b["ttd_median_s"]), "x",
                "below 1: found sooner"),
            Row("frames processed, baseline", frames[0], "frames"),
            Row("frames processed, scheduler", frames[1], "frames",
                f"plan peak load {max(plan.summary()['peak_load'].values()):g} frames/s per node")]
    for sc in registry().names:
        bm, sm = base.get(sc), sched.get(sc)
        if not bm or not bm["truth"]:
            continue
        rows.append(Row(f"recall {sc}, scheduler", sm["recall"], "",
                        f"baseline {fmt(bm['recall'])} ({bm['hits']}/{bm['truth']}); ttd p50 scheduler "
                        f"{fmt(sm['ttd_median_s'])} s, baseline {fmt(bm['ttd_median_s'])} s"))
    return rows


def one_day(root: Path, seed: int, k: int, args: argparse.Namespace, params: AnalysisParams) -> dict[str, Any]:
    """One day of the city (its own clips): both arms over the same frames; the raw events of each."""
    cams = render(root, args.seconds, args.fps, seed, prefix=f"d{k}-")
    uniform = round(args.budget * args.nodes / len(cams), 4)
    plan = plan_for(cams, scenario_specs(params.scenarios), args.nodes, args.budget)
    base_ev, base_frames = run_arm(cams, params, lambda c, ts: uniform, None, root / "baseline.db")
    rates = [rates_for(plan, n) for n in plan.nodes]
    assigned = [assignment_for(plan, n) for n in plan.nodes]
    sched_ev, sched_frames = run_arm(
        cams, params, lambda c, ts: sum(r(c, ts) for r in rates),
        lambda c, ts: frozenset().union(*(a(c, ts) for a in assigned)), root / "scheduler.db")
    truth, boxes = truth_of(cams)
    return {"cams": cams, "truth": truth, "boxes": boxes, "uniform": uniform, "plan": plan,
            "events": (base_ev, sched_ev), "frames": (base_frames, sched_frames)}


def run(args: argparse.Namespace) -> tuple[list[Row], str]:
    settings = scenario_settings(load_params(REPO).get("scenarios"))
    params = AnalysisParams(sinks=[], scenarios=settings)
    days = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.days):
            log(f"day {k + 1}/{args.days}: rendering the city's clips, then the baseline and the scheduler")
            days.append(one_day(Path(tmp) / f"day{k}", args.seed + 100 * k, k, args, params))
    cams = [c for d in days for c in d["cams"]]
    truth = [t for d in days for t in d["truth"]]
    boxes = {cid: b for d in days for cid, b in d["boxes"].items()}
    base = score(cams, truth, boxes, [e for d in days for e in d["events"][0]], params.match_tolerance_s)
    sched = score(cams, truth, boxes, [e for d in days for e in d["events"][1]], params.match_tolerance_s)
    frames = (sum(d["frames"][0] for d in days), sum(d["frames"][1] for d in days))
    rows = rows_for(base, sched, frames, days[0]["uniform"], days[0]["plan"])
    groups = ", ".join(f"{g[0]} {g[1]} ({g[2]}, {g[3]:02.0f}:00)" for g in GROUPS)
    note = (f"{len(days[0]['cams'])} cameras on {args.nodes} nodes of {args.budget:g} frames/s each (both arms within "
            f"it at every hour), {args.days} simulated days (seeds {args.seed}, +100 each); clips of "
            f"{args.seconds:g} s at {args.fps:g} fps: {groups}; the simulator's boxes with {NOISE.drop:.0%} dropped; "
            "scores over each camera's installed scenarios; stream seconds")
    return rows, note


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=4.0, help="frames/s each node can infer (default 4)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--seconds", type=float, default=120.0, help="clip length (default 120)")
    p.add_argument("--days", type=int, default=3, help="simulated days, each with its own clips (default 3)")
    p.add_argument("--fps", type=float, default=2.0, help="the cameras' frame rate (default 2)")
    p.add_argument("--seed", type=int, default=300)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cmd, load = command_line(), loadavg()
    t0 = time.perf_counter()
    rows, note = run(args)
    seconds = time.perf_counter() - t0
    finish("cityloop scheduling benchmark", SECTION, rows, machine_facts(load), cmd, seconds, args.out,
           f"Streams: {note}")


if __name__ == "__main__":
    main()
