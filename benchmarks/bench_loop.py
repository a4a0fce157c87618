"""Loop benchmark: one closed-loop round as the Prefect flow `closed-loop` against the same stage
functions called directly, side by side in one run, with the wall time of every stage.

    .venv/bin/python benchmarks/bench_loop.py [--budget 60] [--no-edge]

Both sides run in their own copy of one temporary trained workspace (tests.conftest's tiny
model: the point is the orchestration cost, not the training), against one real Label Studio on
127.0.0.1; the Prefect side runs against a real Prefect API (the test harness's SQLite server, or
$PREFECT_API_URL when set). Prints a table and replaces the "## Closed loop" section of
benchmarks/results.md; `--state DIR` (a loop run's `.cityloop/loop/<run>/`) adds the per-stage
times of a full loop, e.g. the one `make demo` ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchkit import Row, command_line, finish, loadavg, log, machine_facts  # noqa: E402

from cityloop.core.settings import quiet_env  # noqa: E402

SECTION = "## Closed loop"


def configure(ws: Path, ls, budget: int, edge: bool, port: int) -> None:
    import yaml

    from tests.conftest import TINY_TRAIN

    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["labeling"].update({"port": ls.port, "honeypot_dataset": "lab@v1", "gate": {"min_frames_per_class": 0}})
    params["loop"] = {"rounds": 1, "budget": budget, "arms": ["active"], "seeds": [0], "target": 0.99,
                      "base": "cityloop-detector:v1", "pool_frames": 2 * budget, "cameras": 2, "seconds": 20,
                      "fps": 2, "nodes": 2, "base_port": port, "truth": ["raw/lab", "raw/field-pool"], "edge": edge,
                      "train": {**TINY_TRAIN, "epochs": 6}, "tag": ws.name}
    params["release"].update({"max_frames": 8})
    (ws / "params.yaml").write_text(yaml.safe_dump(params))


def one_round(ws: Path, prefect: bool) -> tuple[float, dict, int, float]:
    """Wall seconds of the round, seconds per stage, stage calls, and the seconds spent inside the stage
    functions themselves (what is left of the wall time is the runner's, and Prefect's, own cost)."""
    import functools

    from cityloop.core.steps import run_direct
    from cityloop.flows.loop import loop_params
    from cityloop.flows.steps import as_task
    from cityloop.loop.runner import run_loop

    os.environ["CITYLOOP_ROOT"] = str(ws)
    p = loop_params(str(ws))
    calls = {"n": 0, "inside": 0.0}

    def counting(call):
        def inner(name, fn, *a):
            calls["n"] += 1

            @functools.wraps(fn)
            def timed(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    calls["inside"] += time.perf_counter() - t

            return call(name, timed, *a)
        return inner

    if prefect:
        from prefect import flow

        @flow(name="closed-loop-bench")
        def bench_flow() -> dict:
            return run_loop(ws, p, call=counting(as_task), say=log)

        t = time.perf_counter()
        out = bench_flow()
    else:
        t = time.perf_counter()
        out = run_loop(ws, p, call=counting(run_direct), say=log)
    return time.perf_counter() - t, out["timings"], calls["n"], calls["inside"]


def run(tmp: Path, budget: int, edge: bool) -> list[Row]:
    from cityloop.bento.serving import free_port
    from cityloop.labeling.server import LabelStudioServer
    from tests.conftest import build_model_workspace

    log("building a trained workspace (tiny model) …")
    base = build_model_workspace(tmp / "base")
    ls = LabelStudioServer(tmp, port=free_port(), state_dir=tmp / "ls", venv=REPO / ".venv-labelstudio")
    log("starting Label Studio …")
    ls.start(timeout=300)
    os.environ.update({"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.credentials().token,
                       "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(ls.media)})
    rows: list[Row] = []
    try:
        sides = {}
        for name, prefect in (("direct", False), ("prefect", True)):
            ws = tmp / f"ws-{name}"
            shutil.copytree(base.root, ws, symlinks=True)
            configure(ws, ls, budget, edge, free_port() + 0)
            log(f"one round, {name} …")
            if prefect and not os.environ.get("PREFECT_API_URL"):
                from prefect.testing.utilities import prefect_test_harness

                with prefect_test_harness(server_startup_timeout=90):
                    sides[name] = one_round(ws, True)
            else:
                sides[name] = one_round(ws, prefect)
        (wd, sd, nd, id_), (wp, sp, np_, ip) = sides["direct"], sides["prefect"]
        rows.append(Row("one round, stages called directly", wd, "s", f"{nd} stage calls"))
        rows.append(Row("one round as the Prefect flow closed-loop", wp, "s", f"{np_} task runs"))
        rows.append(Row("Prefect / direct", wp / wd, "x", "wall time ratio (the stages' own times vary by seconds)"))
        rows.append(Row("time outside the stage functions: Prefect flow / direct", wp - ip, "s",
                        f"direct {wd - id_:.1f} s (the runner's own bookkeeping); Prefect: the flow run's "
                        "start, task runs, their states"))
        rows.append(Row("Prefect's share of the round", ((wp - ip) - (wd - id_)) / wp * 100, "%",
                        "(outside time with Prefect - without) / the Prefect round's wall time"))
        rows.append(Row("Prefect overhead per task run", ((wp - ip) - (wd - id_)) / max(1, np_) * 1000, "ms",
                        "the same difference / task runs"))
        for stage in sorted(set(sd) | set(sp)):
            rows.append(Row(f"stage {stage}: direct / Prefect", sd.get(stage), "s",
                            f"Prefect {sp.get(stage, 0):.1f} s"))
    finally:
        ls.stop()
    return rows


def full_loop_rows(state: Path) -> list[Row]:
    """Per-stage wall time of a finished loop run (its timings.json)."""
    t = json.loads((state / "timings.json").read_text())
    total = sum(t.values())
    return [Row(f"full loop: {k}", v, "s", f"{100 * v / total:.0f}% of the stages' time")
            for k, v in sorted(t.items(), key=lambda kv: -kv[1])]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=60, help="labels in the round (default 60)")
    p.add_argument("--no-edge", action="store_true", help="leave out the edge nodes and the release")
    p.add_argument("--state", type=Path, help="a loop run's state dir: add its per-stage times")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    args = p.parse_args(argv)
    quiet_env()
    cmd, load = command_line(), loadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cityloop-bench-loop-") as tmp:
        rows = run(Path(tmp), args.budget, not args.no_edge)
    if args.state:
        rows += full_loop_rows(args.state)
    seconds = time.perf_counter() - t0
    from importlib.metadata import version

    facts = machine_facts(load, prefect=version("prefect"))
    finish("cityloop closed-loop benchmark", SECTION, rows, facts, cmd, seconds, args.out,
           f"Inputs: one round of {args.budget} labels, tiny model, {'with' if not args.no_edge else 'without'} "
           "edge nodes, a real Label Studio on a fresh SQLite database")


if __name__ == "__main__":
    main()
