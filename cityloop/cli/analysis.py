"""`cityloop patrol`, `cityloop report …`, `cityloop dashboard …` (mounted by cityloop.cli)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cityloop.cli.output import JsonOption, echo_json, print_table
from cityloop.core.settings import find_root

console = Console(soft_wrap=True)  # messages: one line each in a pipe or a log; tables: print_table
err = Console(stderr=True, soft_wrap=True)
report_app = typer.Typer(help="Reports over the event store.", no_args_is_help=True)
dashboard_app = typer.Typer(help="The one-screen dashboard.", no_args_is_help=True)


def metrics_rich(metrics: dict[str, dict]) -> Table:
    """Per-scenario event metrics as a table."""
    t = Table(title="event-level metrics (stream seconds)")
    cols = ("scenario", "truth", "raised", "hits", "duplicates", "false_alarms", "precision", "recall",
            "duplicate_rate", "ttd_median_s", "ttd_p95_s")
    heads = ("scenario", "truth", "raised", "hits", "dups", "false", "prec", "recall", "dup rate", "ttd p50 s",
             "ttd p95 s")
    for c, h in zip(cols, heads):
        t.add_column(h, justify="left" if c == "scenario" else "right", no_wrap=True)
    for m in metrics.values():
        t.add_row(*("—" if m[c] is None else str(m[c]) for c in cols))
    return t


def snapshots_dir(root: Path, url: str) -> Path:
    """Snapshots beside a SQLite store's file, else under the workspace."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent / "snapshots"
    return root / ".cityloop" / "events" / "snapshots"


