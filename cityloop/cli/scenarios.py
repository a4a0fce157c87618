"""`cityloop scenarios list | show`: the registered city scenarios, each one unit
(cityloop/scenarios/units/, or a plugin through $CITYLOOP_SCENARIOS / the `cityloop.scenarios` entry points)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cityloop.cli.output import JsonOption, echo_json, print_table
from cityloop.core.settings import find_root, load_params

console = Console(soft_wrap=True)
app = typer.Typer(help="City scenarios: classes, rules, zones, active windows.", no_args_is_help=True)


def scenario_rows() -> list[dict[str, Any]]:
    """One row per registered scenario, with the workspace's params.yaml `scenarios:` applied."""
    from cityloop.scenarios import registry
    from cityloop.scenarios.settings import scenario_settings

    try:
        section = load_params(find_root()).get("scenarios")
    except FileNotFoundError:
        section = None
    settings = scenario_settings(section)
    rows = []
    for name, sc in registry().scenarios.items():
        cfg = settings[name]
        rows.append({
            "scenario": name, "title": sc.title, "agency": sc.agency, "enabled": cfg.enabled,
            "classes": [c.name for c in sc.classes], "uses": list(sc.uses), "rule": sc.kind,
            "zones": [{"kind": z.name, "shape": z.shape, "default": "whole frame" if z.default_whole else "none"}
                      for z in sc.zones],
            "windows": [w.to_dict() for w in cfg.windows], "windows_text": ", ".join(w.describe() for w in cfg.windows)
            or "always", "fps": sc.fps, "min_fps": sc.min_fps, "priority": sc.priority,
            "params": asdict(cfg.params), "alert": sc.alert, "module": sc.rule.__module__,
        })
    return rows


@app.command("list")
def list_(json_out: JsonOption = False) -> None:
    """Every registered scenario: its classes, rule kind, zones and active windows."""
    rows = scenario_rows()
    if json_out:
        echo_json(rows)
        return
    t = Table(title="registered scenarios")
    for col in ("scenario", "classes", "rule", "zones", "active", "fps", "on"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["scenario"], ", ".join(r["uses"]), r["rule"], ", ".join(z["kind"] for z in r["zones"]) or "-",
                  r["windows_text"], f"{r['fps']:g}", "yes" if r["enabled"] else "no")
    print_table(t, console)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="a scenario name (cityloop scenarios list)")],
         json_out: JsonOption = False) -> None:
    """One scenario in full: its parameters as configured, zones, windows, alert text and its unit."""
    rows = {r["scenario"]: r for r in scenario_rows()}
    if name not in rows:
        typer.echo(f"unknown scenario {name!r} (registered: {', '.join(rows)})", err=True)
        raise typer.Exit(2)
    r = rows[name]
    if json_out:
        echo_json(r)
        return
    t = Table(title=f"{r['title']} ({name})")
    t.add_column("key")
    t.add_column("value")
    for k, v in r.items():
        if k not in ("windows", "title"):
            t.add_row(k, str(v))
    print_table(t, console)


@app.command("check")
def check(
    seed: Annotated[list[int] | None, typer.Option(help="Simulator seeds (repeatable; default 21).")] = None,
    name: Annotated[list[str] | None, typer.Option(help="Only these scenarios (repeatable; default: all).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Each scenario's rule on its own clips (the simulator's boxes, degraded like a detector's): precision,
    recall and median time to discovery on its positive clip, false alarms on its confuser clip.
    Exit 1 when one misses precision >= 0.8, recall >= 0.7, TTD <= 10 s or raises on its confusers."""
    from rich.progress import Progress

    from cityloop.analysis.params import analysis_params
    from cityloop.analysis.scenario_check import check_all
    from cityloop.scenarios import registry

    seeds, names = seed or [21], name or list(registry().names)
    try:
        params = analysis_params(find_root())
    except FileNotFoundError:
        params = None
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("rendering and patrolling clips", total=len(seeds) * len(names))
        rows = check_all(seeds, names, params, advance=lambda _n: bar.advance(task))
    if json_out:
        echo_json([r.to_dict() for r in rows])
    else:
        t = Table(title="each scenario on its own clips (simulator boxes, degraded)")
        for col in ("scenario", "seed", "truth", "hits", "raised", "precision", "recall", "TTD median s",
                    "confuser alarms", "ok"):
            t.add_column(col)
        for r in rows:
            t.add_row(r.scenario, str(r.seed), str(r.truth), str(r.hits), str(r.raised),
                      "-" if r.precision is None else f"{r.precision:.2f}",
                      "-" if r.recall is None else f"{r.recall:.2f}",
                      "-" if r.ttd_median_s is None else f"{r.ttd_median_s:.1f}", str(r.confuser_raised),
                      "yes" if r.ok else "NO")
        print_table(t, console)
    if not all(r.ok for r in rows):
        raise typer.Exit(1)
