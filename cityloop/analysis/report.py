"""`cityloop report weekly`: one report per recipient, the way a city's weekly analysis reports go out.

A traffic police office acts on helmetless riding and a street office on its own streets, so the
week's events are cut per recipient (params `report.recipients`; by default the whole district, one
per agency of the scenario registry and one per district seen in the week). Each report says what
moved (week on week and over four weeks), where (hotspots with a snapshot to look at) and how much
to trust it (the precision of the scenario's alerts as people confirmed or dismissed them). Each is
HTML with its charts and thumbnails beside it, printed to PDF by headless Chromium, and can be
delivered to sinks (a folder, a signed webhook). Only the whole district's report carries the loop's
accuracy and labeling figures: a street office has no use for mAP.
"""

from __future__ import annotations

import base64
import html
import logging
import mimetypes
import os
import re
import subprocess
import tempfile
import textwrap
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cityloop.analysis.alerts import SECRET_ENV, SIGNATURE_HEADER, sign  # noqa: E402
from cityloop.analysis.figures import accuracy_curve, labeling_rounds  # noqa: E402
from cityloop.analysis.review import review_of  # noqa: E402
from cityloop.analysis.store import Event, EventStore  # noqa: E402
from cityloop.core.settings import from_section  # noqa: E402
from cityloop.labeling.browser import CHROMIUM, FLAGS  # noqa: E402
from cityloop.scenarios import registry  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_RECIPIENTS = [{"kind": "whole"}, {"kind": "agencies"}, {"kind": "districts"}]
WHOLE = "whole-district"


@dataclass
class ReportParams:
    """The `report:` section of params.yaml: where `cityloop report weekly` writes, for whom, where
    it delivers, and when the deployment runs."""

    out: str = "reports/weekly"  # <out>/<week>/<recipient>/index.html + report.pdf, relative to the workspace
    top_hotspots: int = 5
    cron: str = "0 7 * * 1"  # the Prefect deployment `weekly-report/weekly`: Mondays 07:00
    # None: DEFAULT_RECIPIENTS. Entries: {kind: whole} | {kind: agencies} | {kind: districts} |
    # {kind: custom, slug, name, scenarios: [...], districts: [...]} (a list left out: all)
    recipients: list[dict] | None = None
    sinks: list[dict] = field(default_factory=lambda: [{"type": "folder", "path": "reports/outbox"}])
    pdf: bool = True
    pdf_timeout_s: float = 90.0

    @classmethod
    def from_dict(cls, d: dict | None) -> ReportParams:
        return from_section(cls, d, "report")


@dataclass(frozen=True)
class Recipient:
    """Who a report is for and the cut of the events it sees (None: everything)."""

    slug: str
    name: str
    kind: str  # whole | agency | district | custom
    scenarios: tuple[str, ...] | None = None
    districts: tuple[str, ...] | None = None

    def wants(self, e: Event) -> bool:
        return ((self.scenarios is None or e.scenario in self.scenarios)
                and (self.districts is None or (e.district or "-") in self.districts))


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def resolve_recipients(specs: list[dict] | None, districts: list[str]) -> list[Recipient]:
    """Recipients from params entries; the whole district always comes first (it is the summary)."""
    reg = registry().scenarios
    out: dict[str, Recipient] = {WHOLE: Recipient(WHOLE, "Whole district", "whole")}
    for spec in DEFAULT_RECIPIENTS if specs is None else specs:
        kind = spec.get("kind")
        if kind == "whole":
            continue
        if kind == "agencies":
            agencies: dict[str, list[str]] = defaultdict(list)
            for name, sc in reg.items():
                agencies[sc.agency].append(name)
            for agency, names in agencies.items():
                r = Recipient(f"agency-{slugify(agency)}", agency.capitalize(), "agency", tuple(names))
                out[r.slug] = r
        elif kind == "districts":
            for d in districts:
                r = Recipient(f"district-{slugify(d)}", d, "district", None, (d,))
                out[r.slug] = r
        elif kind == "custom":
            unknown = sorted(set(spec.get("scenarios") or []) - set(reg))
            if not spec.get("slug") or unknown:
                raise ValueError(f"report.recipients: a custom recipient needs a slug and known scenarios "
                                 f"(got slug {spec.get('slug')!r}, unknown scenarios {unknown})")
            sc, ds = spec.get("scenarios"), spec.get("districts")
            r = Recipient(slugify(spec["slug"]), spec.get("name", spec["slug"]), "custom",
                          tuple(sc) if sc else None, tuple(ds) if ds else None)
            out[r.slug] = r
        else:
            raise ValueError(f"report.recipients: unknown kind {kind!r} (whole | agencies | districts | custom)")
    return list(out.values())


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


