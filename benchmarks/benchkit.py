"""What the benchmark scripts share: the row and number format, machine facts, the command line,
results.md sections."""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass
class Row:
    """One figure of a results table."""

    what: str
    value: float | None  # None: not measured (see note)
    unit: str
    note: str = ""


def fmt(value: float | None) -> str:
    """Thousands separators from 100 up, two decimals below, scientific for tiny values."""
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if value != 0 and abs(value) < 0.01:
        return f"{value:.1e}"
    return f"{value:,.2f}"


def log(msg: str) -> None:
    Console(stderr=True).log(msg)


def print_table(title: str, rows: Iterable, fmt: Callable, facts: dict[str, str]) -> None:
    """The results as a rich table (rows have what, value, unit, note), then the machine facts."""
    table = Table(title=title)
    for col, justify in (("measure", "left"), ("value", "right"), ("unit", "left"), ("notes", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(r.what, fmt(r.value), r.unit, r.note)
    console = Console()
    console.print(table)
    console.print(", ".join(f"{k}: {v}" for k, v in facts.items()))


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def command_line() -> str:
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join([str(exe), *sys.argv])


def replace_section(text: str, heading: str, section: str) -> str:
    """text with its `heading` section (up to the next "## " heading) replaced or appended."""
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    section = section.rstrip("\n") + "\n\n"  # one blank line before the next section
    if pattern.search(text):
        return pattern.sub(lambda _: section, text, count=1).rstrip("\n") + "\n"
    head = text.rstrip("\n") + "\n\n" if text.strip() else "# cityloop benchmarks\n\n"
    return head + section


def write_results(path: Path, heading: str, section: str) -> None:
    """Read-modify-write in one go at the end (the other benchmark writes its own section)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(replace_section(text, heading, section))
    os.replace(tmp, path)


def machine_facts(load_at_start: str, **versions: str) -> dict[str, str]:
    """Date, cores, CPU, load at start and now, Python, plus the package versions a benchmark names."""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo() if line.startswith("model name")), "?")
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "nproc": str(len(os.sched_getaffinity(0))),
            "cpu": cpu, "load avg 1/5/15 min at start": load_at_start, "at end": loadavg(),
            "python": platform.python_version(), **versions}


def markdown(section: str, rows: Iterable, facts: dict[str, str], cmd: str, seconds: float,
             extra: str = "") -> str:
    """A results.md section: the command, the machine, an optional line about the inputs, the table."""
    lines = [section, "", f"Command: `{cmd}` (whole run {seconds:.0f} s)", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()), ""]
    lines += [extra, ""] if extra else []
    lines += ["| measure | value | unit | notes |", "|---|---:|---|---|"]
    lines += [f"| {r.what} | {fmt(r.value)} | {r.unit} | {r.note} |" for r in rows]
    return "\n".join(lines) + "\n"


def finish(title: str, section: str, rows: list, facts: dict[str, str], cmd: str, seconds: float, out: Path,
           extra: str = "") -> None:
    """Print the table and replace the benchmark's section of results.md."""
    print_table(f"{title} ({seconds:.0f} s)", rows, fmt, facts)
    write_results(out, section, markdown(section, rows, facts, cmd, seconds, extra))
    log(f"wrote {out}")


@contextmanager
def edge_node(ws: Path, model: str, streams: list[str], *extra: str, log_path: Path | None = None
              ) -> Iterator[subprocess.Popen]:
    """A real `cityloop edge start --name bench` node in workspace `ws` serving `model` on `streams`
    (`CAMERA=FOLDER` specs); stopped with SIGTERM (it stops its server) when the block ends."""
    from cityloop.bento.serving import free_port

    argv = [str(Path(sys.executable).with_name("cityloop")), "edge", "start", "--name", "bench",
            "--port", str(free_port()), "--model", model, *extra]
    for spec in streams:
        argv += ["--stream", spec]
    env = {**os.environ, "CITYLOOP_ROOT": str(ws)}
    with open(log_path or os.devnull, "wb") as log_file:
        proc = subprocess.Popen(argv, env=env, cwd=ws, stdout=subprocess.DEVNULL, stderr=log_file,
                                start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(60)
