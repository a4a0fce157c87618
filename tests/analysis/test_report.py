"""The weekly reports make a simulated drop in helmetless riding obvious, to each recipient its own cut,
as HTML and PDF, delivered to folder and webhook sinks."""

from __future__ import annotations

import html
import json
import re
import socket
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from PIL import Image
from typer.testing import CliRunner

from cityloop.analysis import report
from cityloop.analysis.alerts import SIGNATURE_HEADER, Dispatcher, LogSink, sign
from cityloop.analysis.engine import Analyzer
from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.patrol import patrol_camera
from cityloop.analysis.report import ReportParams, deliver, lineages, resolve_recipients, week_start, weekly_report
from cityloop.analysis.store import Event, EventStore
from cityloop.cli import app
from cityloop.labeling.browser import CHROMIUM, FLAGS
from cityloop.scenarios.zones import load_zones, read_cameras
from cityloop.scenes.video import generate_video
from tests.analysis.conftest import BUSY

WEEK = "2026-W43"
ART = Path(__file__).resolve().parents[2] / "reports" / "test-artifacts"


def _patrol_in_week(analyzer: Analyzer, clip: Path, monday: datetime, day: int) -> None:
    """Patrol a clip as if it had been recorded on `day` of the week starting `monday`."""
    for cam in read_cameras(clip):
        cam = {**cam, "start_ts": (monday + timedelta(days=day, hours=9)).isoformat()}
        patrol_camera(analyzer, clip, cam, "truth", "cityloop-detector:v1", "report-test")


@pytest.fixture(scope="module")
def two_weeks(clips, tmp_path_factory) -> Path:
    """Before: many helmetless riders (busy clips, 3 days). After reporting: few (1 day)."""
    tmp = tmp_path_factory.mktemp("weeks")
    few = tmp / "few"
    generate_video("field", 2, 60, 2, 31, few, rates={**BUSY, "p_no_helmet": 0.08}, condition="rain")
    store = EventStore(f"sqlite:///{tmp}/events.db")
    analyzer = Analyzer(AnalysisParams(), Dispatcher(store, [LogSink()]), load_zones(read_cameras(clips["busy-rain"])))
    this = week_start(WEEK)
    for day in range(3):
        _patrol_in_week(analyzer, clips["busy-rain"], this - timedelta(days=7), day)
    _patrol_in_week(analyzer, few, this, 1)
    analyzer.close()
    return tmp


def test_weekly_report_shows_the_drop_in_helmetless_riding(two_weeks: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CITYLOOP_ROOT", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "140")
    r = CliRunner().invoke(app, ["report", "weekly", "--week", WEEK, "--db", f"sqlite:///{two_weeks}/events.db",
                                 "--out", str(tmp_path / "weekly"), "--no-pdf", "--deliver"])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "weekly" / WEEK / "whole-district" / "index.html").read_text()
    row = page[page.index('<td class="t">E-bike rider without helmet</td>'):].split("</tr>")[0]
    assert 'class="down">▼' in row  # the drop is shown, in the "down" style
    pct = float(row.split("▼")[1].split("%")[0])
    assert pct >= 50.0
    headline = f"E-bike rider without helmet fell {pct:.1f}%"  # human scenario names (the unit's title)
    assert headline in page and headline in r.output
    for png in ("scenarios.png", "daily.png", "four_weeks.png"):
        assert (tmp_path / "weekly" / WEEK / "whole-district" / png).read_bytes()[:4] == b"\x89PNG"
    assert "cityloop-detector:v1" in page  # model versions in use
    hot = page[page.index("<h2>Hotspots</h2>"):page.index("<h2>Per district</h2>")]
    assert '<td class="t">cam0' in hot  # the cameras with most events this week
    assert "Whole district" in r.output and "agency-traffic-police" in r.output  # the table of recipients
    index = (tmp_path / "weekly" / WEEK / "index.html").read_text()
    assert 'href="agency-traffic-police/index.html"' in index
    outbox = tmp_path / "reports" / "outbox" / WEEK  # params' default sink: a folder under the workspace
    assert (outbox / "whole-district.html").is_file() and (outbox / "agency-traffic-police.html").is_file()
    only = CliRunner().invoke(app, ["report", "weekly", "--week", WEEK, "--db", f"sqlite:///{two_weeks}/events.db",
                                    "--out", str(tmp_path / "only"), "--no-pdf", "--recipient", "agency-roads"])
    assert only.exit_code == 0, only.output
    assert sorted(p.name for p in (tmp_path / "only" / WEEK).iterdir() if p.is_dir()) == [
        "agency-roads", "whole-district"]


