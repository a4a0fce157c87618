"""CLI output that reads well in a pipe and in a log: tables that never cut an id, JSON for machines.

Rich fits a table into the console's width (80 columns when stdout is not a terminal): it wraps
cells, then cuts them (`cityloo…`). `print_table` widens the table instead. In a pipe or a log each
row is printed at the table's natural width, no cell wrapped; on a terminal cells may wrap between
words, but no word (an id, a version, a path) is cut, even when the table ends up wider than the
terminal. `echo_json` is the other half: what every list command prints under `--json`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table

WIDE = 100_000  # "unbounded" when measuring a table's natural width
JsonOption = Annotated[bool, typer.Option(
    "--json", help="Print JSON (full ids, numbers as numbers, no markup) instead of a table.")]


def echo_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout (never wrapped, no markup; paths and dates as strings)."""
    typer.echo(json.dumps(data, indent=1, default=str))


def _measure(console: Console, column: Column) -> tuple[int, int]:
    """The column's widest unbreakable text (its longest word; its longest line if no_wrap) and longest line."""
    options = console.options.update_width(WIDE)
    widths = [Measurement.get(console, options, cell) for cell in (column.header, *column.cells)]
    longest = max((m.maximum for m in widths), default=0)
    return (longest if column.no_wrap else max((m.minimum for m in widths), default=0)), longest


def table_width(table: Table, console: Console) -> int:
    """The width `print_table` renders `table` at on `console` (at least the console's width)."""
    natural = console.measure(table, options=console.options.update_width(WIDE))
    return max(console.width, natural.minimum if console.is_terminal else natural.maximum)


def print_table(table: Table, console: Console) -> None:
    """Print `table` on `console` without cutting a cell: see the module's docstring."""
    for column in table.columns:  # rich may squeeze a column below its longest word; not below this
        unbreakable, longest = _measure(console, column)
        column.min_width = max(column.min_width or 0, unbreakable)
        column.no_wrap = column.no_wrap or unbreakable >= longest  # ids: nothing to wrap, leave them whole
    width = table_width(table, console)
    fixed, table.width = table.width, (width if width > console.width else table.width)
    try:
        console.print(table, crop=False, soft_wrap=False)  # lines wider than the console stay whole
    finally:
        table.width = fixed
