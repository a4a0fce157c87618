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

from cityloop.core.settings import find_root, load_params
from cityloop.governance.versioning import VersioningError
from cityloop.models.registry import Check, Decision, Registry, RegistryError, RegistryParams

app = typer.Typer(help="The algorithm repository: versions, benchmark, promotion gate, rollback, partner admission.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
console = Console()
err = Console(stderr=True, soft_wrap=True)
ERRORS = (RegistryError, VersioningError, LookupError, ValueError)  # printed, exit 1


def _registry() -> Registry:
    root = find_root()
    section = load_params(root).get("registry")
    try:
        params = RegistryParams.from_dict(section) if section else None
    except ValueError as exc:
        err.print(f"[red]params.yaml registry: {exc}[/red]")
        raise typer.Exit(1) from exc
    return Registry(root, params)


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
        console.print(_checks_table(f"{d.action} {d.id} -> {d.to}", d.checks))
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


@app.command("list")
def list_cmd(
    name: Annotated[str | None, typer.Option(help="Only versions of this model.")] = None,
) -> None:
    """Every registered version with its stage and latest benchmark result."""
    reg = _registry()
    versions = reg.list(name)
    if not versions:
        console.print("no model versions registered")
        return
    metric = reg.params.target_metric if reg.params else "mAP50"
    t = Table(title="cityloop algorithm repository")
    for col in ("id", "vendor", "stage", "variant", "MB", f"{metric} (benchmark)", "ms/img", "registered"):
        t.add_column(col)
    for mv in versions:
        m = mv.metrics() or {}
        stage_style = {"production": "bold green", "staging": "yellow", "retired": "dim"}.get(mv.stage, "")
        t.add_row(mv.id, mv.card.vendor, f"[{stage_style}]{mv.stage}[/{stage_style}]" if stage_style else mv.stage,
                  mv.card.variant, f"{mv.size_mb:.2f}",
                  f"{_fmt(m.get(metric))} ({m.get('benchmark', '-')})" if m else "-",
                  _fmt((m.get("latency") or {}).get("batch1_median_ms"), 2), mv.registered[:19])
    console.print(t)


@app.command("show")
def show_cmd(model_id: Annotated[str, typer.Argument(metavar="ID", help="name:v3, name:latest, name:production")],
             as_json: Annotated[bool, typer.Option("--json", help="Print the merged card and events as JSON.")]
             = False) -> None:
    """One version: its card merged with its stage, evaluations and events."""
    reg = _registry()
    try:
        mv = reg.get(model_id)
    except ERRORS as exc:
        raise _fail(exc) from exc
    if as_json:
        console.print_json(json.dumps(mv.to_dict(), default=str))
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
    console.print(t)
    for bench, metrics in card.metrics.items():
        if isinstance(metrics, dict) and "mAP50" in metrics:
            for table in _metrics_tables({"benchmark": bench, **metrics}):
                console.print(table)
    ev = Table(title="events")
    for col in ("when", "who", "event", "stage", "why"):
        ev.add_column(col, overflow="fold")
    for e in mv.events:
        ev.add_row(e["ts"][:19], e["who"], e["event"], e.get("stage") or "", e.get("why") or "")
    console.print(ev)


@app.command("evaluate")
def evaluate_cmd(model_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Run a version on the benchmark (registry.benchmark) and record the metrics."""
    reg = _registry()
    try:
        metrics = reg.evaluate(model_id)
    except ERRORS as exc:
        raise _fail(exc) from exc
    for table in _metrics_tables(metrics):
        console.print(table)


def _decide(act: Callable[[Registry], Decision]) -> None:
    """Run a promotion or rollback, print the decision; exit 1 when it was refused."""
    try:
        decision = act(_registry())
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

    reg = _registry()
    try:
        report = admit(reg, path)
    except ERRORS as exc:
        raise _fail(exc) from exc
    console.print(_checks_table(f"admission of {report.name}", report.checks))
    if report.metrics:
        for table in _metrics_tables(report.metrics):
            console.print(table)
    colour = "green" if report.admitted else "red"
    verdict = "ADMITTED" if report.admitted else "REJECTED"
    console.print(f"[bold {colour}]{verdict}[/bold {colour}]: {report.reason}")
    console.print(f"report: {report.path}")
    if not report.admitted:
        raise typer.Exit(1)
