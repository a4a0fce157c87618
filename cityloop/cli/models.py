"""`cityloop models …`: the algorithm repository from the command line (mounted by cityloop.cli).

Exit codes: 0 done; 1 a promotion, rollback or admission was refused (the reasons are printed),
or the request could not be served (unknown id, missing registry params).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cityloop.cli.output import JsonOption, echo_json, print_table
from cityloop.core.settings import find_root, load_params
from cityloop.governance.versioning import VersioningError
from cityloop.models.gate import Check, Decision, PromotionGate, open_gate
from cityloop.models.store import ModelStore, RegistryError

app = typer.Typer(help="The algorithm repository: versions, benchmark, promotion gate, rollback, partner admission.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
console = Console(soft_wrap=True)  # messages: one line each in a pipe or a log; tables: print_table
err = Console(stderr=True, soft_wrap=True)
ERRORS = (RegistryError, VersioningError, LookupError, ValueError)  # printed, exit 1


def _store() -> ModelStore:
    """The workspace's algorithm repository (reading needs no params)."""
    return ModelStore(find_root())


def _gate() -> PromotionGate:
    """The workspace's gate with its `registry:` params (a clear error when they are missing or wrong)."""
    try:
        return open_gate(find_root())
    except ValueError as exc:
        err.print(f"[red]params.yaml registry: {exc}[/red]")
        raise typer.Exit(1) from exc


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2g}" if 0 < abs(v) < 0.01 else f"{v:.{digits}f}"
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    return str(v)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]{exc}[/red]")
    return typer.Exit(1)


def _checks_table(title: str, checks: list[Check]) -> Table:
    t = Table(title=title)
    for col in ("check", "result", "value", "threshold", "detail"):
        t.add_column(col, overflow="fold")
    for c in checks:
        t.add_row(c.name, "[green]pass[/green]" if c.passed else "[red]FAIL[/red]", _fmt(c.value),
                  _fmt(c.threshold), c.detail)
    return t


def _print_decision(d: Decision) -> None:
    if d.checks:
        print_table(_checks_table(f"{d.action} {d.id} -> {d.to}", d.checks), console)
    colour = "green" if d.promoted else "red"
    console.print(f"[bold {colour}]{'DONE' if d.promoted else 'REFUSED'}[/bold {colour}]: {d.reason}")


def _metrics_tables(metrics: dict[str, Any]) -> list[Table]:
    main = Table(title=f"benchmark {metrics.get('benchmark', '?')}")
    main.add_column("metric")
    main.add_column("value", justify="right")
    for key in ("mAP50", "mAP", "images", "boxes", "detections"):
        main.add_row(key, _fmt(metrics.get(key)))
    for cls, ap in (metrics.get("per_class") or {}).items():
        main.add_row(f"AP50 {cls}", _fmt(ap))
    lat = metrics.get("latency") or {}
    main.add_row("ms/image, batch 1 (median)", _fmt(lat.get("batch1_median_ms"), 2))
    main.add_row(f"images/s, batch {lat.get('throughput_batch', '?')}", _fmt(lat.get("throughput_ips"), 1))
    tables = [main]
    for col, groups in (metrics.get("by") or {}).items():
        t = Table(title=f"by {col}")
        for c in (col, "mAP50", "mAP", "images", "boxes"):
            t.add_column(c, justify="left" if c == col else "right")
        for value, m in groups.items():
            t.add_row(value, _fmt(m.get("mAP50")), _fmt(m.get("mAP")), _fmt(m.get("images")), _fmt(m.get("boxes")))
        tables.append(t)
    return tables


def version_row(mv, metric: str) -> dict[str, Any]:
    """One version as `models list` shows it (and prints under --json), with its latest benchmark result."""
    m = mv.metrics() or {}
    return {"id": mv.id, "name": mv.name, "version": mv.version, "vendor": mv.card.vendor, "stage": mv.stage,
            "variant": mv.card.variant, "size_mb": round(mv.size_mb, 3), "benchmark": m.get("benchmark"),
            "metric": metric, "metric_value": m.get(metric),
            "latency_ms": (m.get("latency") or {}).get("batch1_median_ms"), "registered": mv.registered}


def versions_table(rows: list[dict[str, Any]], metric: str = "mAP50") -> Table:
    """The algorithm repository as a table, one row per version (rows from version_row)."""
    t = Table(title="cityloop algorithm repository")
    for col in ("id", "vendor", "stage", "variant", "MB", f"{metric} (benchmark)", "ms/img", "registered"):
        t.add_column(col)
    for r in rows:
        style = {"production": "bold green", "staging": "yellow", "retired": "dim"}.get(r["stage"], "")
        t.add_row(r["id"], r["vendor"], f"[{style}]{r['stage']}[/{style}]" if style else r["stage"], r["variant"],
                  f"{r['size_mb']:.2f}", f"{_fmt(r['metric_value'])} ({r['benchmark']})" if r["benchmark"] else "-",
                  _fmt(r["latency_ms"], 2), r["registered"][:19])
    return t


