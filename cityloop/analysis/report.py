"""`cityloop report weekly`: counts per scenario, camera and district, the change against the
previous week, hotspots, model versions in use and the loop's labeling and accuracy figures,
as one HTML page with matplotlib PNG charts."""

from __future__ import annotations

import html
import textwrap
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cityloop.analysis.figures import accuracy_curve, labeling_rounds  # noqa: E402
from cityloop.analysis.store import Event, EventStore  # noqa: E402
from cityloop.core.settings import from_section  # noqa: E402
from cityloop.scenarios import registry  # noqa: E402


@dataclass
class ReportParams:
    """The `report:` section of params.yaml: where `cityloop report weekly` writes, and when it runs."""

    out: str = "reports/weekly"  # <out>/<week>/index.html + PNGs, relative to the workspace
    top_hotspots: int = 5
    cron: str = "0 7 * * 1"  # the Prefect deployment `weekly-report/weekly`: Mondays 07:00

    @classmethod
    def from_dict(cls, d: dict | None) -> ReportParams:
        return from_section(cls, d, "report")


def week_start(week: str) -> datetime:
    """"2026-W42" -> Monday 00:00 UTC of that ISO week (ValueError on anything else)."""
    try:
        year, num = week.split("-W")
        return datetime.fromisocalendar(int(year), int(num), 1).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"week must look like 2026-W42, got {week!r}") from exc


def week_of(ts: float) -> str:
    y, w, _ = datetime.fromtimestamp(ts, UTC).isocalendar()
    return f"{y}-W{w:02d}"


def change(now: int, before: int) -> float | None:
    """Percent change (None when there was nothing before)."""
    return None if before == 0 else round(100.0 * (now - before) / before, 1)


def _trend(pct: float | None) -> str:
    if pct is None:
        return "—"
    arrow = "▼" if pct < 0 else "▲" if pct > 0 else "="
    return f"{arrow} {abs(pct):.1f}%"


def summarize(this: list[Event], prev: list[Event], top: int) -> dict[str, Any]:
    """The report's numbers (also returned to callers and flows)."""
    c_now, c_prev = Counter(e.scenario for e in this), Counter(e.scenario for e in prev)
    titles = {name: sc.title for name, sc in registry().scenarios.items()}
    scen = [{"scenario": s, "title": titles[s], "this_week": c_now[s], "previous_week": c_prev[s],
             "change_pct": change(c_now[s], c_prev[s])} for s in registry().names]
    cams = Counter((e.camera_id, e.district or "-") for e in this)
    cam_prev = Counter((e.camera_id, e.district or "-") for e in prev)
    cameras = [{"camera_id": c, "district": d, "this_week": n, "previous_week": cam_prev[(c, d)],
                "change_pct": change(n, cam_prev[(c, d)])} for (c, d), n in sorted(cams.items())]
    dist_now, dist_prev = Counter(e.district or "-" for e in this), Counter(e.district or "-" for e in prev)
    districts = [{"district": d, "this_week": dist_now[d], "previous_week": dist_prev[d],
                  "change_pct": change(dist_now[d], dist_prev[d])} for d in sorted(set(dist_now) | set(dist_prev))]
    hot = Counter((e.camera_id, e.district or "-", e.scenario) for e in this).most_common(top)
    hotspots = [{"camera_id": c, "district": d, "scenario": s, "events": n} for (c, d, s), n in hot]
    models = Counter(e.model_version or "-" for e in this)
    moves = sorted((r for r in scen if r["change_pct"] is not None), key=lambda r: r["change_pct"])
    return {"scenarios": scen, "cameras": cameras, "districts": districts, "hotspots": hotspots,
            "model_versions": [{"model_version": m, "events": n} for m, n in models.most_common()],
            "headline": [f"{r['title']} {'fell' if r['change_pct'] < 0 else 'rose'} {abs(r['change_pct']):.1f}% "
                         f"({r['previous_week']} → {r['this_week']})" for r in moves if abs(r["change_pct"]) >= 20],
            "total": len(this), "total_previous": len(prev)}


