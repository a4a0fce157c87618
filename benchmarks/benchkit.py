"""What the benchmark scripts share: the row and number format, machine facts, the command line,
results.md sections."""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