def _precision(confirmed: int, dismissed: int) -> float | None:
    return None if confirmed + dismissed == 0 else round(100.0 * confirmed / (confirmed + dismissed), 1)


def summarize(this: list[Event], prev: list[Event], top: int, *, weeks: list[list[Event]] | None = None,
              labels: list[str] | None = None, scenarios: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The report's numbers (also returned to callers and flows). `weeks`: the events of W-3..W
    (oldest first, `labels` their names) for the 4-week trend; `scenarios`: the recipient's."""
    reg = registry()
    names = [s for s in reg.names if scenarios is None or s in scenarios]
    titles = {name: sc.title for name, sc in reg.scenarios.items()}
    c_now, c_prev = Counter(e.scenario for e in this), Counter(e.scenario for e in prev)
    verdicts: dict[str, Counter] = defaultdict(Counter)
    for e in this:
        r = review_of(e.extra)
        verdicts[e.scenario][r.get("verdict") if r and r.get("verdict") in ("confirmed", "dismissed")
                             else "unreviewed"] += 1
    scen = []
    for s in names:
        v = verdicts[s]
        scen.append({"scenario": s, "title": titles[s], "agency": reg.scenarios[s].agency, "this_week": c_now[s],
                     "previous_week": c_prev[s], "change_pct": change(c_now[s], c_prev[s]),
                     "confirmed": v["confirmed"], "dismissed": v["dismissed"], "unreviewed": v["unreviewed"],
                     "precision_pct": _precision(v["confirmed"], v["dismissed"])})
    four = []
    if weeks is not None:
        per_week = [Counter(e.scenario for e in w) for w in weeks]
        for s in names:
            counts = [c[s] for c in per_week]
            four.append({"scenario": s, "title": titles[s], "weeks": list(labels or []), "counts": counts,
                         "change_pct": change(counts[-1], counts[0])})
    cams = Counter((e.camera_id, e.district or "-") for e in this)
    cam_prev = Counter((e.camera_id, e.district or "-") for e in prev)
    cameras = [{"camera_id": c, "district": d, "this_week": n, "previous_week": cam_prev[(c, d)],
                "change_pct": change(n, cam_prev[(c, d)])} for (c, d), n in sorted(cams.items())]
    dist_now, dist_prev = Counter(e.district or "-" for e in this), Counter(e.district or "-" for e in prev)
    districts = [{"district": d, "this_week": dist_now[d], "previous_week": dist_prev[d],
                  "change_pct": change(dist_now[d], dist_prev[d])} for d in sorted(set(dist_now) | set(dist_prev))]
    groups: dict[tuple[str, str, str], list[Event]] = defaultdict(list)
    for e in this:
        groups[(e.camera_id, e.district or "-", e.scenario)].append(e)
    hot = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]
    hotspots = [{"camera_id": c, "district": d, "scenario": s, "title": titles.get(s, s), "events": len(evs),
                 "snapshot_source": next((e.snapshot for e in sorted(evs, key=lambda e: -e.start_ts)
                                          if e.snapshot and Path(e.snapshot).is_file()), None)}
                for (c, d, s), evs in hot]
    models = Counter(e.model_version or "-" for e in this)
    moves4 = sorted((r for r in four if r["change_pct"] is not None and abs(r["change_pct"]) >= 20),
                    key=lambda r: r["change_pct"])
    moves = sorted((r for r in scen if r["change_pct"] is not None and abs(r["change_pct"]) >= 20),
                   key=lambda r: r["change_pct"])
    headline = [f"{r['title']} {'fell' if r['change_pct'] < 0 else 'rose'} {abs(r['change_pct']):.1f}% over four "
                f"weeks ({r['counts'][0]} → {r['counts'][-1]})" for r in moves4]
    headline += [f"{r['title']} {'fell' if r['change_pct'] < 0 else 'rose'} {abs(r['change_pct']):.1f}% week on week "
                 f"({r['previous_week']} → {r['this_week']})" for r in moves]
    return {"scenarios": scen, "four_weeks": four, "cameras": cameras, "districts": districts, "hotspots": hotspots,
            "model_versions": [{"model_version": m, "events": n} for m, n in models.most_common()],
            "headline": headline, "total": len(this), "total_previous": len(prev)}


