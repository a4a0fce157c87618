"""A webhook receiver that accepts the connection and never answers does not slow the frame loop.

Alerts leave the frame loop through the dispatcher's bounded queue and its background worker; the
event is stored before any delivery, so a hung receiver costs neither frames nor events. Measured
side by side in one run on the same clip: frames/s of the patrol loop (truth boxes, like a detector's,
through tracker → rules → events → snapshots) with no sink, and with a webhook to a receiver that
hangs. The receiver is a real listening socket on 127.0.0.1 that accepts and never replies.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from cityloop.analysis.alerts import Dispatcher, WebhookSink
from cityloop.analysis.engine import Analyzer
from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.patrol import patrol_camera
from cityloop.analysis.store import EventStore
from cityloop.scenarios.zones import load_zones, read_cameras
from cityloop.scenes.video import generate_video
from tests.analysis.conftest import BUSY, DETECTOR_NOISE

SECRET = "test-secret-not-real"


class HangingReceiver:
    """Accepts every connection, reads nothing, answers nothing (until stopped)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)
            self.accepted += 1

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hang") / "busy-rain"  # 4 cameras x 120 s at 2 fps: 960 frames
    generate_video("field", 4, 120, 2, 21, out, rates=BUSY, condition="rain", workers=1)
    return out


def _patrol(clip: Path, tmp: Path, sinks: list) -> tuple[float, Dispatcher, list]:
    """frames/s of the frame loop over every camera of the clip (the dispatcher is left running)."""
    tmp.mkdir(parents=True)
    dispatcher = Dispatcher(EventStore(f"sqlite:///{tmp}/events.db"), sinks, queue_size=8)
    cams = read_cameras(clip)
    analyzer = Analyzer(AnalysisParams(), dispatcher, load_zones(cams), snapshots=tmp / "snapshots")
    frames, t0 = 0, time.perf_counter()
    for cam in cams:
        frames += patrol_camera(analyzer, clip, cam, "truth", "cityloop-detector:v1", "hang",
                                noise=DETECTOR_NOISE)["frames"]
    return frames / (time.perf_counter() - t0), dispatcher, analyzer.raised


@pytest.mark.slow
def test_a_hanging_webhook_receiver_does_not_slow_the_frame_loop(clip: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CITYLOOP_ALERT_SECRET", SECRET)
    hung = HangingReceiver()
    try:
        _patrol(clip, tmp_path / "warm", [])  # page cache and imports warm for both arms
        without, with_hook, runs = [], [], []
        for i in range(3):  # alternated, best of three each: the two cores' noise is not the webhook's
            fps, d, _ = _patrol(clip, tmp_path / f"none{i}", [])
            without.append(fps)
            d.stop(timeout=1)
            hook = WebhookSink(f"http://127.0.0.1:{hung.port}/alerts", name="ops", retries=0, timeout_s=30.0)
            fps, d, raised = _patrol(clip, tmp_path / f"hang{i}", [hook])
            with_hook.append(fps)
            runs.append((d, raised))
        assert hung.accepted >= 1, "the webhook was never called: the test would prove nothing"
        ratio = max(with_hook) / max(without)
        print(f"frames/s: {max(without):.1f} without alerts, {max(with_hook):.1f} with a hanging webhook ({ratio:.2f})")
        assert ratio >= 0.9, f"frames/s with a hanging webhook {max(with_hook):.1f} vs {max(without):.1f} without"
        for d, raised in runs:
            assert len(raised) >= 10  # enough events that a delivery in the loop would have cost minutes
            assert not d.stop(timeout=0.5)  # the worker is still stuck on the receiver...
            states = {r["event_id"]: r["state"] for r in d.store.deliveries()}
            assert set(states) == {e.id for e in raised}  # ...and every event is stored, its alert
            assert set(states.values()) == {"pending"}  # pending for a later pass: nothing lost
    finally:
        hung.stop()