def patrol(
    streams: Annotated[Path, typer.Option(help="Stream folder: cameras.json, <camera>/frames, events.json.")],
    model: Annotated[str, typer.Option(help="Model version (cityloop-detector:v3, :latest, :production), "
                                            "or `truth` to feed the simulator's boxes.")],
    camera: Annotated[list[str] | None, typer.Option(help="Only these cameras (repeatable).")] = None,
    db: Annotated[str | None, typer.Option(help="Event store URL (default: params analysis.db).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the metrics and events as JSON here.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Run streams through detector → tracker → rules → event store; print event-level metrics."""
    from cityloop.analysis.params import analysis_params, store_url
    from cityloop.analysis.patrol import run_patrol
    from cityloop.scenarios.zones import ZoneError, read_cameras

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    root = find_root()
    try:
        cams = read_cameras(streams)
        total = sum(int(c.get("frames", 0)) for c in cams if not camera or c["camera_id"] in camera)
        with Progress(TextColumn("[bold]patrol"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err) as prog:
            task = prog.add_task("frames", total=total or None)
            res = run_patrol(root, streams, model, analysis_params(root), store_url(root, db), camera,
                             snapshots=snapshots_dir(root, store_url(root, db)),
                             advance=lambda n: prog.advance(task, n))
    except (ZoneError, ValueError, KeyError) as exc:
        err.print(f"[red]patrol: {exc}")
        raise typer.Exit(1) from exc
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res.to_dict(), indent=1, default=str))
    if json_out:  # what --out writes: the metrics and the events
        echo_json(res.to_dict())
        return
    console.print(f"{res.frames} frames in {res.seconds:.1f} s ({res.frames / max(res.seconds, 1e-9):.1f} frames/s), "
                  f"{len(res.events)} events, {res.deduplicated} duplicate candidates merged, "
                  f"{len(res.corrupt)} corrupt frames skipped")
    if res.metrics:
        print_table(metrics_rich(res.metrics), console)
    else:
        console.print("no events.json in the streams: nothing to score against")


def season_story(res: dict) -> str:
    """The season's ending in one line: the drop the platform measured beside the simulator's truth."""
    def pct(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}%"

    return (f"helmetless riders {' → '.join(map(str, res['measured']['helmetless_rider']))} a week: measured drop "
            f"{pct(res['measured_drop_pct'])} vs true drop {pct(res['true_drop_pct'])} in the simulator's event "
            f"counts ({' → '.join(map(str, res['truth']['helmetless_rider']))}; gap "
            f"{'—' if res['gap_points'] is None else res['gap_points']} points)")


def patrol_season(
    season: Annotated[Path | None, typer.Option(help="Season folder (cityloop scenes season; default: params "
                                                     "season.out).")] = None,
    model: Annotated[str | None, typer.Option(help="Model version, or `truth` (default: the detector's production "
                                                   "version, else its latest).")] = None,
    db: Annotated[str | None, typer.Option(help="Event store URL (default: params analysis.db).")] = None,
    replay: Annotated[bool, typer.Option(help="Patrol days already in the store again.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Patrol every day of a season into the event store, then the weekly report of its last week:
    the 4-week trend measured from the events the platform raised, beside the simulator's truth."""
    from cityloop.analysis.params import store_url
    from cityloop.analysis.report import ReportParams
    from cityloop.analysis.season import play_season, season_model
    from cityloop.core.settings import load_section
    from cityloop.scenes.season import SeasonParams, read_season

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    root = find_root()
    folder = season or root / load_section(root, "season", SeasonParams).out
    try:
        s = read_season(folder)
        model = model or season_model(root)
        url = store_url(root, db)
        with Progress(TextColumn("[bold]season"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err) as prog:
            task = prog.add_task("frames", total=s["frames"])
            cfg = load_section(root, "report", ReportParams)
            res = play_season(root, folder, model, url, snapshots_dir(root, url), replay=replay,
                              report_out=root / cfg.out, top=int(cfg.top_hotspots), pdf=cfg.pdf,
                              advance=lambda n: prog.advance(task, n))
    except (ValueError, KeyError) as exc:
        err.print(f"[red]patrol-season: {exc}")
        raise typer.Exit(1) from exc
    if json_out:
        echo_json(res)
        return
    console.print(f"{res['streams_played']} days patrolled with {model} "
                  f"({res['streams_skipped']} already in the store)")
    for h in [h for h in res["headline"] if "without helmet" in h] or res["headline"][:1]:
        console.print(f"[bold]{h}")
    console.print(season_story(res))
    console.print(f"report: {res['report']}")


@report_app.command("weekly")
def report_weekly(
    week: Annotated[str | None, typer.Option(help="ISO week, e.g. 2026-W42 (default: the latest event's).")] = None,
    db: Annotated[str | None, typer.Option(help="Event store URL (default: params analysis.db).")] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: params report.out).")] = None,
    recipient: Annotated[list[str] | None, typer.Option(
        help="Only this recipient's report, e.g. agency-traffic-police, district-futian (repeatable; the "
             "whole district's is always written).")] = None,
    no_pdf: Annotated[bool, typer.Option("--no-pdf", help="HTML only (no headless Chromium).")] = False,
    deliver_: Annotated[bool, typer.Option("--deliver", help="Deliver to params report.sinks.")] = False,
    json_out: JsonOption = False,
) -> None:
    """One report per recipient (whole district, agencies, street offices): week on week, four weeks,
    hotspots with snapshots, the precision of reviewed alerts; HTML + PDF, optionally delivered."""
    from cityloop.analysis.params import store_url
    from cityloop.analysis.report import ReportParams, deliver, weekly_report
    from cityloop.analysis.store import EventStore
    from cityloop.core.settings import load_section

    root = find_root()
    cfg = load_section(root, "report", ReportParams)
    store = EventStore(store_url(root, db))
    try:
        s = weekly_report(store, out or root / cfg.out, week, root, int(cfg.top_hotspots), recipients=cfg.recipients,
                          only=recipient or None, pdf=cfg.pdf and not no_pdf, pdf_timeout_s=float(cfg.pdf_timeout_s))
    except ValueError as exc:
        hint = "--recipient" if "recipient" in str(exc) else "--week"
        raise typer.BadParameter(str(exc), param_hint=hint) from exc
    finally:
        store.dispose()
    if deliver_:
        deliver(s, cfg.sinks, root)
    failed = any(not d["ok"] for d in s.get("deliveries", []))  # exit 1 so a cron job notices; reports kept
    if json_out:  # the whole district's summary; per recipient under "recipients"; "deliveries" with --deliver
        echo_json(s)
        raise typer.Exit(1 if failed else 0)
    t = Table(title=f"weekly reports {s['week']} (against {s['previous_week']} and four weeks)")
    for c in ("recipient", "events", "headline", "report"):
        t.add_column(c, justify="right" if c == "events" else "left")
    for slug, r in s["recipients"].items():
        if recipient and r["kind"] != "whole" and slug not in recipient:
            continue
        t.add_row(f"{r['name']}\n[dim]{slug}", str(r["total"]), "\n".join(r["headline"][:2]) or "no large change",
                  f"{r['html']}\n{r['pdf'] or '[yellow]no PDF'}")
    print_table(t, console)
    for h in s["headline"]:
        console.print(f"[bold]{h}")
    for w in s.get("warnings", []):
        err.print(f"[yellow]{w}")
    for d in s.get("deliveries", []):
        console.print(f"delivered to {d['sink']}: {len(d['files'])} files" if d["ok"]
                      else f"[red]sink {d['sink']} failed (the reports are kept): {d['error']}")
    console.print(f"reports: {s['index']}")
    if failed:
        raise typer.Exit(1)


@dashboard_app.command("serve")
def dashboard_serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8795,
    db: Annotated[str | None, typer.Option(help="Event store URL (default: params analysis.db).")] = None,
) -> None:
    """Serve the one-screen command center until Ctrl+C (GETs open; reviews need the write token)."""
    import os
    import time

    from cityloop.analysis.dashboard import TOKEN_ENV, Dashboard
    from cityloop.analysis.params import store_url
    from cityloop.analysis.store import EventStore

    root = find_root()
    dash = Dashboard(EventStore(store_url(root, db)), root, port).start()
    console.print(f"dashboard at [bold]{dash.url}[/] (Ctrl+C stops it)")
    where = f"${TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else str(dash.token_path)
    console.print(f"reviews (Confirm / Dismiss) need the write token in {where}; the page asks for it once")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        dash.stop()
