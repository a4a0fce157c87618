"""`cityloop alerts list | review`: the events people act on, and their verdicts (mounted by cityloop.cli).

A dismissed alert's frame goes to the center's inbox as a hard example (reason `dismissed alert`);
the next labeling round takes it before any selection (cityloop.analysis.review)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cityloop.cli.output import JsonOption, echo_json, print_table
from cityloop.core.settings import find_root

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
alerts_app = typer.Typer(help="Alerts: list them, confirm or dismiss them.", no_args_is_help=True)
DbOption = Annotated[str | None, typer.Option(help="Event store URL (default: params analysis.db).")]


@alerts_app.command("list")
def alerts_list(
    scenario: Annotated[str | None, typer.Option(help="Only this scenario (its id, e.g. helmetless_rider).")] = None,
    camera: Annotated[str | None, typer.Option(help="Only this camera.")] = None,
    unreviewed: Annotated[bool, typer.Option(help="Only alerts nobody confirmed or dismissed yet.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 20,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """The newest alerts with their review state."""
    from cityloop.analysis.params import store_url
    from cityloop.analysis.review import review_of
    from cityloop.analysis.store import EventStore
    from cityloop.scenarios import registry

    store = EventStore(store_url(find_root(), db))
    try:  # unreviewed: filtered after the query, so read more than `limit` rows
        events = store.events(scenario=scenario, camera_id=camera, newest_first=True,
                              limit=None if unreviewed else limit)
    finally:
        store.dispose()
    if unreviewed:
        events = [e for e in events if review_of(e.extra) is None][:limit]
    rows = [{"id": e.id, "scenario": e.scenario, "camera_id": e.camera_id, "district": e.district,
             "start": datetime.fromtimestamp(e.start_ts, UTC).strftime("%Y-%m-%d %H:%M:%S"),
             "score": round(e.score or 0.0, 2), "model_version": e.model_version,
             "review": (review_of(e.extra) or {}).get("verdict")} for e in events]
    if json_out:
        echo_json(rows)
        return
    titles = {n: sc.title for n, sc in registry().scenarios.items()}
    t = Table(title="alerts, newest first (times UTC)")
    for c in ("id", "scenario", "camera", "district", "start", "score", "model", "review"):
        t.add_column(c, justify="right" if c == "score" else "left")
    for r in rows:
        t.add_row(r["id"], titles.get(r["scenario"], r["scenario"]), r["camera_id"], r["district"] or "—",
                  r["start"], f"{r['score']:.2f}", r["model_version"] or "—", r["review"] or "—")
    print_table(t, console)


@alerts_app.command("review")
def alerts_review(
    event_id: Annotated[str, typer.Argument(help="The event's id (cityloop alerts list).")],
    dismiss: Annotated[bool, typer.Option("--dismiss/--confirm", help="Dismiss (a false alarm: its frame goes "
                                          "to the next labeling round) or confirm the alert.")],
    note: Annotated[str, typer.Option(help="Why, in a few words.")] = "",
    by: Annotated[str, typer.Option(help="Who reviews (recorded with the verdict).")] = "cli",
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Confirm or dismiss one alert."""
    from cityloop.analysis.params import store_url
    from cityloop.analysis.review import ReviewError, review_alert
    from cityloop.analysis.store import EventStore

    root = find_root()
    store = EventStore(store_url(root, db))
    try:
        out = review_alert(store, root, event_id, "dismissed" if dismiss else "confirmed", by=by, note=note)
    except ReviewError as exc:
        err.print(f"[red]alerts review: {exc}")
        raise typer.Exit(1) from exc
    finally:
        store.dispose()
    if json_out:
        echo_json(out)
        return
    console.print(f"{out['event_id']}: {out['verdict']} by {out['by']}")
    if out["hard_example"]:
        console.print(f"its frame {out['hard_example'][:12]}… is in the inbox (reason: dismissed alert); the next "
                      "hard-examples ingest pools it and the next labeling round takes it first")
    elif out["hard_example_error"]:
        err.print("[yellow]the verdict is recorded, but the frame did not reach the inbox: "
                  f"{out['hard_example_error']}")
