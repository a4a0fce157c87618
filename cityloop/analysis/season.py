"""Play a simulated season (cityloop.scenes.season) through the platform: `run_patrol` over every day's
stream folder into the event store, then the weekly report of the season's last week with its 4-week trend.

The headline drop is *measured*: it is counted from the events the platform raised (the detector, the
tracker and the rules, as on a real street), never from the simulator's truth. The truth is put beside
it so the gap shows: with a real detector, helmeted riders misread as helmetless are false alarms
that do not fall with compliance (there are more helmeted riders once compliance rises), and missed
helmetless riders scale with the true count; the per-week hits and false alarms say which dominates.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.patrol import TruthNoise, run_patrol
from cityloop.analysis.report import week_of, week_start, weekly_report
from cityloop.analysis.store import Event, EventStore
from cityloop.scenes.season import change_pct, read_season

SCENARIO = "helmetless_rider"  # the seed's story: the traffic police's weekly reports
MODEL_NAME = "cityloop-detector"


def season_model(root: Path, name: str = MODEL_NAME) -> str:
    """The registry's production version of `name`, else its latest (a launch model may not pass the gate)."""
    from cityloop.models.store import ModelStore

    store = ModelStore(root, track=False)
    prod = store.production(name)
    return prod.id if prod is not None else store.get(f"{name}:latest").id


def season_events(store: EventStore, season: dict) -> list[Event]:
    """The events a season's play raised in the store (tagged with the season's id), within its weeks."""
    start = week_start(season["weeks"][0])
    until = week_start(season["weeks"][-1]) + timedelta(days=7)
    return [e for e in store.events(start.timestamp(), until.timestamp())
            if (e.extra or {}).get("season") == season["id"]]


def weekly_counts(events: list[Event], weeks: list[str], names: list[str]) -> dict[str, list[int]]:
    """Per scenario, the events of each ISO week (by start time)."""
    c = Counter((e.scenario, week_of(e.start_ts)) for e in events)
    return {s: [c[(s, w)] for w in weeks] for s in names}


def four_weeks_from_store(store: EventStore, last_week: str, scenario: str = SCENARIO, n: int = 4) -> dict:
    """The report's 4-week row of one scenario, counted from every event in the store (what
    weekly_report's `four_weeks` holds once it has one)."""
    end = week_start(last_week) + timedelta(days=7)
    weeks = [week_of((end - timedelta(days=7 * (n - i))).timestamp()) for i in range(n)]
    c = Counter(week_of(e.start_ts) for e in store.events((end - timedelta(days=7 * n)).timestamp(),
                                                          end.timestamp(), scenario=scenario))
    counts = [c[w] for w in weeks]
    return {"scenario": scenario, "weeks": weeks, "counts": counts, "change_pct": change_pct(counts[0], counts[-1])}


def _day_events(store: EventStore, season: dict, stream: dict) -> int:
    """How many events of this season's day `stream` the store holds."""
    day = datetime.fromisoformat(stream["date"]).replace(tzinfo=UTC)
    return sum((e.extra or {}).get("season") == season["id"] and e.extra.get("stream") == stream["folder"]
               for e in store.events(day.timestamp(), (day + timedelta(days=1)).timestamp()))


def _ledger(season_dir: Path) -> dict:
    path = Path(season_dir) / "played.json"
    return json.loads(path.read_text()) if path.exists() else {}


def play_season(root: Path, season_dir: Path, model: str, db_url: str, snapshots: Path | None = None,
                params: AnalysisParams | None = None, noise: TruthNoise | None = None,
                report_out: Path | None = None, top: int = 5, replay: bool = False, pdf: bool = True,
                advance: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Patrol every stream folder of a season with `model` (a registry id, or "truth" with `noise`)
    into the store at `db_url`, then write the weekly report of the season's last week.

    A day already played into this store is skipped unless `replay`, so a second demo on the same
    workspace does not count the season twice: `<season_dir>/played.json` records, per store and season,
    each day's event count, and a day counts as played while the store still holds that many of its events.
    `pdf`: also the reports' PDFs (headless Chromium). `advance(n)`: n frames done.
    Returns the measured and true weekly counts, both drops (helmetless riders, first week -> last),
    their gap in points, per-week hits and false alarms, and the report's headline and path."""
    from cityloop.analysis.params import analysis_params
    from cityloop.scenarios import registry

    season_dir = Path(season_dir)
    season = read_season(season_dir)
    params = params or analysis_params(root)
    store = EventStore(db_url)
    names = registry().names
    quality = {w: Counter() for w in season["weeks"]}
    played, skipped = 0, 0
    ledger = _ledger(season_dir)
    done = ledger.setdefault(db_url, {}).setdefault(season["id"], {})
    try:
        for stream in season["streams"]:
            if not replay and stream["folder"] in done and _day_events(store, season, stream) == done[stream["folder"]]:
                skipped += 1
                if advance:  # the bar counts the season's frames, played now or before
                    advance(season["frames"] // len(season["streams"]))
                continue
            res = run_patrol(root, season_dir / stream["folder"], model, params, db_url, noise=noise,
                             snapshots=snapshots, advance=advance)
            played += 1
            done[stream["folder"]] = len(res.events)
            (season_dir / "played.json").write_text(json.dumps(ledger, indent=1))
            for ev in res.events:
                store.update(ev["id"], extra={**(ev.get("extra") or {}), "season": season["id"],
                                              "stream": stream["folder"]})
            m = (res.metrics or {}).get(SCENARIO)
            if m and stream["week"] in quality:
                quality[stream["week"]].update({k: int(m[k] or 0) for k in ("truth", "raised", "hits",
                                                                            "false_alarms", "duplicates")})
        measured = weekly_counts(season_events(store, season), season["weeks"], names)
        out = Path(report_out) if report_out else Path(root) / "reports" / "weekly"
        report = weekly_report(store, out, season["weeks"][-1], Path(root), top, pdf=pdf)
    finally:
        store.dispose()
    row = next((r for r in report.get("four_weeks") or [] if r["scenario"] == SCENARIO), None)
    source = "report"
    if row is None:  # weekly_report without its 4-week trend: the same counts from the store
        store = EventStore(db_url)
        try:
            row, source = four_weeks_from_store(store, season["weeks"][-1]), "store"
        finally:
            store.dispose()
    first, last = measured[SCENARIO][0], measured[SCENARIO][-1]
    measured_pct, true_pct = change_pct(first, last), season.get("true_change_pct")
    gap = None if measured_pct is None or true_pct is None else round(abs(measured_pct - true_pct), 1)
    return {
        "season": season["id"], "model": model, "weeks": season["weeks"], "streams_played": played,
        "streams_skipped": skipped,
        "measured": measured, "truth": season["truth"],
        "measured_change_pct": measured_pct, "true_change_pct": true_pct,
        "measured_drop_pct": None if measured_pct is None else -measured_pct,
        "true_drop_pct": None if true_pct is None else -true_pct, "gap_points": gap,
        "quality": {w: dict(q) for w, q in quality.items()},  # helmetless: truth, raised, hits, false alarms
        "four_weeks": row, "four_weeks_from": source,
        "headline": report.get("headline", []), "report": report.get("html"),
    }


__all__ = ["play_season", "season_model", "season_events", "weekly_counts", "four_weeks_from_store"]
