"""The one-screen dashboard: live events, per-camera model versions and health, the loop's
accuracy curve. A small read-only server (Starlette under uvicorn, 127.0.0.1; cityloop.core.web)
over the event store, the edge nodes' status files and the registry; the page reloads itself every
few seconds. It has no route that changes anything; one that did would need a token.

    /            the page          /api/state   the same as JSON      /snapshot/<event id>   its JPEG
"""

from __future__ import annotations

import html
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from cityloop.analysis.figures import accuracy_curve
from cityloop.analysis.store import EventStore, iso
from cityloop.core.web import HttpServer, Limits, json_response
from cityloop.core.web import make_app as web_app
from cityloop.scenarios import registry

REFRESH_S = 5
LIMITS = Limits(max_body=0)  # read-only: no request has a body
# the page has no script and loads nothing from elsewhere: inline styles, its own snapshots, nothing else
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")


def node_status(root: Path) -> list[dict[str, Any]]:
    """Edge nodes from `.cityloop/edge/*/status.json`: version, fps, health (down when the heartbeat is stale)."""
    out, now = [], time.time()
    for f in sorted(Path(root).glob(".cityloop/edge/*/status.json")):
        try:
            s = json.loads(f.read_text())
        except (OSError, ValueError):
            out.append({"name": f.parent.name, "health": "unreadable status"})
            continue
        age = now - float(s.get("heartbeat") or 0)
        healthy = age <= float(s.get("stale_s") or 10) and s.get("state") not in ("stopped", "failed")
        out.append({"name": s.get("name", f.parent.name), "model_version": s.get("model_version"),
                    "state": s.get("state"), "fps": s.get("fps"), "errors": s.get("errors"),
                    "heartbeat_age_s": round(age, 1), "health": "up" if healthy else "down",
                    "streams": s.get("streams") or []})
    return out


