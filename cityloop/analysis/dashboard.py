"""The command center: one screen (1920×1080, no scrolling) a city officer keeps open. A schematic map
of the district's cameras coloured by open events and edge health, live counts per scenario with
24-hour and 4-week sparklines, the latest alerts with their snapshots and Confirm / Dismiss buttons,
each camera's model version and edge node, the loop's accuracy curve (one line per lineage) and the
time from an event's start to its discovery.

The server (Starlette under uvicorn, 127.0.0.1; cityloop.core.web) sends a static page and a static
script; the script polls `/api/state` every few seconds and redraws, so the page never reloads and
no inline script is needed (the CSP allows scripts, styles, fetches and images from this origin only).

    GET  /                        the page          GET /static/command.js, command.css  its script, style
    GET  /api/state[?as_of=ISO]   what it shows     GET /snapshot/<event id>             an event's JPEG
    POST /api/events/<id>/review  {"verdict": "confirmed"|"dismissed", "note": "..."}  (Bearer token)

The screen's clock: the demo's events are simulated in past weeks, so "the last 24 hours" of the wall
clock would show nothing. `as_of` is now while the latest event is less than a day old, else the latest
event's time, and the page says "replay as of …".

GET routes are open and read-only. The one write route (a review) needs `Authorization: Bearer <token>`;
the token comes from `CITYLOOP_DASHBOARD_TOKEN`, else `<root>/.cityloop/dashboard/token` (0600, made on the
first start). The page asks for it once and keeps it in the tab's sessionStorage.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from cityloop.analysis.figures import accuracy_curve
from cityloop.analysis.store import EVENTS, EventStore, iso
from cityloop.core.web import HttpServer, Limits, json_response, read_json, require_bearer, token_from
from cityloop.core.web import make_app as web_app
from cityloop.scenarios import registry

POLL_S = 3  # the page asks for a new state this often
ALERTS = 20  # latest alerts sent to the page (never every event)
DISCOVERY_EVENTS = 500  # time to discovery: the median over this many latest events
OPEN_S = 15 * 60  # an event that ended within this of the screen's clock is still "open" on the map
DAY, HOUR = 86400.0, 3600.0
WEEKS = 4
TOKEN_ENV = "CITYLOOP_DASHBOARD_TOKEN"
TOKEN_FILE = Path(".cityloop") / "dashboard" / "token"
CURVE_TTL_S = 30.0  # the registry changes once a loop round: read it at most this often
LIMITS = Limits(max_body=4096)  # GETs have no body; a review is a few hundred bytes of JSON
STATIC = {"command.js": "text/javascript", "command.css": "text/css"}
# scripts, styles, fetches and images from this origin only; no inline script or style, no frames, no forms
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# ------------------------------------------------------------------ the pieces of the state
def node_status(root: Path) -> list[dict[str, Any]]:
    """Edge nodes from `.cityloop/edge/*/status.json`: version, fps, health (down when the heartbeat is stale)."""
    out, now = [], time.time()
    for f in sorted(Path(root).glob(".cityloop/edge/*/status.json")):
        try:
            s = json.loads(f.read_text())
        except (OSError, ValueError):
            out.append({"name": f.parent.name, "health": "unreadable status", "streams": []})
            continue
        age = now - float(s.get("heartbeat") or 0)
        healthy = age <= float(s.get("stale_s") or 10) and s.get("state") not in ("stopped", "failed")
        fps = s.get("fps")
        out.append({"name": s.get("name", f.parent.name), "model_version": s.get("model_version"),
                    "state": s.get("state"), "fps": round(float(fps), 1) if isinstance(fps, (int, float)) else None,
                    "errors": s.get("errors"), "heartbeat_age_s": round(age, 1), "health": "up" if healthy else "down",
                    "streams": s.get("streams") or []})
    return out


def _stream_camera(spec: str) -> str:
    """`cam-3=/data/cam3.mp4` -> cam-3; `/data/cam3` -> cam3 (as the edge node names its cameras)."""
    return spec.split("=", 1)[0] if "=" in spec else Path(spec).stem or spec


def camera_rows(store: EventStore, nodes: list[dict[str, Any]], as_of: float | None = None) -> list[dict[str, Any]]:
    """Per camera: district, the model version of its latest event, its event count, the node that streams
    it (and that node's health and version). Two grouped queries, whatever the number of events."""
    upto = EVENTS.c.start_ts <= as_of if as_of is not None else sa.true()
    counts = (sa.select(EVENTS.c.camera_id, sa.func.count().label("n"), sa.func.max(EVENTS.c.start_ts).label("last"))
              .where(upto).group_by(EVENTS.c.camera_id).subquery())
    latest = (sa.select(EVENTS.c.camera_id, EVENTS.c.district, EVENTS.c.model_version, counts.c.n, counts.c.last)
              .join(counts, sa.and_(EVENTS.c.camera_id == counts.c.camera_id, EVENTS.c.start_ts == counts.c.last)))
    cams: dict[str, dict[str, Any]] = {}
    with store.engine.connect() as c:
        for r in c.execute(latest):
            cams[r.camera_id] = {"camera_id": r.camera_id, "district": r.district, "events": r.n,
                                 "model_version": r.model_version, "last_event": _iso(r.last),
                                 "last_ts": round(r.last)}
    for n in nodes:
        for spec in n.get("streams", []):
            cam = _stream_camera(str(spec))
            c = cams.setdefault(cam, {"camera_id": cam, "district": None, "events": 0, "last_event": None,
                                      "last_ts": None})
            c.update(node=n["name"], health=n["health"],
                     model_version=n.get("model_version") or c.get("model_version"))
    return sorted(cams.values(), key=lambda c: c["camera_id"])


def lineages(curve: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The accuracy curve split by lineage (the `name` of `name:vN`), each in version order: the loop's
    arms (active, random) are separate lines, not one line running v1…v6 then v1…v5."""
    out: dict[str, list[dict[str, Any]]] = {}
    for c in curve:
        name, _, ver = str(c["id"]).rpartition(":")
        name, ver = (name, ver) if name else (ver, "")
        digits = ver.lstrip("v")
        out.setdefault(name, []).append({"id": c["id"], "version": ver, "n": int(digits) if digits.isdigit() else 0,
                                         "stage": c.get("stage"), "mAP50": _round(c.get("mAP50"), 3)})
    return [{"name": k, "points": sorted(v, key=lambda p: p["n"])} for k, v in sorted(out.items())]


def _iso(ts: float | None) -> str | None:
    """ISO time to the second (the page shows no microseconds)."""
    return None if ts is None else iso(round(ts))


def _round(v: Any, digits: int) -> float | None:
    """A number the page can show as is (no 0.20889268441835004), None when there is none."""
    return round(float(v), digits) if isinstance(v, (int, float)) and math.isfinite(v) else None


def fmt_seconds(s: float | None) -> str:
    """12.3 s, 4 min 05 s, 2 h 10 min: a duration a person reads at a glance."""
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def zone(name: str | None, default: ZoneInfo) -> ZoneInfo:
    """The named timezone, or `default` when it has none or an unknown one."""
    if not name:
        return default
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        return default


def local_time(ts: float | None, tz: ZoneInfo) -> str | None:
    """`2026-10-14 08:12:03 CST`: the camera's wall clock with its zone's abbreviation."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, UTC).astimezone(tz)
    return dt.strftime("%Y-%m-%d %H:%M:%S ") + (dt.tzname() or tz.key)


def camera_timezones(root: Path) -> dict[str, str]:
    """camera_id -> timezone from the cameras.json of the patrol's stream folder (params `stack.patrol_streams`)
    where a camera's entry carries `timezone`; empty when there is none."""
    try:
        from cityloop.core.settings import load_params

        folder = (load_params(Path(root)).get("stack") or {}).get("patrol_streams")
        path = Path(root) / str(folder) / "cameras.json" if folder else None
        cams = json.loads(path.read_text()) if path and path.is_file() else []
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
    return {str(c["camera_id"]): str(c["timezone"]) for c in cams
            if isinstance(c, dict) and c.get("camera_id") and c.get("timezone")}


def default_timezone(root: Path) -> str:
    """params `analysis.timezone` (the district's zone), Asia/Shanghai when params.yaml has none."""
    from cityloop.analysis.params import AnalysisParams, analysis_params

    try:
        return analysis_params(Path(root)).timezone
    except (OSError, ValueError):
        return AnalysisParams().timezone


def screen_clock(store: EventStore, now: float | None = None, as_of: float | None = None) -> tuple[float, bool]:
    """(the screen's clock, replaying?): `as_of` when given; now while the latest event is under a day old;
    else the latest event's time (a replay of simulated weeks would otherwise show an empty last day)."""
    now = time.time() if now is None else now
    if as_of is not None:
        return as_of, abs(now - as_of) > 60
    with store.engine.connect() as c:
        latest = c.execute(sa.select(sa.func.max(EVENTS.c.start_ts), sa.func.max(EVENTS.c.end_ts))).one()
    last = max((v for v in latest if v is not None), default=None)
    if last is None or now - last <= DAY:
        return now, False
    return last, True


# ------------------------------------------------------------------ the state
def state(store: EventStore, root: Path, edge_root: Path | None = None, limit: int = ALERTS,
          as_of: float | None = None, now: float | None = None, timezone: str | None = None,
          camera_tz: Mapping[str, str] | None = None, curve: list[dict[str, Any]] | None = None,
          open_s: float = OPEN_S) -> dict[str, Any]:
    """Everything the page shows, as of the screen's clock: aggregates from grouped queries and one pass
    over the last 4 weeks' light columns (no boxes, no extras), plus the latest `limit` alerts in full."""
    clock, replay = screen_clock(store, now, as_of)
    tz_name = timezone or default_timezone(root)
    tz = zone(tz_name, ZoneInfo("UTC"))
    cam_tz = dict(camera_tz if camera_tz is not None else camera_timezones(root))
    nodes = node_status(edge_root or root)
    cameras = camera_rows(store, nodes, clock)
    scen = registry().scenarios

    days = WEEKS * 7
    hourly: dict[str, list[int]] = {}
    daily: dict[str, list[int]] = {}
    open_by: dict[str, int] = {}
    cam_open: dict[str, int] = {}
    cam_day: dict[str, int] = {}
    upto, ts = EVENTS.c.start_ts <= clock, EVENTS.c.start_ts
    n = sa.func.count().label("n")
    with store.engine.connect() as c:
        # counted by the database, a few hundred rows back whatever the number of events: per scenario its
        # daily bins of the last 4 weeks (bin -1: older), whose sums are its all-time total (up to the clock) ...
        totals: dict[str, tuple[int, float | None]] = {}
        b = sa.case((ts > clock - days * DAY, _floor(store, (clock - ts) / DAY)), else_=-1).label("b")
        for r in c.execute(sa.select(EVENTS.c.scenario, b, n, sa.func.max(ts).label("last")).where(upto)
                           .group_by(EVENTS.c.scenario, b)):
            count, last = totals.get(r.scenario, (0, None))
            totals[r.scenario] = (count + r.n, max(last or r.last, r.last))
            if 0 <= r.b < days:
                daily.setdefault(r.scenario, [0] * days)[days - 1 - int(r.b)] += r.n
        # ... and its hourly bins of the last day
        h = _floor(store, (clock - ts) / HOUR).label("b")
        for r in c.execute(sa.select(EVENTS.c.scenario, h, n).where(ts > clock - DAY, upto)
                           .group_by(EVENTS.c.scenario, h)):
            if 0 <= r.b < 24:
                hourly.setdefault(r.scenario, [0] * 24)[23 - int(r.b)] += r.n
        for r in c.execute(sa.select(EVENTS.c.scenario, EVENTS.c.camera_id, n)
                           .where(ts > clock - days * DAY, upto, EVENTS.c.end_ts >= clock - open_s)
                           .group_by(EVENTS.c.scenario, EVENTS.c.camera_id)):
            open_by[r.scenario] = open_by.get(r.scenario, 0) + r.n
            cam_open[r.camera_id] = cam_open.get(r.camera_id, 0) + r.n
        cam_day = {r.camera_id: r.n for r in c.execute(
            sa.select(EVENTS.c.camera_id, n).where(ts > clock - DAY, upto).group_by(EVENTS.c.camera_id))}
        # time to discovery over the latest DISCOVERY_EVENTS events of the last 4 weeks
        recent = c.execute(sa.select(EVENTS.c.first_detected_ts - ts, EVENTS.c.alerted_ts - ts)
                           .where(ts > clock - days * DAY, upto).order_by(ts.desc()).limit(DISCOVERY_EVENTS)).all()
    detect = [max(0.0, d) for d, _ in recent if d is not None]
    alert = [max(0.0, a) for _, a in recent if a is not None]

    scenarios = []
    for name, sc in scen.items():
        n, last = totals.get(name, (0, None))
        h, d = hourly.get(name, [0] * 24), daily.get(name, [0] * days)
        scenarios.append({"id": name, "scenario": sc.title, "title": sc.title, "agency": sc.agency, "events": n,
                          "last_event": local_time(last, tz), "open": open_by.get(name, 0),
                          "last_24h": sum(h), "last_4w": sum(d), "spark_24h": h, "spark_4w": d})
    for name in sorted(set(totals) - set(scen)):  # events of a scenario no longer registered: still counted
        n, last = totals[name]
        h, d = hourly.get(name, [0] * 24), daily.get(name, [0] * days)
        scenarios.append({"id": name, "scenario": name, "title": name, "agency": None, "events": n,
                          "last_event": local_time(last, tz), "open": open_by.get(name, 0),
                          "last_24h": sum(h), "last_4w": sum(d), "spark_24h": h, "spark_4w": d})

    for c in cameras:
        c["open"], c["last_24h"] = cam_open.get(c["camera_id"], 0), cam_day.get(c["camera_id"], 0)
        c["status"] = "open" if c["open"] else "recent" if c["last_24h"] else "quiet"
        c.setdefault("health", "unknown")
        c.setdefault("node", None)
        c["timezone"] = zone(cam_tz.get(c["camera_id"]), tz).key
        c["last_local"] = local_time(c.get("last_ts"), zone(cam_tz.get(c["camera_id"]), tz))

    alerts = []
    for e in store.events(until=clock + 1e-3, limit=limit, newest_first=True):
        extra = e.extra or {}
        etz = zone(cam_tz.get(e.camera_id) or extra.get("timezone"), tz)
        review = (extra.get("review") if isinstance(extra.get("review"), dict) else None) or {}
        alerts.append({
            "id": e.id, "scenario": e.scenario, "scenario_title": scen[e.scenario].title if e.scenario in scen
            else e.scenario, "camera_id": e.camera_id, "district": e.district, "model_version": e.model_version,
            "score": _round(e.score, 2), "start_local": local_time(e.start_ts, etz), "timezone": etz.key,
            "start_ts_iso": _iso(e.start_ts), "open": e.end_ts >= clock - open_s,
            "snapshot": f"/snapshot/{e.id}" if e.snapshot else None,
            "review": {"verdict": review.get("verdict"), "by": review.get("by"),
                       "at": local_time(review.get("ts"), etz) if isinstance(review.get("ts"), (int, float))
                       else None} if review else None})

    curve = accuracy_curve(root) if curve is None else curve
    med_detect = statistics.median(detect) if detect else None
    med_alert = statistics.median(alert) if alert else None
    districts = sorted({c["district"] or "unassigned" for c in cameras})
    return {
        "as_of": _iso(clock), "as_of_local": local_time(clock, tz), "replay": replay, "timezone": tz.key,
        "generated": _iso(time.time()), "poll_s": POLL_S, "open_min": round(open_s / 60),
        "events": alerts, "scenarios": scenarios, "cameras": cameras, "districts": districts,
        "nodes": [{k: v for k, v in n.items() if k != "streams"} for n in nodes],
        "accuracy": [{"id": c["id"], "stage": c.get("stage"), "mAP50": _round(c.get("mAP50"), 3)} for c in curve],
        "lineages": lineages(curve),
        "discovery": {"events": len(detect), "median_detect_s": _round(med_detect, 1),
                      "median_alert_s": _round(med_alert, 1), "detect_text": fmt_seconds(med_detect),
                      "alert_text": fmt_seconds(med_alert), "window": f"last {WEEKS} weeks"},
        "totals": {"events": sum(n for n, _ in totals.values()), "open": sum(open_by.values()),
                   "last_24h": sum(s["last_24h"] for s in scenarios)},
    }


def _floor(store: EventStore, expr: Any) -> Any:
    """floor() of a non-negative SQL number: SQLite's CAST truncates (it may lack floor()); elsewhere
    (PostgreSQL's CAST rounds) floor() itself."""
    if store.engine.dialect.name == "sqlite":
        return sa.cast(expr, sa.Integer)
    return sa.cast(sa.func.floor(expr), sa.Integer)


def parse_as_of(text: str | None) -> float | None:
    """`?as_of=2026-10-14T08:00:00+08:00` (no zone: UTC) as unix seconds; 400 when it is not a time."""
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(400, f"as_of must be an ISO time, not {text[:40]!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=1920,height=1080"><title>cityloop command center</title>
<link rel="stylesheet" href="/static/command.css"><script src="/static/command.js" defer></script></head>
<body><div id="screen">
<header><h1>cityloop <span>command center</span></h1><div id="clock">loading…</div>
<div id="totals"></div><div id="discovery"></div><div id="status">connecting…</div></header>
<section id="map-panel" class="panel"><h2>Cameras of the district <small id="map-legend"></small></h2>
<div id="map"></div></section>
<section id="cameras-panel" class="panel"><h2>Cameras: model version and edge node</h2>
<div id="cameras"></div></section>
<section id="scenarios-panel" class="panel"><h2>Events per scenario <small>last 24 h (hourly) · last 4 weeks (daily)
</small></h2><div id="scenarios"></div></section>
<section id="accuracy-panel" class="panel"><h2>The loop's accuracy <small>benchmark mAP50 per model version, one line
per lineage</small></h2><div id="accuracy"></div></section>
<section id="alerts-panel" class="panel"><h2>Latest alerts</h2><div id="alerts"></div></section>
</div>
<div id="token-box" hidden><p>Reviews need the dashboard's write token (<code>CITYLOOP_DASHBOARD_TOKEN</code> or
<code>.cityloop/dashboard/token</code> in the workspace). It stays in this tab only.</p>
<input id="token-input" type="password" autocomplete="off" placeholder="token">
<button id="token-ok" type="button">Use token</button><button id="token-cancel" type="button">Cancel</button></div>
</body></html>"""


# ------------------------------------------------------------------ the server
class Dashboard:
    """The server on 127.0.0.1: open read-only GET routes and one review route behind a bearer token;
    `start()` serves from a thread (tests, the CLI), `stop()` closes it."""

    def __init__(self, store: EventStore, root: Path, port: int = 0, edge_root: Path | None = None,
                 token: str | None = None, timezone: str | None = None) -> None:
        self.store, self.root, self.edge_root = store, Path(root), edge_root
        self.timezone = timezone or default_timezone(self.root)
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"analysis.timezone: unknown timezone {self.timezone!r} "
                             "(an IANA name: Asia/Shanghai, UTC)") from None
        self.camera_tz = camera_timezones(self.root)
        self.token_path = self.root / TOKEN_FILE
        self.token = token or token_from(TOKEN_ENV, self.token_path, create=True)
        self._curve: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._curve_lock = threading.Lock()
        routes = [Route("/", self._page), Route("/index.html", self._page), Route("/api/state", self._api),
                  Route("/static/{name}", self._static), Route("/snapshot/{event_id}", self._snapshot),
                  Route("/api/events/{event_id}/review", self._review, methods=["POST"])]
        self.server = HttpServer(web_app(routes, LIMITS, {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
                                                          "Referrer-Policy": "no-referrer"}),
                                 "127.0.0.1", port, LIMITS, name="dashboard")
        self.port = self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def curve(self) -> list[dict[str, Any]]:
        """The registry's accuracy curve, read at most every CURVE_TTL_S (it changes once a loop round;
        reading every version's metrics on every poll would spend the API's time budget)."""
        with self._curve_lock:
            at, curve = self._curve
            if time.monotonic() - at > CURVE_TTL_S or not at:
                curve = accuracy_curve(self.root)
                self._curve = (time.monotonic(), curve)
            return curve

    def state(self, as_of: float | None = None) -> dict[str, Any]:
        return state(self.store, self.root, self.edge_root, as_of=as_of, timezone=self.timezone,
                     camera_tz=self.camera_tz, curve=self.curve())

    def _page(self, request: Request) -> Response:
        return HTMLResponse(PAGE)

    def _static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return PlainTextResponse("not found", 404)
        body = resources.files("cityloop.analysis").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    def _api(self, request: Request) -> Response:
        as_of = parse_as_of(request.query_params.get("as_of"))
        return _answer(lambda: json_response(self.state(as_of), default=str))

    def _snapshot(self, request: Request) -> Response:
        def find() -> Response:
            ev = self.store.get(request.path_params["event_id"])
            if ev is None or not ev.snapshot or not Path(ev.snapshot).is_file():
                return PlainTextResponse("no snapshot", 404)
            return Response(Path(ev.snapshot).read_bytes(), media_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=3600"})
        return _answer(find)

    async def _review(self, request: Request) -> Response:
        """Confirm or dismiss an alert (cityloop.analysis.review): the token first, before the body is read."""
        from cityloop.analysis.review import ReviewError, review_alert

        require_bearer(request, self.token or "", "dashboard token")
        body = await read_json(request)
        if not isinstance(body, dict):
            raise HTTPException(400, 'body must be {"verdict": "confirmed"|"dismissed", "note": "..."}')
        event_id = request.path_params["event_id"]
        verdict, note = body.get("verdict"), body.get("note") or ""
        if not isinstance(verdict, str) or not isinstance(note, str):
            raise HTTPException(400, "verdict and note must be text")

        def run() -> dict[str, Any]:
            if self.store.get(event_id) is None:
                raise HTTPException(404, f"no event {event_id[:80]!r}")
            try:
                return review_alert(self.store, self.root, event_id, verdict, by="dashboard", note=note)
            except ReviewError as exc:
                gone = self.store.get(event_id) is None
                raise HTTPException(404 if gone else 400, str(exc)) from None

        return json_response(await run_in_threadpool(run), default=str)

    def start(self) -> Dashboard:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()


def _answer(make: Callable[[], Response]) -> Response:
    """The response, or a 500 that says why (the server keeps serving)."""
    try:
        return make()
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - answer 500, keep serving
        return PlainTextResponse(f"dashboard error: {exc}", 500)