@app.command("list")
def list_cmd(
    name: Annotated[str | None, typer.Option(help="Only versions of this model.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Every registered version with its stage and latest benchmark result."""
    store = _store()
    metric = (load_params(store.root).get("registry") or {}).get("target_metric", "mAP50")
    rows = [version_row(mv, metric) for mv in store.list(name)]
    if json_out:
        echo_json(rows)
    elif not rows:
        console.print("no model versions registered")
    else:
        print_table(versions_table(rows, metric), console)
    if not json_out and (left := store.leftovers()):
        err.print(f"[yellow]{len(left)} half-written registration(s) not listed: see `cityloop models leftovers`[/]")


@app.command("leftovers")
def leftovers_cmd(
    remove: Annotated[bool, typer.Option(help="Delete them (under the workspace lock).")] = False,
    json_out: JsonOption = False,
) -> None:
    """What killed registrations left behind (never resolved by :latest) and torn lines in the events log."""
    store = _store()
    try:
        found = store.remove_leftovers() if remove else store.leftovers()
    except ERRORS as exc:
        raise _fail(exc) from exc
    torn = store.unreadable_lines()
    if json_out:
        echo_json({"leftovers": found, "removed": remove, "unreadable_event_lines": torn})
        return
    for item in found:
        console.print(f"{'removed' if remove else 'leftover'} {item['path']}: {item['why']}")
    if torn:
        console.print(f"{store.events_path}: {len(torn)} torn line(s) skipped by every reader (lines "
                      f"{', '.join(map(str, torn[:10]))})")
    if not found and not torn:
        console.print("no leftovers: every version folder is a completed registration")
    elif found and not remove:
        console.print("run `cityloop models leftovers --remove` to delete them")


@app.command("show")
def show_cmd(model_id: Annotated[str, typer.Argument(metavar="ID", help="name:v3, name:latest, name:production")],
             json_out: JsonOption = False) -> None:
    """One version: its card merged with its stage, evaluations and events."""
    try:
        mv = _store().get(model_id)
    except ERRORS as exc:
        raise _fail(exc) from exc
    if json_out:  # the merged card, evaluations and events
        echo_json(mv.to_dict())
        return
    card = mv.card
    t = Table(title=f"{mv.id} ({mv.stage})", show_header=False)
    t.add_column("field")
    t.add_column("value", overflow="fold")
    for key, value in (("vendor", card.vendor), ("stage", mv.stage), ("variant", card.variant),
                       ("classes", card.classes), ("class_map", card.class_map or "-"),
                       ("input", f"{card.input.name} {card.input.height}x{card.input.width}"),
                       ("output", f"{card.output.format} {list(card.output.names)}"),
                       ("dataset", card.dataset), ("parent", card.parent), ("git", card.git_commit),
                       ("parity", mv.parity.get("status") or mv.parity), ("path", mv.path),
                       ("size", f"{mv.size_mb:.2f} MB"), ("files", ", ".join(mv.files))):
        t.add_row(key, _fmt(value) if not isinstance(value, dict) else json.dumps(value))
    print_table(t, console)
    for bench, metrics in card.metrics.items():
        if isinstance(metrics, dict) and "mAP50" in metrics:
            for table in _metrics_tables({"benchmark": bench, **metrics}):
                print_table(table, console)
    ev = Table(title="events")
    for col in ("when", "who", "event", "stage", "why"):
        ev.add_column(col, overflow="fold")
    for e in mv.events:
        ev.add_row(e["ts"][:19], e["who"], e["event"], e.get("stage") or "", e.get("why") or "")
    print_table(ev, console)


@app.command("evaluate")
def evaluate_cmd(model_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Run a version on the benchmark (registry.benchmark) and record the metrics."""
    gate = _gate()
    try:
        metrics = gate.evaluate(model_id)
    except ERRORS as exc:
        raise _fail(exc) from exc
    for table in _metrics_tables(metrics):
        print_table(table, console)


def _decide(act: Callable[[PromotionGate], Decision]) -> None:
    """Run a promotion or rollback, print the decision; exit 1 when it was refused."""
    try:
        decision = act(_gate())
    except ERRORS as exc:
        raise _fail(exc) from exc
    _print_decision(decision)
    if not decision.promoted:
        raise typer.Exit(1)


@app.command("promote")
def promote_cmd(model_id: Annotated[str, typer.Argument(metavar="ID")],
                to: Annotated[str, typer.Option(help="production or staging.")] = "production") -> None:
    """The promotion gate: target metric, per-condition regression, parity, latency."""
    _decide(lambda reg: reg.promote(model_id, to))


@app.command("rollback")
def rollback_cmd(name: Annotated[str, typer.Argument(help="Model name.")],
                 why: Annotated[str, typer.Option(help="Reason, kept in the events log.")] = "") -> None:
    """Put the previous production version back in production."""
    _decide(lambda reg: reg.rollback(name, why))


@app.command("admit")
def admit_cmd(path: Annotated[Path, typer.Argument(help="Partner package: model.onnx + manifest.json.")]) -> None:
    """Admit a partner model: contract checks, then the benchmark; registered only if it qualifies."""
    from cityloop.models.admission import admit

    gate = _gate()
    try:
        report = admit(gate, path)
    except ERRORS as exc:
        raise _fail(exc) from exc
    print_table(_checks_table(f"admission of {report.name}", report.checks), console)
    if report.metrics:
        for table in _metrics_tables(report.metrics):
            print_table(table, console)
    colour = "green" if report.admitted else "red"
    verdict = "ADMITTED" if report.admitted else "REJECTED"
    console.print(f"[bold {colour}]{verdict}[/bold {colour}]: {report.reason}")
    console.print(f"report: {report.path}")
    if not report.admitted:
        raise typer.Exit(1)