def camera_rows(store: EventStore, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per camera: the model version of its latest event, its event count, the node that streams it."""
    cams: dict[str, dict[str, Any]] = {}
    for e in store.events():
        c = cams.setdefault(e.camera_id, {"camera_id": e.camera_id, "district": e.district, "events": 0})
        c["events"] += 1
        c["model_version"], c["last_event"] = e.model_version, iso(e.start_ts)
    for n in nodes:
        for spec in n.get("streams", []):
            cam = spec.split("=", 1)[0] if "=" in spec else Path(spec).stem or spec
            c = cams.setdefault(cam, {"camera_id": cam, "events": 0})
            c.update(node=n["name"], health=n["health"],
                     model_version=n.get("model_version") or c.get("model_version"))
    return sorted(cams.values(), key=lambda c: c["camera_id"])


def scenario_rows(store: EventStore) -> list[dict[str, Any]]:
    """Every registered scenario (human name, agency) with its event count and its latest event."""
    evs = store.events()
    n = Counter(e.scenario for e in evs)
    last: dict[str, float] = {}
    for e in evs:
        last[e.scenario] = max(last.get(e.scenario, 0.0), e.start_ts)
    return [{"scenario": sc.title, "id": name, "agency": sc.agency, "events": n[name],
             "last_event": datetime.fromtimestamp(last[name], UTC).strftime("%Y-%m-%d %H:%M") if name in last else None}
            for name, sc in registry().scenarios.items()]


def state(store: EventStore, root: Path, edge_root: Path | None = None, limit: int = 20) -> dict[str, Any]:
    """Everything the page shows."""
    nodes = node_status(edge_root or root)
    events = [e.to_dict() for e in store.events(limit=limit, newest_first=True)]
    titles = {name: sc.title for name, sc in registry().scenarios.items()}
    for e in events:
        e["scenario_title"] = titles.get(e["scenario"], e["scenario"])
    return {"events": events, "nodes": nodes, "cameras": camera_rows(store, nodes), "scenarios": scenario_rows(store),
            "accuracy": accuracy_curve(root), "generated": iso(time.time())}


def _svg_curve(curve: list[dict[str, Any]]) -> str:
    pts = [(c["id"], c["mAP50"]) for c in curve if c.get("mAP50") is not None]
    if not pts:
        return "<p><em>no evaluated model version yet</em></p>"
    w, h, pad = 420, 160, 30
    step = (w - 2 * pad) / max(1, len(pts) - 1)
    xy = [(pad + i * step, h - pad - v * (h - 2 * pad)) for i, (_, v) in enumerate(pts)]
    dots = "".join(f'<circle cx="{x:.0f}" cy="{y:.0f}" r="3"/><text x="{x:.0f}" y="{h - 8}" font-size="10" '
                   f'text-anchor="middle">{html.escape(i.split(":")[-1])}</text><text x="{x:.0f}" y="{y - 6:.0f}" '
                   f'font-size="10" text-anchor="middle">{v:.2f}</text>' for (x, y), (i, v) in zip(xy, pts))
    line = " ".join(f"{x:.0f},{y:.0f}" for x, y in xy)
    return (f'<svg id="accuracy" width="{w}" height="{h}"><polyline points="{line}" fill="none" stroke="#1f6feb" '
            f'stroke-width="2"/>{dots}</svg>')


def _rows(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in (r.get(c, "") for c in cols)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(s: dict[str, Any]) -> str:
    """The page (all values escaped)."""
    def esc(rows: list[dict], cols: list[str]) -> list[dict]:
        return [{c: html.escape("—" if r.get(c) is None else str(r.get(c))) for c in cols} for r in rows]

    ev_cols = ["start_ts_iso", "scenario_title", "camera_id", "district", "model_version", "score"]
    events = esc(s["events"], ev_cols)
    for row, e in zip(events, s["events"]):
        row["snapshot"] = f'<a href="/snapshot/{html.escape(e["id"])}">view</a>' if e.get("snapshot") else "—"
        row["start_ts_iso"] = row["start_ts_iso"][:19].replace("T", " ")
    cam_cols = ["camera_id", "district", "model_version", "node", "health", "events", "last_event"]
    sc_cols = ["scenario", "agency", "events", "last_event"]
    node_cols = ["name", "model_version", "state", "health", "fps", "errors", "heartbeat_age_s"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">
<title>cityloop dashboard</title><style>body{{font-family:sans-serif;margin:12px;font-size:13px}}
.grid{{display:grid;grid-template-columns:3fr 2fr;gap:12px}}table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ddd;padding:2px 6px}}th{{background:#f3f4f6;text-align:left}}h2{{font-size:15px;margin:6px 0}}
</style></head><body>
<h1 style="font-size:18px">cityloop — live events <small>({html.escape(s['generated'])})</small></h1>
<div class="grid"><div><h2>Live events</h2><div id="events">{_rows(events, [*ev_cols, 'snapshot'])}</div></div>
<div><h2>Scenarios</h2><div id="scenarios">{_rows(esc(s['scenarios'], sc_cols), sc_cols)}</div>
<h2>Cameras: model versions and health</h2><div id="cameras">{_rows(esc(s['cameras'], cam_cols), cam_cols)}</div>
<h2>Edge nodes</h2><div id="nodes">{_rows(esc(s['nodes'], node_cols), node_cols)}</div>
<h2>The loop's accuracy (benchmark mAP50 per model version)</h2>{_svg_curve(s['accuracy'])}
{_rows(esc(s['accuracy'], ['id', 'stage', 'mAP50']), ['id', 'stage', 'mAP50'])}</div></div></body></html>"""


class Dashboard:
    """The server (Starlette under uvicorn on 127.0.0.1, read-only: GET routes only, so it needs no
    token); `start()` in a thread (tests, the CLI), `stop()` closes it."""

    def __init__(self, store: EventStore, root: Path, port: int = 0, edge_root: Path | None = None) -> None:
        self.store, self.root, self.edge_root = store, Path(root), edge_root
        routes = [Route("/", self._page), Route("/index.html", self._page), Route("/api/state", self._api),
                  Route("/snapshot/{event_id}", self._snapshot)]
        self.server = HttpServer(web_app(routes, LIMITS, {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
                                                          "Referrer-Policy": "no-referrer"}),
                                 "127.0.0.1", port, LIMITS, name="dashboard")
        self.port = self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _page(self, request: Request) -> Response:
        return _answer(lambda: HTMLResponse(render(self.state())))

    def _api(self, request: Request) -> Response:
        return _answer(lambda: json_response(self.state(), default=str))

    def _snapshot(self, request: Request) -> Response:
        def find() -> Response:
            ev = self.store.get(request.path_params["event_id"])
            if ev is None or not ev.snapshot or not Path(ev.snapshot).is_file():
                return PlainTextResponse("no snapshot", 404)
            return Response(Path(ev.snapshot).read_bytes(), media_type="image/jpeg")
        return _answer(find)

    def state(self) -> dict[str, Any]:
        return state(self.store, self.root, self.edge_root)

    def start(self) -> Dashboard:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()


def _answer(make: Callable[[], Response]) -> Response:
    """The response, or a 500 that says why (the server keeps serving)."""
    try:
        return make()
    except Exception as exc:  # noqa: BLE001 - answer 500, keep serving
        return PlainTextResponse(f"dashboard error: {exc}", 500)