def test_a_bad_week_is_a_clear_error(two_weeks: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CITYLOOP_ROOT", str(tmp_path))
    r = CliRunner().invoke(app, ["report", "weekly", "--week", "last", "--db", f"sqlite:///{two_weeks}/events.db",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2 and "2026-W42" in r.output



# --- recipients, four weeks, reviews, PDF and delivery, on events built directly -----------------------

FOUR = ["2026-W40", "2026-W41", "2026-W42", "2026-W43"]
HELMET = [7, 40, 30, 20, 5]  # W39 (outside the four weeks) .. W43
GARBAGE = [0, 2, 2, 3, 4]
PARKING = [0, 0, 1, 0, 2]


def _visible(page: str) -> str:
    """The text a reader sees: no style, no tags, no attributes."""
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


@pytest.fixture(scope="module")
def five_weeks(tmp_path_factory) -> Path:
    """Five weeks of events in two street offices (futian-street: cam00, whose edge events carry no
    district; nanshan-street: cam01) and one camera no event places (cam09); snapshots on disk;
    this week's helmetless alerts reviewed: 3 confirmed, 1 dismissed, 1 not reviewed."""
    tmp = tmp_path_factory.mktemp("five")
    snaps = tmp / "snaps"
    snaps.mkdir()
    rng = np.random.default_rng(0)
    store = EventStore(f"sqlite:///{tmp}/e.db")
    monday = week_start("2026-W39")
    n = 0
    for scenario, counts in (("helmetless_rider", HELMET), ("garbage_pile", GARBAGE), ("illegal_parking", PARKING)):
        for k, count in enumerate(counts):
            for i in range(count):
                n += 1
                cam, district = [("cam00", "futian-street"), ("cam00", None), ("cam01", "nanshan-street")][i % 3]
                if scenario == "illegal_parking":
                    cam, district = "cam09", None
                t = (monday + timedelta(days=7 * k + i % 7, hours=8 + i % 10, minutes=n % 60)).timestamp()
                snap = snaps / f"{n}.jpg"
                Image.fromarray(rng.integers(0, 255, (180, 320, 3), dtype=np.uint8)).save(snap)
                extra = {}
                if k == 4 and scenario == "helmetless_rider" and i < 4:
                    extra["review"] = {"verdict": "dismissed" if i == 3 else "confirmed", "by": "officer",
                                       "ts": t + 600, "note": ""}
                store.add(Event(f"ev{n:04d}", scenario, cam, t, t + 20, t, t + 1, "cityloop-detector:v3",
                                0.8123456789, [[10, 10, 50, 60]], str(snap), district, extra), [])
    store.dispose()
    return tmp


@pytest.fixture(scope="module")
def html_reports(five_weeks: Path) -> dict:
    store = EventStore(f"sqlite:///{five_weeks}/e.db")
    try:
        return weekly_report(store, five_weeks / "html", WEEK, pdf=False)
    finally:
        store.dispose()


def test_four_weeks_and_the_headline(html_reports: dict):
    s = html_reports
    four = {r["scenario"]: r for r in s["four_weeks"]}
    assert four["helmetless_rider"] == {"scenario": "helmetless_rider", "title": "E-bike rider without helmet",
                                        "weeks": FOUR, "counts": [40, 30, 20, 5], "change_pct": -87.5}
    assert four["garbage_pile"]["counts"] == [2, 2, 3, 4] and four["garbage_pile"]["change_pct"] == 100.0
    assert four["illegal_parking"]["change_pct"] is None  # nothing in the first week: no percent
    assert four["disorderly_crowd"]["counts"] == [0, 0, 0, 0]
    assert s["headline"][0] == "E-bike rider without helmet fell 87.5% over four weeks (40 → 5)"
    assert s["headline"][1] == "Garbage pile rose 100.0% over four weeks (2 → 4)"
    assert s["headline"][2] == "E-bike rider without helmet fell 75.0% week on week (20 → 5)"
    assert s["html"].endswith(f"{WEEK}/whole-district/index.html") and s["pdf"] is None


def test_each_recipient_sees_its_own_cut(html_reports: dict):
    rc = html_reports["recipients"]
    assert set(rc) == {"whole-district", "agency-traffic-police", "agency-city-management", "agency-roads",
                       "agency-public-order", "agency-public-health", "district-futian-street",
                       "district-nanshan-street"}  # no office for the camera no event places
    police = rc["agency-traffic-police"]
    assert [r["scenario"] for r in police["scenarios"]] == ["helmetless_rider"] and police["total"] == 5
    page = _visible(Path(police["html"]).read_text())
    assert "E-bike rider without helmet" in page and "Garbage pile" not in page and "Illegal parking" not in page
    assert "The loop: accuracy" not in page  # the loop's figures only in the whole district's report
    assert "The loop: accuracy" in Path(rc["whole-district"]["html"]).read_text()
    city = rc["agency-city-management"]
    assert {r["scenario"] for r in city["scenarios"]} == {"garbage_pile", "street_vending", "outdoor_advertising",
                                                         "clothes_drying"} and city["total"] == 4
    roads = rc["agency-roads"]
    assert {r["scenario"] for r in roads["scenarios"]} == {"illegal_parking", "road_waterlogging"}
    futian = rc["district-futian-street"]
    assert {c["district"] for c in futian["cameras"]} == {"futian-street"} and futian["total"] == 7
    nanshan = rc["district-nanshan-street"]
    assert {c["camera_id"] for c in nanshan["cameras"]} == {"cam01"} and nanshan["total"] == 2
    assert futian["total"] + nanshan["total"] + 2 == html_reports["total"]  # + cam09's two, district unknown
    index = Path(html_reports["index"]).read_text()
    assert all(f'href="{slug}/index.html"' in index for slug in rc)


def test_precision_titles_and_formatted_numbers(html_reports: dict):
    rows = {r["scenario"]: r for r in html_reports["scenarios"]}
    h = rows["helmetless_rider"]
    assert (h["confirmed"], h["dismissed"], h["unreviewed"], h["precision_pct"]) == (3, 1, 1, 75.0)
    assert rows["garbage_pile"]["precision_pct"] is None
    page = _visible(Path(html_reports["html"]).read_text())
    acc = page[page.index("Accuracy of the alerts"):page.index("Hotspots")]
    assert re.search(r"E-bike rider without helmet\s+5\s+3\s+1\s+1\s+75\.0%", acc)
    assert re.search(r"Garbage pile\s+4\s+0\s+0\s+4\s+—", acc)
    assert "helmetless_rider" not in page and "garbage_pile" not in page  # titles, not ids
    assert not re.search(r"\d\.\d{5,}", page)  # no raw floats
    cams = page[page.index("Per camera"):page.index("Model versions")]
    assert re.search(r"cam00\s+futian-street", cams) and re.search(r"cam09\s+-\s", cams)  # "-": truly unknown
    hot = Path(html_reports["html"]).parent
    assert (hot / "snapshots" / "hotspot-1.jpg").read_bytes()[:2] == b"\xff\xd8"  # the thumbnail travels along


def test_the_accuracy_curve_is_one_line_per_lineage():
    curve = [{"id": f"cityloop-detector:v{i}", "mAP50": 0.2 + i / 10} for i in range(1, 4)]
    curve += [{"id": f"cityloop-detector-random:v{i}", "mAP50": 0.2 + i / 20} for i in range(1, 3)]
    curve += [{"id": "cityloop-detector:v4", "mAP50": None}]
    lines = lineages(curve)
    assert set(lines) == {"cityloop-detector", "cityloop-detector-random"}
    assert [v for v, _ in lines["cityloop-detector"]] == [1, 2, 3]
    assert [v for v, _ in lines["cityloop-detector-random"]] == [1, 2]


def test_recipients_and_sinks_from_params():
    p = ReportParams.from_dict({"recipients": [{"kind": "whole"}, {"kind": "custom", "slug": "Night Shift",
                                                                   "scenarios": ["street_vending"]}],
                                "sinks": [{"type": "folder", "path": "x"}]})
    rs = resolve_recipients(p.recipients, ["futian-street"])
    assert [r.slug for r in rs] == ["whole-district", "night-shift"] and rs[1].scenarios == ("street_vending",)
    assert [r.slug for r in resolve_recipients(None, ["a b"])][-1] == "district-a-b"
    with pytest.raises(ValueError, match="unknown kind"):
        resolve_recipients([{"kind": "mayor"}], [])
    with pytest.raises(ValueError, match="report params"):
        ReportParams.from_dict({"recipient": []})


def test_the_pdf_and_its_first_page(five_weeks: Path, tmp_path: Path):
    store = EventStore(f"sqlite:///{five_weeks}/e.db")
    try:
        s = weekly_report(store, tmp_path / "pdf", WEEK, only=["agency-traffic-police"])
    finally:
        store.dispose()
    assert set(s["recipients"]) == {"whole-district", "agency-traffic-police"} and not s["warnings"]
    police = s["recipients"]["agency-traffic-police"]
    pdf = Path(police["pdf"])
    assert pdf.read_bytes()[:4] == b"%PDF" and Path(s["pdf"]).read_bytes()[:4] == b"%PDF"
    ART.mkdir(parents=True, exist_ok=True)
    doc = pdfium.PdfDocument(str(pdf))
    assert len(doc) >= 1
    page1 = doc[0].render(scale=1.5).to_pil()
    doc.close()
    page1.save(ART / "weekly-report-page1.png")
    assert page1.width < page1.height  # A4 portrait
    assert np.asarray(page1.convert("L"), dtype=float).std() > 10  # not a blank page
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(Path(police["html"]).resolve().as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(ART / "weekly-report.png"), full_page=True)
        shown = page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        browser.close()
    assert shown  # charts and snapshot thumbnails are found beside the page
    shot = np.asarray(Image.open(ART / "weekly-report.png").convert("L"), dtype=float)
    assert shot.std() > 10


def test_no_chromium_still_writes_the_html(five_weeks: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(report, "CHROMIUM", str(tmp_path / "no-chromium"))
    store = EventStore(f"sqlite:///{five_weeks}/e.db")
    try:
        s = weekly_report(store, tmp_path / "nopdf", WEEK, only=["agency-roads"])
    finally:
        store.dispose()
    assert s["pdf"] is None and Path(s["html"]).is_file()
    assert any("Chromium not found" in w for w in s["warnings"])
    assert "Chromium not found" in s["recipients"]["agency-roads"]["pdf_error"]


class _Receiver(BaseHTTPRequestHandler):
    got: list[tuple[dict, bytes]] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.got.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_delivery_to_a_folder_and_a_signed_webhook_and_a_dead_one(html_reports: dict, tmp_path: Path,
                                                                   monkeypatch):
    monkeypatch.setenv("REPORT_SECRET", "s3cret-value")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.got.clear()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    specs = [{"type": "webhook", "name": "dead", "url": f"http://127.0.0.1:{dead}/", "secret_env": "REPORT_SECRET"},
             {"type": "folder", "path": "outbox"},
             {"type": "webhook", "name": "office", "url": f"http://127.0.0.1:{server.server_port}/r",
              "secret_env": "REPORT_SECRET"},
             {"type": "webhook", "name": "unsigned", "url": "http://127.0.0.1:1/", "secret_env": "NOT_SET_ANYWHERE"}]
    try:
        rows = {r["sink"]: r for r in deliver(html_reports, specs, tmp_path)}
    finally:
        server.shutdown()
    assert not rows["dead"]["ok"] and "dead failed" in rows["dead"]["error"]
    assert not rows["unsigned"]["ok"] and "NOT_SET_ANYWHERE" in rows["unsigned"]["error"]
    assert "s3cret-value" not in json.dumps(rows)  # the secret is never in a report
    assert rows["folder"]["ok"] and rows["office"]["ok"]
    box = tmp_path / "outbox" / WEEK
    assert sorted(p.name for p in box.iterdir()) == sorted(f"{slug}.html" for slug in html_reports["recipients"])
    assert "data:image/png;base64," in (box / "whole-district.html").read_text()  # stands alone
    assert len(_Receiver.got) == len(html_reports["recipients"])
    for headers, body in _Receiver.got:
        assert headers[SIGNATURE_HEADER] == sign("s3cret-value", body)
        assert headers["X-Cityloop-Report"].startswith(f"{WEEK}/")
    assert html_reports["deliveries"] == list(rows.values())
