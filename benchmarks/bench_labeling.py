"""Labeling benchmark: Label Studio start time (fresh and restart), import rate of tasks with
predictions, scripted annotation rate, and export + convert + gate + version time, in one run.

    .venv/bin/python benchmarks/bench_labeling.py [--tasks 1000]

Everything runs in a temporary directory: a trained workspace (tests.conftest's tiny model),
`--tasks` unlabeled field frames ingested as a pool, and a real Label Studio server from the
project's `.venv-labelstudio` on 127.0.0.1 with a fresh SQLite database. Prints a table and
replaces the "## Labeling" section of benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchkit import Row, command_line, finish, loadavg, log, machine_facts  # noqa: E402

from cityloop.core.settings import quiet_env  # noqa: E402
from cityloop.labeling.server import LS_VERSION  # noqa: E402

SECTION = "## Labeling"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp: Path, n_tasks: int) -> list[Row]:
    from cityloop.governance.gate import GateParams
    from cityloop.governance.repository import DataRepository
    from cityloop.labeling.annotator import ErrorModel, run_team, truth_from_folder
    from cityloop.labeling.project import LabelingProject, client
    from cityloop.labeling.pull import pull
    from cityloop.labeling.push import PushParams, label_classes, push
    from cityloop.labeling.server import LabelStudioServer
    from cityloop.models.runtime import OnnxDetector
    from cityloop.models.store import ModelStore
    from cityloop.scenes.frames import generate_frames
    from tests.conftest import build_model_workspace

    log("building a trained workspace (tiny model, about 30 s)")
    ws = build_model_workspace(tmp / "ws")
    raw = tmp / "pool"
    generate_frames("field", n_tasks, 7, raw, workers=2)
    unlabeled = tmp / "pool-unlabeled"
    unlabeled.mkdir()
    for f in raw.rglob("*"):
        if f.is_file() and f.name != "annotations.coco.json":
            (unlabeled / f.relative_to(raw)).parent.mkdir(parents=True, exist_ok=True)
            (unlabeled / f.relative_to(raw)).write_bytes(f.read_bytes())
    gate = GateParams.from_dict({"min_frames_per_class": 0})
    DataRepository(ws.root, GateParams.from_dict({"require_labels": False}), ("field-bench",)).ingest(
        unlabeled, "bench-pool", source="field", split="pool", docs=False, push=False)
    repo = DataRepository(ws.root, gate, ("field-bench",))

    server = LabelStudioServer(tmp, port=free_port(), state_dir=tmp / "ls", venv=REPO / ".venv-labelstudio")
    rows = []
    try:
        t = time.perf_counter()
        server.start(timeout=600)
        rows.append(Row("Label Studio start, fresh database (migrations + admin)", time.perf_counter() - t, "s",
                        "until the API answers the token"))
        server.stop()
        t = time.perf_counter()
        server.start(timeout=600)
        rows.append(Row("Label Studio restart", time.perf_counter() - t, "s", "same data dir"))
        mv = ModelStore(ws.root).get(ws.model_id)
        proj = LabelingProject(client(server.url, server.credentials().token), ws.root, "bench", server.media,
                               server.url)
        proj.ensure(label_classes(mv.card))
        res = push(proj, repo, OnnxDetector(mv.model_path, mv.card, threads=2), mv.id, "bench-pool@v1",
                   PushParams(budget=n_tasks, honeypot_share=0.0))
        n = len(res.task_ids)
        rows += [Row(f"score {n} pool frames with the model (decode + onnxruntime + select)", res.seconds["score"],
                     "s", f"{n / res.seconds['score']:.0f} frames/s"),
                 Row(f"import {n} tasks with predictions (chunks of 250)", n / res.seconds["import"], "tasks/s",
                     f"{res.seconds['import']:.1f} s, frames written to local-files storage")]
        truth = truth_from_folder(raw)
        t = time.perf_counter()
        run_team(proj, [ErrorModel("bench-annotator", miss=0.02, flip=0.01, jitter=1.0)], truth)
        dt = time.perf_counter() - t
        rows.append(Row("scripted annotation through the API", n / dt, "annotations/s", f"{dt:.1f} s (1 annotator)"))
        t = time.perf_counter()
        export = proj.export()
        t_export = time.perf_counter() - t
        rows.append(Row(f"JSON export of {len(export)} annotated tasks", t_export, "s", "download_sync"))
        t = time.perf_counter()
        out = pull(proj, repo, "bench-labeled", gate, push=False)
        dt = time.perf_counter() - t
        rows.append(Row("pull: export + convert + batch gate + ingest + DVC version", dt, "s",
                        f"{len(out.accepted)} accepted, {len(out.rejected)} rejected → {out.version}"))
    finally:
        server.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1000, help="tasks with predictions to import (default 1000)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    args = p.parse_args(argv)
    quiet_env()
    cmd, load = command_line(), loadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cityloop-bench-ls-") as tmp:
        rows = run(Path(tmp), args.tasks)
    seconds = time.perf_counter() - t0
    from importlib.metadata import version

    facts = machine_facts(load, **{"label-studio": LS_VERSION, "label-studio-sdk": version("label-studio-sdk")})
    finish("cityloop labeling benchmark", SECTION, rows, facts, cmd, seconds, args.out,
           f"Inputs: {args.tasks} unlabeled field frames, a real Label Studio on a fresh SQLite database")


if __name__ == "__main__":
    main()
