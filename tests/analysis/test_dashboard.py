"""The dashboard in headless Chromium: live events, per-camera versions and health, accuracy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from cityloop.analysis.dashboard import Dashboard
from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.patrol import run_patrol
from cityloop.analysis.store import EventStore
from cityloop.labeling.browser import CHROMIUM, FLAGS

REPO = Path(__file__).resolve().parents[2]
SHOT = REPO / "reports" / "test-artifacts" / "dashboard.png"


@pytest.fixture
def dashboard(model_ws, clips, tmp_path: Path):
    """Events of a patrol, one healthy edge node serving v2 for camera `gate-cam`, the model_ws registry."""
    db = f"sqlite:///{tmp_path}/events.db"
    run_patrol(Path("."), clips["busy-night"], "truth", AnalysisParams(), db, snapshots=tmp_path / "snaps")
    node = tmp_path / ".cityloop" / "edge" / "node-a"
    node.mkdir(parents=True)
    (node / "status.json").write_text(json.dumps({
        "name": "node-a", "state": "running", "model_version": "cityloop-detector:v2", "fps": 4.2, "errors": 0,
        "heartbeat": time.time(), "stale_s": 600, "streams": ["gate-cam=/data/gate.mp4"]}))
    dash = Dashboard(EventStore(db), model_ws.root, edge_root=tmp_path).start()
    try:
        yield dash
    finally:
        dash.stop()
        dash.store.dispose()


@pytest.mark.slow
def test_dashboard_shows_events_versions_and_accuracy_in_chromium(dashboard: Dashboard, model_ws):
    from playwright.sync_api import sync_playwright

    api = httpx.get(f"{dashboard.url}/api/state", timeout=10).json()
    assert api["events"] and api["accuracy"]
    with_snap = next(e for e in api["events"] if e["snapshot"])
    assert httpx.get(f"{dashboard.url}/snapshot/{with_snap['id']}", timeout=10).content[:2] == b"\xff\xd8"
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(dashboard.url, timeout=30_000)
            events = page.inner_text("#events")
            cameras = page.inner_text("#cameras")
            scenarios = page.inner_text("#scenarios")
            body = page.inner_text("body")
            page.screenshot(path=str(SHOT), full_page=True)
        finally:
            browser.close()
    assert "Street vending at night" in events and "truth" in events  # live events, human names, model version
    from cityloop.scenarios import registry
    assert all(sc.title in scenarios for sc in registry().scenarios.values())  # every scenario has its row
    assert "gate-cam" in cameras and "cityloop-detector:v2" in cameras and "up" in cameras  # node's camera
    assert model_ws.model_id in body  # the registry's versions on the accuracy panel
    assert SHOT.stat().st_size > 10_000
