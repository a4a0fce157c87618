"""`cityloop loop report | status`: the loop's figures from its state (`run` lives in cityloop.cli,
which owns the Prefect side)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cityloop.cli.output import JsonOption, echo_json, print_table
from cityloop.core.settings import find_root, load_section

app = typer.Typer(help="The closed loop: run, report, status.", no_args_is_help=True)
console = Console(soft_wrap=True)  # messages: one line each in a pipe or a log; tables: print_table


def runs(root: Path) -> list[Path]:
    """Loop runs of the workspace, newest last."""
    base = Path(root) / ".cityloop" / "loop"
    return sorted((p for p in base.glob("*/rounds.jsonl")), key=lambda p: p.stat().st_mtime) if base.exists() else []


def _records(root: Path, run: str | None) -> tuple[str, list[dict]]:
    from cityloop.loop.runner import LoopState

    found = runs(root)
    if run:
        found = [p for p in found if p.parent.name == run]
    if not found:
        raise typer.BadParameter(f"no loop run{' ' + run if run else ''} in {root}/.cityloop/loop "
                                 "(start one: cityloop loop run)")
    key = found[-1].parent.name
    return key, LoopState(Path(root), key).records()


@app.command("status")
def status(run: Annotated[str | None, typer.Option(help="Loop run id (default: the latest).")] = None,
           json_out: JsonOption = False) -> None:
    """Every lineage's rounds: labels, model, field mAP@0.5, events, whether it was released."""
    key, recs = _records(find_root(), run)
    if json_out:
        echo_json(recs)
        return
    t = Table(title=f"closed loop {key}")
    for col in ("round", "lineage", "labels", "model", "data", "mAP@0.5", "event P/R", "released"):
        t.add_column(col)
    f = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    for r in sorted(recs, key=lambda r: (r["round"], r["lineage"])):
        t.add_row(str(r["round"]), r["lineage"], str(r["labels"]), r["model"], r.get("data") or "-",
                  f"{r['mAP50']:.3f}", f"{f(r.get('event_precision'))}/{f(r.get('event_recall'))}",
                  "yes" if r.get("released") else "no")
    print_table(t, console)


@app.command("report")
def report(run: Annotated[str | None, typer.Option(help="Loop run id (default: the latest).")] = None) -> None:
    """Write reports/loop/{curve.png, report.md, summary.json} from a run's records."""
    from cityloop.loop.params import LoopParams
    from cityloop.loop.report import write_report

    root = find_root()
    _, recs = _records(root, run)
    p = load_section(root, "loop", LoopParams)
    s = write_report(root, p, recs, root / p.out)
    console.print(f"{s.get('ratio_text', 'no active/random ratio yet')}\nreport: {s['markdown']}  curve: {s['png']}")