def _chart_weeks(s: dict, week: str, prev_week: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    names = [r["title"] for r in s["scenarios"]]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [r["previous_week"] for r in s["scenarios"]], 0.4, label=prev_week, color="#9aa5b1")
    ax.bar([x + 0.2 for x in xs], [r["this_week"] for r in s["scenarios"]], 0.4, label=week, color="#1f6feb")
    for x, r in zip(xs, s["scenarios"]):
        if r["change_pct"] is not None:
            ax.annotate(_trend(r["change_pct"]), (x, max(r["this_week"], r["previous_week"])), ha="center",
                        va="bottom", fontsize=8, color="#067d39" if r["change_pct"] < 0 else "#b42318")
    ax.set_xticks(list(xs), [textwrap.fill(n, 14) for n in names], fontsize=7)
    ax.set_ylabel("events")
    ax.set_title("events per scenario: this week against the previous one")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _chart_daily(events: list[Event], start: datetime, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    days = [start + timedelta(days=i) for i in range(-7, 7)]
    for sc in registry().names:
        counts = Counter(int((e.start_ts - days[0].timestamp()) // 86400) for e in events if e.scenario == sc)
        if counts:
            ax.plot([d.strftime("%m-%d") for d in days], [counts.get(i, 0) for i in range(14)], marker="o", label=sc)
    ax.axvline(6.5, color="#888", linestyle="--", linewidth=1)
    ax.set_ylabel("events per day")
    ax.set_title("the last two weeks, per day")
    ax.tick_params(axis="x", labelsize=7, rotation=45)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _chart_accuracy(curve: list[dict], path: Path) -> bool:
    pts = [(c["id"], c["mAP50"]) for c in curve if c["mAP50"] is not None]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6, 2.8), dpi=100)
    ax.plot([p[0].split(":")[-1] for p in pts], [p[1] for p in pts], marker="o", color="#1f6feb")
    ax.set_ylim(0, 1)
    ax.set_ylabel("benchmark mAP50")
    ax.set_title("the loop's accuracy, per model version")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _table(rows: list[dict], cols: list[str]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "change_pct":
                cls = "down" if (v or 0) < 0 else "up" if (v or 0) > 0 else ""
                cells.append(f'<td class="{cls}">{html.escape(_trend(v)) if v is not None else "—"}</td>')
            else:
                cells.append(f"<td>{html.escape('—' if v is None else str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


CSS = """body{font-family:sans-serif;margin:24px;max-width:1000px}table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f4f6}td:first-child{text-align:left}
.down{color:#067d39;font-weight:bold}.up{color:#b42318;font-weight:bold}.headline{font-size:1.2em;background:#eef6ff;
padding:8px 12px;border-left:4px solid #1f6feb}"""


def weekly_report(store: EventStore, out: Path, week: str | None = None, root: Path | None = None,
                  top: int = 5) -> dict[str, Any]:
    """Write <out>/<week>/index.html + PNGs; returns the numbers and the page's path."""
    if week is None:
        latest = store.events(limit=1, newest_first=True)
        week = week_of(latest[0].start_ts) if latest else week_of(datetime.now(UTC).timestamp())
    start = week_start(week)
    prev_start = start - timedelta(days=7)
    this = store.events(start.timestamp(), (start + timedelta(days=7)).timestamp())
    prev = store.events(prev_start.timestamp(), start.timestamp())
    s = summarize(this, prev, top)
    prev_week = week_of(prev_start.timestamp())
    s.update(week=week, previous_week=prev_week)
    s["accuracy"] = accuracy_curve(root) if root else []
    s["labeling"] = labeling_rounds(root) if root else []
    d = Path(out) / week
    d.mkdir(parents=True, exist_ok=True)
    _chart_weeks(s, week, prev_week, d / "scenarios.png")
    _chart_daily(prev + this, start, d / "daily.png")
    has_acc = _chart_accuracy(s["accuracy"], d / "accuracy.png")
    headline = "".join(f"<div>{html.escape(h)}</div>" for h in s["headline"]) or "no large change"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cityloop weekly report {week}</title>
<style>{CSS}</style></head><body><h1>cityloop weekly report {week}</h1>
<p>{s['total']} events this week, {s['total_previous']} in {prev_week}.</p>
<div class="headline">{headline}</div>
<h2>Per scenario</h2>{_table(s['scenarios'], ['title', 'this_week', 'previous_week', 'change_pct'])}
<img src="scenarios.png" alt="events per scenario"><img src="daily.png" alt="events per day">
<h2>Hotspots</h2>{_table(s['hotspots'], ['camera_id', 'district', 'scenario', 'events'])}
<h2>Per district</h2>{_table(s['districts'], ['district', 'this_week', 'previous_week', 'change_pct'])}
<h2>Per camera</h2>{_table(s['cameras'], ['camera_id', 'district', 'this_week', 'previous_week', 'change_pct'])}
<h2>Model versions in use</h2>{_table(s['model_versions'], ['model_version', 'events'])}
<h2>The loop: accuracy</h2>{_table(s['accuracy'], ['id', 'stage', 'registered', 'mAP50'])}
{'<img src="accuracy.png" alt="accuracy curve">' if has_acc else ''}
<h2>The loop: labeling</h2>{_table(s['labeling'], ['id', 'created', 'frames', 'labeled'])}
</body></html>"""
    (d / "index.html").write_text(page)
    s["html"] = str(d / "index.html")
    return s