# --- charts (matplotlib PNGs beside the page) ---------------------------------------------------------


def _chart_weeks(s: dict, week: str, prev_week: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    rows = s["scenarios"]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["previous_week"] for r in rows], 0.4, label=prev_week, color="#9aa5b1")
    ax.bar([x + 0.2 for x in xs], [r["this_week"] for r in rows], 0.4, label=week, color="#1f6feb")
    for x, r in zip(xs, rows):
        if r["change_pct"] is not None:
            ax.annotate(_trend(r["change_pct"]), (x, max(r["this_week"], r["previous_week"])), ha="center",
                        va="bottom", fontsize=8, color="#067d39" if r["change_pct"] < 0 else "#b42318")
    ax.set_xticks(list(xs), [textwrap.fill(r["title"], 14) for r in rows], fontsize=7)
    ax.set_xlim(-0.7, max(len(rows), 4) - 0.3)  # an agency's one or two scenarios: bars, not walls
    ax.set_ylabel("events")
    ax.set_title("events per scenario: this week against the previous one")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _chart_four_weeks(four: list[dict], path: Path) -> bool:
    rows = [r for r in four if any(r["counts"])]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 3.0), dpi=100)
    for r in rows:
        ax.plot(r["weeks"], r["counts"], marker="o", label=r["title"])
    ax.set_ylim(bottom=0)
    ax.set_ylabel("events per week")
    ax.set_title("the last four weeks, per scenario")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _chart_daily(events: list[Event], start: datetime, path: Path, names: list[str]) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    days = [start + timedelta(days=i) for i in range(-7, 7)]
    titles = {name: sc.title for name, sc in registry().scenarios.items()}
    for sc in names:
        counts = Counter(int((e.start_ts - days[0].timestamp()) // 86400) for e in events if e.scenario == sc)
        if counts:
            ax.plot([d.strftime("%m-%d") for d in days], [counts.get(i, 0) for i in range(14)], marker="o",
                    label=titles[sc])
    ax.axvline(6.5, color="#888", linestyle="--", linewidth=1)
    ax.set_ylabel("events per day")
    ax.set_title("the last two weeks, per day")
    ax.tick_params(axis="x", labelsize=7, rotation=45)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _version(model_id: str) -> int | str:
    tail = model_id.rpartition(":")[2]
    return int(tail[1:]) if tail[:1] == "v" and tail[1:].isdigit() else tail


def lineages(curve: list[dict]) -> dict[str, list[tuple[int | str, float]]]:
    """Evaluated versions grouped by lineage (registry id `name:vN`; the random arm's versions are
    another name), so the active and random arms are two lines, not one joined zigzag."""
    lines: dict[str, list[tuple[int | str, float]]] = defaultdict(list)
    for c in curve:
        if c.get("mAP50") is not None:
            lines[c["id"].partition(":")[0]].append((_version(c["id"]), float(c["mAP50"])))
    return dict(lines)


def _chart_accuracy(curve: list[dict], path: Path) -> bool:
    """One line per lineage."""
    lines = lineages(curve)
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(6, 2.8), dpi=100)
    for name, pts in lines.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_ylim(0, 1)
    ax.set_xlabel("model version")
    ax.set_ylabel("benchmark mAP50")
    ax.set_title("the loop's accuracy, one line per lineage")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# --- the page -----------------------------------------------------------------------------------------


def _when(v: Any) -> str:
    if isinstance(v, int | float):
        return datetime.fromtimestamp(v, UTC).strftime("%Y-%m-%d %H:%M")
    return str(v).replace("T", " ")[:16] if v else "—"


def _cell(col: str, v: Any) -> str:
    """One table cell, formatted for people: percents to 1 decimal, mAP to 3, no raw floats."""
    if col.endswith("change_pct"):
        cls = "down" if (v or 0) < 0 else "up" if (v or 0) > 0 else ""
        return f'<td class="{cls}">{html.escape(_trend(v))}</td>'
    if v is None:
        text = "—"
    elif col.endswith("_pct"):
        text = f"{v:.1f}%"
    elif col == "mAP50":
        text = f"{v:.3f}"
    elif col in ("registered", "created"):
        text = _when(v)
    elif isinstance(v, float):
        text = f"{v:.2f}"
    elif isinstance(v, list):
        text = " · ".join(str(x) for x in v)
    else:
        text = str(v)
    return f'<td class="t">{html.escape(text)}</td>' if isinstance(v, str) else f"<td>{html.escape(text)}</td>"


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in cols)
    body = "".join("<tr>" + "".join(_cell(c, r.get(c)) for c, _ in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:"DejaVu Sans",sans-serif;margin:24px;max-width:1000px;color:#1f2328}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f4f6;white-space:nowrap}td:first-child,th:first-child,td.t{text-align:left}
.down{color:#067d39;font-weight:bold}.up{color:#b42318;font-weight:bold}
.headline{font-size:1.2em;background:#eef6ff;padding:8px 12px;border-left:4px solid #1f6feb;margin:8px 0}
.charts img{max-width:100%}.hot{display:flex;flex-wrap:wrap;gap:12px}
.hot figure{margin:0;width:230px;border:1px solid #ddd;padding:6px}.hot img{width:100%}
.hot figcaption{font-size:.85em}.meta{color:#57606a}section{break-inside:avoid}
@page{size:A4;margin:12mm}
@media print{body{margin:0;max-width:none;font-size:10pt}h2{break-after:avoid}
table,figure,.charts img,.headline{break-inside:avoid}img{max-width:100%}.hot figure{width:160px}}"""


def _hotspots_html(rows: list[dict]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    figs = []
    for r in rows:
        img = (f'<img src="{html.escape(r["snapshot"])}" alt="{html.escape(r["title"])}">' if r.get("snapshot")
               else "<p><em>no snapshot</em></p>")
        figs.append(f"<figure>{img}<figcaption><b>{html.escape(r['title'])}</b><br>{html.escape(r['camera_id'])}"
                    f" · {html.escape(r['district'])} · {r['events']} event{'s' if r['events'] != 1 else ''}"
                    "</figcaption></figure>")
    return f'<div class="hot">{"".join(figs)}</div>'


def _page(rcp: Recipient, s: dict, charts: dict[str, bool]) -> str:
    week, prev_week = s["week"], s["previous_week"]
    headline = "".join(f"<div>{html.escape(h)}</div>" for h in s["headline"]) or "no large change"
    scope = "all scenarios" if rcp.scenarios is None else ", ".join(
        registry().scenarios[n].title for n in rcp.scenarios)
    scope += "" if rcp.districts is None else " in " + ", ".join(rcp.districts)
    labels = s["four_weeks"][0]["weeks"] if s["four_weeks"] else []
    four_rows = [{"title": r["title"], **{f"w{i}": n for i, n in enumerate(r["counts"])},
                  "change_pct": r["change_pct"]} for r in s["four_weeks"]]
    wow = _table(s["scenarios"], [("title", "scenario"), ("this_week", week), ("previous_week", prev_week),
                                  ("change_pct", "change")])
    four = _table(four_rows, [("title", "scenario")] + [(f"w{i}", w) for i, w in enumerate(labels)]
                  + [("change_pct", "over four weeks")])
    acc = _table(s["scenarios"], [("title", "scenario"), ("this_week", "alerts"), ("confirmed", "confirmed"),
                                  ("dismissed", "dismissed"), ("unreviewed", "unreviewed"),
                                  ("precision_pct", "precision")])
    hot = _table(s["hotspots"], [("camera_id", "camera"), ("district", "district"), ("title", "scenario"),
                                 ("events", "events")])
    dist = _table(s["districts"], [("district", "district"), ("this_week", week), ("previous_week", prev_week),
                                   ("change_pct", "change")])
    cams = _table(s["cameras"], [("camera_id", "camera"), ("district", "district"), ("this_week", week),
                                 ("previous_week", prev_week), ("change_pct", "change")])
    models = _table(s["model_versions"], [("model_version", "model version"), ("events", "events")])
    four_img = '<img src="four_weeks.png" alt="four-week trend">' if charts.get("four_weeks") else ""
    loop = ""
    if rcp.kind == "whole":
        acc_img = '<div class="charts"><img src="accuracy.png" alt="accuracy curve"></div>' \
            if charts.get("accuracy") else ""
        curve = _table(s["accuracy"], [("id", "model version"), ("stage", "stage"), ("registered", "registered"),
                                       ("mAP50", "benchmark mAP50")])
        rounds = _table(s["labeling"], [("id", "dataset version"), ("created", "created"), ("frames", "frames"),
                                        ("labeled", "labeled")])
        loop = f"<h2>The loop: accuracy</h2>{curve}{acc_img}<h2>The loop: labeling</h2>{rounds}"
    name = html.escape(rcp.name)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Weekly report {week}: {name}</title><style>{CSS}</style></head><body>
<h1>Weekly report {week}: {name}</h1>
<p class="meta">{html.escape(scope)}. {s['total']} events this week, {s['total_previous']} in {prev_week}.</p>
<div class="headline">{headline}</div>
<h2>Per scenario, week on week</h2>{wow}
<div class="charts"><img src="scenarios.png" alt="events per scenario"></div>
<h2>The last four weeks</h2>{four}
<div class="charts">{four_img}<img src="daily.png" alt="events per day"></div>
<section><h2>Accuracy of the alerts</h2>
<p class="meta">Precision: alerts confirmed / (confirmed + dismissed) by the people who acted on them.</p>
{acc}</section>
<section><h2>Hotspots</h2>{_hotspots_html(s['hotspots'])}</section>{hot}
<h2>Per district</h2>{dist}
<h2>Per camera</h2>{cams}
<h2>Model versions in use</h2>{models}
{loop}</body></html>"""


def _index_page(week: str, rows: list[dict]) -> str:
    body = []
    for r in rows:
        slug = html.escape(r["slug"])
        pdf = f'<a href="{slug}/report.pdf">PDF</a>' if r["pdf"] else html.escape(r.get("pdf_error") or "—")
        lead = html.escape(r["headline"][0] if r["headline"] else "no large change")
        body.append(f'<tr><td><a href="{slug}/index.html">{html.escape(r["name"])}</a></td><td>{r["total"]}</td>'
                    f"<td>{lead}</td><td>{pdf}</td></tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Weekly reports {week}</title>
<style>{CSS}</style></head><body><h1>Weekly reports {week}</h1>
<table><thead><tr><th>recipient</th><th>events</th><th>headline</th><th>PDF</th></tr></thead>
<tbody>{''.join(body)}</tbody></table></body></html>"""


def _thumbnail(src: str, dst: Path, size: int = 480) -> bool:
    """A small JPEG copy of a snapshot inside the report folder, so the page and its PDF stand alone."""
    try:
        from PIL import Image

        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            im.thumbnail((size, size))
            im.convert("RGB").save(dst, "JPEG", quality=85)
        return True
    except Exception as exc:  # noqa: BLE001 - a broken snapshot costs its thumbnail, not the report
        log.warning("no thumbnail of %s: %s", src, exc)
        return False


def html_to_pdf(page: Path, pdf: Path, timeout_s: float = 90.0) -> str | None:
    """Print a page to A4 PDF with headless Chromium; None when done, else why there is no PDF."""
    exe = CHROMIUM
    if not (Path(exe).is_file() and os.access(exe, os.X_OK)):
        return f"no PDF: Chromium not found at {exe} (make install installs it); the HTML is written"
    pdf.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="cityloop-pdf-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", "--no-pdf-header-footer",
               "--run-all-compositor-stages-before-draw", f"--print-to-pdf={pdf}", page.resolve().as_uri()]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return f"no PDF: Chromium took longer than {timeout_s:.0f} s; the HTML is written"
        except OSError as exc:
            return f"no PDF: Chromium did not start ({exc}); the HTML is written"
    if not pdf.is_file() or pdf.read_bytes()[:4] != b"%PDF":
        tail = r.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        return f"no PDF: Chromium printed none ({tail[0][:200]}); the HTML is written"
    return None


def _fill_districts(events: list[Event]) -> None:
    """An event without a district takes its camera's from another event (edge nodes may leave it
    out); "-" stays only where no event of that camera knows it."""
    known = {e.camera_id: e.district for e in events if e.district}
    for e in events:
        if not e.district:
            e.district = known.get(e.camera_id)


def weekly_report(store: EventStore, out: Path, week: str | None = None, root: Path | None = None,
                  top: int = 5, *, recipients: list[dict] | None = None, only: list[str] | None = None,
                  pdf: bool = True, pdf_timeout_s: float = 90.0) -> dict[str, Any]:
    """Write <out>/<week>/<recipient>/index.html (+ report.pdf, PNG charts, snapshot thumbnails) and
    <out>/<week>/index.html listing them. Returns the whole district's numbers with `html`, `pdf`,
    `four_weeks`, `headline`, and `recipients` (slug -> that recipient's summary); `only` limits the
    reports written to those slugs (the whole district's is always written: it is the summary)."""
    if week is None:
        latest = store.events(limit=1, newest_first=True)
        week = week_of(latest[0].start_ts) if latest else week_of(datetime.now(UTC).timestamp())
    start = week_start(week)
    starts = [start - timedelta(days=7 * k) for k in (3, 2, 1, 0)]
    labels = [week_of(s.timestamp()) for s in starts]
    events = store.events(starts[0].timestamp(), (start + timedelta(days=7)).timestamp())
    _fill_districts(events)
    bounds = [s.timestamp() for s in starts] + [(start + timedelta(days=7)).timestamp()]
    prev_week = labels[2]
    districts = sorted({e.district for e in events if e.district and bounds[4] > e.start_ts >= bounds[3]})
    rcps = resolve_recipients(recipients, districts)
    if only:
        unknown = sorted(set(only) - {r.slug for r in rcps})
        if unknown:
            raise ValueError(f"unknown recipient(s) {unknown} for {week} (known: {[r.slug for r in rcps]})")
        rcps = [r for r in rcps if r.kind == "whole" or r.slug in only]
    accuracy = accuracy_curve(root) if root else []
    labeling = labeling_rounds(root) if root else []
    base = Path(out) / week
    summaries: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for rcp in rcps:
        mine = [e for e in events if rcp.wants(e)]
        weeks = [[e for e in mine if bounds[i] <= e.start_ts < bounds[i + 1]] for i in range(4)]
        s = summarize(weeks[3], weeks[2], top, weeks=weeks, labels=labels, scenarios=rcp.scenarios)
        s.update(week=week, previous_week=prev_week, recipient=rcp.slug, name=rcp.name, kind=rcp.kind)
        if rcp.kind == "whole":
            s.update(accuracy=accuracy, labeling=labeling)
        d = base / rcp.slug
        d.mkdir(parents=True, exist_ok=True)
        for i, h in enumerate(s["hotspots"]):
            src = h.pop("snapshot_source")
            h["snapshot"] = f"snapshots/hotspot-{i + 1}.jpg" if src and _thumbnail(
                src, (d / "snapshots").joinpath(f"hotspot-{i + 1}.jpg")) else None
        _chart_weeks(s, week, prev_week, d / "scenarios.png")
        charts = {"four_weeks": _chart_four_weeks(s["four_weeks"], d / "four_weeks.png"),
                  "accuracy": rcp.kind == "whole" and _chart_accuracy(accuracy, d / "accuracy.png")}
        _chart_daily(weeks[2] + weeks[3], start, d / "daily.png", [r["scenario"] for r in s["scenarios"]])
        (d / "index.html").write_text(_page(rcp, s, charts))
        s["html"], s["pdf"], s["pdf_error"] = str(d / "index.html"), None, None
        if pdf:
            why = html_to_pdf(d / "index.html", d / "report.pdf", pdf_timeout_s)
            if why:
                s["pdf_error"] = why
                if why not in warnings:
                    warnings.append(why)
                log.warning("%s: %s", rcp.slug, why)
            else:
                s["pdf"] = str(d / "report.pdf")
        else:
            s["pdf_error"] = "no PDF: not asked for (--no-pdf)"
        summaries[rcp.slug] = s
    (base / "index.html").write_text(_index_page(week, [{"slug": k, **v} for k, v in summaries.items()]))
    top_level = dict(summaries[WHOLE])
    top_level.update(recipients=summaries, index=str(base / "index.html"), warnings=warnings)
    return top_level


# --- delivery -----------------------------------------------------------------------------------------


def self_contained(page: Path) -> str:
    """The page with its images inlined as data: URIs, so a copy outside its folder still shows them."""
    text = page.read_text()

    def inline(m: re.Match) -> str:
        f = page.parent / m.group(1)
        if ":" in m.group(1) or not f.is_file():
            return m.group(0)
        mime = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        return f'src="data:{mime};base64,{base64.b64encode(f.read_bytes()).decode()}"'

    return re.sub(r'src="([^"]+)"', inline, text)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FolderSink:
    """Copies each recipient's PDF and self-contained HTML to <path>/<week>/<recipient>.pdf|.html,
    atomically (a reader never sees half a file)."""

    def __init__(self, path: Path, name: str = "folder") -> None:
        self.path, self.name = Path(path), name

    def deliver(self, week: str, slug: str, s: dict) -> list[str]:
        files = []
        if s.get("pdf"):
            dst = self.path / week / f"{slug}.pdf"
            _atomic_write(dst, Path(s["pdf"]).read_bytes())
            files.append(str(dst))
        dst = self.path / week / f"{slug}.html"
        _atomic_write(dst, self_contained(Path(s["html"])).encode())
        files.append(str(dst))
        return files


class ReportWebhookSink:
    """POSTs each recipient's PDF (its self-contained HTML when there is no PDF), signed like the
    alert webhooks (`X-Cityloop-Signature: sha256=HMAC(secret, body)`); the secret never leaves the env."""

    def __init__(self, url: str, name: str = "webhook", secret_env: str = SECRET_ENV, timeout_s: float = 10.0,
                 retries: int = 1) -> None:
        secret = os.environ.get(secret_env)
        if not secret:
            raise ValueError(f"report webhook {name!r}: set the signing secret in ${secret_env}")
        self.url, self.name, self._secret, self.retries = url, name, secret, retries
        self.timeout_s = timeout_s

    def deliver(self, week: str, slug: str, s: dict) -> list[str]:
        if s.get("pdf"):
            body, ctype, fname = Path(s["pdf"]).read_bytes(), "application/pdf", f"{slug}.pdf"
        else:
            body, ctype, fname = self_contained(Path(s["html"])).encode(), "text/html; charset=utf-8", f"{slug}.html"
        headers = {"Content-Type": ctype, SIGNATURE_HEADER: sign(self._secret, body),
                   "X-Cityloop-Report": f"{week}/{slug}",
                   "Content-Disposition": f'attachment; filename="{week}-{fname}"'}
        err: Exception | None = None
        with httpx.Client(timeout=self.timeout_s) as client:
            for attempt in range(self.retries + 1):
                try:
                    r = client.post(self.url, content=body, headers=headers)
                    if r.status_code < 300:
                        return [f"{self.url} ({fname})"]
                    err = RuntimeError(f"HTTP {r.status_code}")
                except httpx.HTTPError as exc:
                    err = exc
                time.sleep(0.2 * 2 ** attempt)
        raise RuntimeError(f"report webhook {self.name} failed for {slug}: {err}")


def build_report_sinks(specs: list[dict], root: Path | None = None) -> list[FolderSink | ReportWebhookSink]:
    """Sinks from params `report.sinks`; a bad entry is a clear error."""
    sinks: list[FolderSink | ReportWebhookSink] = []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind == "folder":
            p = Path(spec.get("path", "reports/outbox"))
            sinks.append(FolderSink(p if p.is_absolute() or root is None else Path(root) / p,
                                    spec.get("name", "folder")))
        elif kind == "webhook":
            if not spec.get("url"):
                raise ValueError("report.sinks: a webhook sink needs a url")
            sinks.append(ReportWebhookSink(spec["url"], spec.get("name", "webhook"),
                                           spec.get("secret_env", SECRET_ENV)))
        else:
            raise ValueError(f"report.sinks: unknown type {kind!r} (folder | webhook)")
    return sinks


def deliver(summary: dict[str, Any], specs: list[dict], root: Path | None = None) -> list[dict[str, Any]]:
    """Deliver every recipient's report to every sink. A failing sink is one row with ok=False and
    its error; the reports on disk and the other sinks are untouched. Also stored as
    summary["deliveries"]."""
    rows: list[dict[str, Any]] = []
    recipients = summary.get("recipients") or {summary.get("recipient", WHOLE): summary}
    for i, spec in enumerate(specs):
        name = spec.get("name") or f"{spec.get('type', '?')}-{i}"
        try:
            sink = build_report_sinks([spec], root)[0]
        except ValueError as exc:
            rows.append({"sink": name, "type": spec.get("type"), "ok": False, "error": str(exc), "files": []})
            continue
        files, errors = [], []
        for slug, s in recipients.items():
            try:
                files += sink.deliver(summary["week"], slug, s)
            except Exception as exc:  # noqa: BLE001 - one sink's failure is reported, never raised
                errors.append(str(exc))
        rows.append({"sink": sink.name, "type": spec.get("type"), "ok": not errors,
                     "error": "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")
                     if errors else None, "files": files})
        if errors:
            log.warning("report sink %s: %s", sink.name, rows[-1]["error"])
    summary["deliveries"] = rows
    return rows
