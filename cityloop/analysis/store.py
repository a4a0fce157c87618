"""The event store: SQLAlchemy Core over any database URL (SQLite file by default).

Tables: `events` (the Event contract of DESIGN.md) and `deliveries` (one row per event and alert
sink: pending until the sink accepted it). An event is committed before any sink is tried, so a
failing sink never loses it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

META = sa.MetaData()
EVENTS = sa.Table(
    "events", META,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("scenario", sa.String(32), nullable=False, index=True),
    sa.Column("camera_id", sa.String(64), nullable=False, index=True),
    sa.Column("district", sa.String(64)),
    sa.Column("start_ts", sa.Float, nullable=False, index=True),  # unix seconds
    sa.Column("end_ts", sa.Float, nullable=False),
    sa.Column("first_detected_ts", sa.Float, nullable=False),
    sa.Column("alerted_ts", sa.Float),
    sa.Column("model_version", sa.String(128)),
    sa.Column("score", sa.Float),
    sa.Column("boxes", sa.JSON),
    sa.Column("snapshot", sa.String(512)),
    sa.Column("extra", sa.JSON),
)
DELIVERIES = sa.Table(
    "deliveries", META,
    sa.Column("event_id", sa.String(64), sa.ForeignKey("events.id"), primary_key=True),
    sa.Column("sink", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, default="pending", index=True),  # pending | delivered
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("next_try_ts", sa.Float, nullable=False, default=0.0),
    sa.Column("delivered_ts", sa.Float),
)


@dataclass
class Event:
    """A scenario event (DESIGN.md contract); times are unix seconds, `to_dict` adds ISO strings."""

    id: str
    scenario: str
    camera_id: str
    start_ts: float
    end_ts: float
    first_detected_ts: float
    alerted_ts: float | None = None
    model_version: str | None = None
    score: float = 0.0
    boxes: list[list[float]] = field(default_factory=list)
    snapshot: str | None = None
    district: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("start_ts", "end_ts", "first_detected_ts", "alerted_ts"):
            d[f"{k}_iso"] = iso(d[k])
        return d


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def default_url(root: Path, template: str = "sqlite:///{root}/.cityloop/events/events.db") -> str:
    """The configured URL with `{root}` filled in (a SQLite file's folder is created)."""
    url = template.format(root=str(Path(root).resolve()))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


def _create_tables(engine: sa.Engine, attempts: int = 5) -> None:
    """CREATE TABLE IF missing. Edge nodes and patrol workers open one store at once: between one
    process's check and its CREATE another may create the table ("already exists"); the retry's
    check then finds it."""
    for i in range(attempts):
        try:
            META.create_all(engine)
            return
        except sa.exc.OperationalError as e:
            if "already exists" not in str(e) or i == attempts - 1:
                raise
            time.sleep(0.05 * (i + 1))


class EventStore:
    """Events and their deliveries in one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        # SQLite: wait for a lock rather than fail when camera workers write at once
        args = {"timeout": 30} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=args)
        _create_tables(self.engine)

    def add(self, event: Event, sinks: list[str]) -> None:
        """Insert the event and one pending delivery per sink, in one transaction."""
        row = {k: v for k, v in asdict(event).items()}
        with self.engine.begin() as c:
            c.execute(EVENTS.insert().values(**row))
            for s in sinks:
                c.execute(DELIVERIES.insert().values(event_id=event.id, sink=s, state="pending", attempts=0,
                                                     next_try_ts=0.0))

    def update(self, event_id: str, **values: Any) -> None:
        with self.engine.begin() as c:
            c.execute(EVENTS.update().where(EVENTS.c.id == event_id).values(**values))

    def get(self, event_id: str) -> Event | None:
        with self.engine.connect() as c:
            r = c.execute(EVENTS.select().where(EVENTS.c.id == event_id)).mappings().first()
        return Event(**r) if r else None

    def events(self, since: float | None = None, until: float | None = None, scenario: str | None = None,
               camera_id: str | None = None, limit: int | None = None, newest_first: bool = False) -> list[Event]:
        """Events whose start falls in [since, until), optionally of one scenario or camera."""
        q = EVENTS.select()
        if since is not None:
            q = q.where(EVENTS.c.start_ts >= since)
        if until is not None:
            q = q.where(EVENTS.c.start_ts < until)
        if scenario:
            q = q.where(EVENTS.c.scenario == scenario)
        if camera_id:
            q = q.where(EVENTS.c.camera_id == camera_id)
        q = q.order_by(EVENTS.c.start_ts.desc() if newest_first else EVENTS.c.start_ts)
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as c:
            return [Event(**r) for r in c.execute(q).mappings()]

    def pending(self, now: float | None = None) -> list[tuple[Event, str, int]]:
        """(event, sink, attempts) for deliveries due now."""
        now = time.time() if now is None else now
        q = (sa.select(EVENTS, DELIVERIES.c.sink, DELIVERIES.c.attempts)
             .join(DELIVERIES, DELIVERIES.c.event_id == EVENTS.c.id)
             .where(DELIVERIES.c.state == "pending", DELIVERIES.c.next_try_ts <= now))
        with self.engine.connect() as c:
            rows = c.execute(q).mappings().all()
        return [(Event(**{k: r[k] for k in EVENTS.c.keys()}), r["sink"], r["attempts"]) for r in rows]

    def mark(self, event_id: str, sink: str, ok: bool, error: str | None = None, retry_in_s: float = 0.0) -> None:
        """Record one delivery attempt."""
        now = time.time()
        vals: dict[str, Any] = {"attempts": DELIVERIES.c.attempts + 1, "last_error": error}
        vals.update({"state": "delivered", "delivered_ts": now} if ok else {"next_try_ts": now + retry_in_s})
        with self.engine.begin() as c:
            c.execute(DELIVERIES.update().where(DELIVERIES.c.event_id == event_id, DELIVERIES.c.sink == sink)
                      .values(**vals))

    def deliveries(self, event_id: str | None = None) -> list[dict[str, Any]]:
        q = DELIVERIES.select()
        if event_id:
            q = q.where(DELIVERIES.c.event_id == event_id)
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def dispose(self) -> None:
        self.engine.dispose()


def event_json(e: Event, text: str | None = None) -> str:
    """The alert body sinks send (stable key order, so a signature is reproducible); `text`: the
    scenario's alert text for people (analysis.alerts.alert_text)."""
    d = e.to_dict()
    if text is not None:
        d["text"] = text
    return json.dumps(d, sort_keys=True, default=str)
