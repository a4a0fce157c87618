"""Governance benchmark: simulator throughput, ingest + gate throughput, and time to version.

What one run measures (all in a temporary directory that is removed afterwards):

1. Simulator: frames/s of ``scenes.frames.iter_frames`` (render + JPEG encode, iterator
   consumed) for the ``field`` and ``lab`` domains with 1 and 2 worker processes (2000 frames each).
2. Ingest of ``--frames`` new ``field`` frames (generated first, not timed) into a fresh git
   workspace through ``DataRepository``: ``prepare`` (read + hash + decode + stage packs),
   ``validate`` (the Great Expectations gate with Data Docs; GX import timed separately) and
   ``publish`` (``dvc add`` + ``dvc push`` to the local remote + tag): seconds to version N frames.
3. A second version of the same dataset after ingesting another ``--frames``/10 frames: publish
   seconds, and the bytes of new packs under data/frames/packs and of objects pushed to the remote.

Prints a table and replaces the "## Governance" section of ``--out`` (other sections are kept).

Run: ``make bench`` (= ``.venv/bin/python benchmarks/bench_governance.py``), or with options,
e.g. ``.venv/bin/python benchmarks/bench_governance.py --frames 2000 --workers 2``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version as pkg_version
from pathlib import Path

import yaml
from benchkit import Row, command_line, cpuinfo, fmt, loadavg, log, print_table, write_results

from cityloop.governance.gate import GateParams
from cityloop.governance.repository import Candidate, DataRepository
from cityloop.scenes.frames import generate_frames, iter_frames

REPO = Path(__file__).resolve().parents[1]
SIM_FRAMES = 2000
SIM_DOMAINS = ("field", "lab")
SEED = 11
DATASET = "bench"
SECTION = "## Governance"


def quiet_env() -> None:
    """Telemetry off, and this venv's bin dir first on PATH (dvc, git hooks)."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


@contextmanager
def stopwatch(out: dict[str, float], key: str) -> Iterator[None]:
    """Store the wall-clock seconds of the block in out[key]."""
    t0 = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t0




# ---------------------------------------------------------------------- 1. simulator


def sim_fps(domain: str, n: int, workers: int) -> float:
    """Frames/s rendering + encoding n frames (the iterator is consumed, nothing written)."""
    t0 = time.perf_counter()
    count = sum(1 for _ in iter_frames(domain, n, SEED, workers=workers))
    return count / (time.perf_counter() - t0)


def bench_simulator(n: int, workers: int) -> list[Row]:
    rows = []
    for domain in SIM_DOMAINS:
        log(f"simulator: {domain}, {n} frames, 1 and {workers} workers")
        one, many = sim_fps(domain, n, 1), sim_fps(domain, n, workers)
        rows += [Row(f"simulator {domain}, 1 worker", one, "frames/s", f"{n} frames, render + encode"),
                 Row(f"simulator {domain}, {workers} workers", many, "frames/s", f"{n} frames"),
                 Row(f"simulator {domain}, {workers}/1 workers", many / one, "x", "speed-up")]
    return rows


# ---------------------------------------------------------------------- 2./3. ingest


def git(ws: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *args], cwd=ws, check=True,
                   capture_output=True, text=True)


def make_workspace(ws: Path) -> None:
    """A fresh git repo with the project's params and expectation suites, committed."""
    (ws / "data").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    shutil.copytree(REPO / "data" / "expectations", ws / "data" / "expectations")
    git(ws, "init", "-q", "-b", "main")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "benchmark workspace")


def gate_params(ws: Path) -> GateParams:
    return GateParams.from_dict(yaml.safe_load((ws / "params.yaml").read_text())["gate"])


def tree_bytes(path: Path, pattern: str = "*") -> dict[str, int]:
    """Relative path -> size of every file under path matching pattern."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob(pattern) if p.is_file()}


def added_bytes(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(size for name, size in after.items() if name not in before)


def import_gx_seconds() -> float:
    """Import great_expectations now, so that the validate timing is the gate itself."""
    t0 = time.perf_counter()
    import great_expectations  # noqa: F401

    return time.perf_counter() - t0


def ingest(repo: DataRepository, src: Path, workers: int) -> dict[str, float]:
    """prepare → validate → publish, each timed; raises if the gate rejects."""
    t: dict[str, float] = {}
    with stopwatch(t, "prepare"):
        cand: Candidate = repo.prepare(src, DATASET, "sim", "bench", "frame", None, workers)
    with stopwatch(t, "validate"):
        res = repo.validate(cand, docs=True)
    if not res.success:
        raise RuntimeError(f"gate rejected the benchmark frames:\n{res.report()}")
    with stopwatch(t, "publish"):
        out = repo.publish(cand, res, push=True)
    t["new_frames"] = float(cand.new_frames)
    log(f"published {out.version.id if out.version else '?'}: {cand.new_frames} new frames")
    return t


def first_version_rows(t: dict[str, float], n: int, workers: int, gx_import: float) -> list[Row]:
    both = t["prepare"] + t["validate"]
    return [
        Row("ingest: prepare", n / t["prepare"], "frames/s",
            f"read + sha256 + decode + stage packs, {workers} workers ({t['prepare']:.1f} s)"),
        Row("ingest: validate (GX gate + Data Docs)", n / t["validate"], "frames/s",
            f"{t['validate']:.1f} s; GX import ({gx_import:.1f} s) excluded"),
        Row("ingest: prepare + validate", n / both, "frames/s", f"{both:.1f} s"),
        Row(f"publish v1 ({n} new frames)", t["publish"], "s", "dvc add + dvc push (local remote) + tag"),
    ]


def second_version_rows(t: dict[str, float], n: int, packs: int, pushed: int, dataset: int) -> list[Row]:
    return [
        Row(f"ingest v2: prepare + validate ({n} new frames)", n / (t["prepare"] + t["validate"]), "frames/s",
            f"prepare {t['prepare']:.1f} s, validate {t['validate']:.1f} s (whole dataset re-gated)"),
        Row(f"publish v2 ({n} new frames)", t["publish"], "s", "dvc add + dvc push + tag"),
        Row("publish v2: packs added to data/frames/packs", packs / 2**20, "MiB", "only the new pack(s)"),
        Row("publish v2: objects pushed to the remote", pushed / 2**20, "MiB",
            f"new pack(s) + dataset files rewritten whole ({dataset / 2**20:.1f} MiB: manifest + COCO)"),
    ]


def bench_ingest(tmp: Path, n: int, workers: int) -> list[Row]:
    n2 = max(1, n // 10)
    log(f"generating {n} + {n2} field frames (not timed)")
    generate_frames("field", n, SEED, tmp / "src1", workers=workers)
    generate_frames("field", n2, SEED + 1, tmp / "src2", workers=workers)
    ws = tmp / "ws"
    make_workspace(ws)
    repo = DataRepository(ws, gate_params(ws))
    gx_import = import_gx_seconds()
    log(f"ingest v1: {n} frames")
    first = ingest(repo, tmp / "src1", workers)
    packs_dir, remote = ws / "data" / "frames" / "packs", ws / ".cityloop" / "dvc-remote"
    packs0, remote0 = tree_bytes(packs_dir, "*.zip"), tree_bytes(remote)
    log(f"ingest v2: {n2} more frames")
    second = ingest(repo, tmp / "src2", workers)
    packs = added_bytes(packs0, tree_bytes(packs_dir, "*.zip"))
    pushed = added_bytes(remote0, tree_bytes(remote))
    dataset = sum(tree_bytes(ws / "data" / "datasets").values())
    return (first_version_rows(first, int(first["new_frames"]), workers, gx_import)
            + second_version_rows(second, int(second["new_frames"]), packs, pushed, dataset)
            + [Row("great_expectations import", gx_import, "s", "once per process")])


# ---------------------------------------------------------------------- report


def machine_facts(load_at_start: str) -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo() if line.startswith("model name")), "?")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "load avg 1/5/15 min at start": load_at_start,
        "at end": loadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dvc": pkg_version("dvc"),
        "great_expectations": pkg_version("great_expectations"),
    }










def markdown(rows: list[Row], facts: dict[str, str], cmd: str, seconds: float) -> str:
    lines = [SECTION, "", f"Command: `{cmd}` (whole run {seconds:.0f} s)", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()), "",
             "| measure | value | unit | notes |", "|---|---:|---|---|"]
    lines += [f"| {r.what} | {fmt(r.value)} | {r.unit} | {r.note} |" for r in rows]
    return "\n".join(lines) + "\n"






# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=10_000, help="new field frames to ingest (default 10000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md", help="markdown results file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_env()
    cmd, load = command_line(), loadavg()
    t0 = time.perf_counter()
    rows = bench_simulator(SIM_FRAMES, args.workers)
    with tempfile.TemporaryDirectory(prefix="cityloop-bench-") as tmp:
        rows += bench_ingest(Path(tmp), args.frames, args.workers)
    seconds = time.perf_counter() - t0
    facts = machine_facts(load)
    print_table(f"cityloop governance benchmark ({seconds:.0f} s)", rows, fmt, facts)
    write_results(args.out, SECTION, markdown(rows, facts, cmd, seconds))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
