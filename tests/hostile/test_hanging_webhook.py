"""A webhook receiver that accepts the connection and never answers does not slow the frame loop.

Alerts leave the frame loop through the dispatcher's bounded queue and its background worker; the
event is stored before any delivery, so a hung receiver costs neither frames nor events. Run side by
side on the same clip, frame by frame: the frame loop (truth boxes, like a detector's, through
tracker → rules → events → snapshots) with no alert sink, and with a webhook to a receiver that hangs.
The test asserts that no frame waits on the receiver (a send in the loop would hold a frame for the
whole send timeout); the frames/s ratio is printed, not asserted, as speed belongs to benchmarks/.
The receiver is a real listening socket on 127.0.0.1 that accepts and never replies.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from cityloop.analysis.alerts import Dispatcher, WebhookSink
from cityloop.analysis.engine import Analyzer
from cityloop.analysis.evaluate import unix
from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.patrol import frame_files, truth_frames
from cityloop.analysis.store import EventStore
from cityloop.scenarios.zones import load_zones, read_cameras
from cityloop.scenes.video import generate_video
from tests.analysis.conftest import BUSY, DETECTOR_NOISE

SECRET = "test-secret-not-real"
SEND_TIMEOUT_S = 30.0  # how long one send to the hung receiver waits


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


def _analyzer(clip: Path, tmp: Path, sinks: list) -> Analyzer:
    tmp.mkdir(parents=True)
    cams = read_cameras(clip)
    return Analyzer(AnalysisParams(), Dispatcher(EventStore(f"sqlite:///{tmp}/events.db"), sinks, queue_size=8),
                    load_zones(cams), {c["camera_id"]: c for c in cams}, snapshots=tmp / "snapshots")


def _interleaved(clip: Path, arms: dict[str, Analyzer]) -> tuple[dict[str, float], dict[str, float]]:
    """frames/s of each arm's frame loop (tracker → rules → events → snapshots → alerts), and its slowest
    single frame in seconds; the arms fed the same frame one after the other, so the machine's load at any
    moment weighs on both alike."""
    spent = dict.fromkeys(arms, 0.0)
    worst = dict.fromkeys(arms, 0.0)
    frames = 0
    for cam in read_cameras(clip):
        cid, fps, t0 = cam["camera_id"], float(cam["fps"]), unix(cam["start_ts"])
        files = {int(p.stem): p for p in frame_files(clip, cid) if p.stem.isdigit()}
        for index, dets in truth_frames(clip, cid, DETECTOR_NOISE):
            image = files[index].read_bytes()
            for name, analyzer in arms.items():
                t = time.perf_counter()
                analyzer.on_detections(cid, t0 + index / fps, index, dets, "cityloop-detector:v1", image)
                took = time.perf_counter() - t
                spent[name] += took
                worst[name] = max(worst[name], took)
            frames += 1
    return {name: frames / s for name, s in spent.items()}, worst


@pytest.mark.slow
def test_a_hanging_webhook_receiver_does_not_slow_the_frame_loop(clip: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CITYLOOP_ALERT_SECRET", SECRET)
    workers_before = {t for t in threading.enumerate() if t.name == "alert-dispatcher"}
    hung = HangingReceiver()
    try:
        warm = _analyzer(clip, tmp_path / "warm", [])
        _interleaved(clip, {"warm": warm})  # page cache and first-call costs, for neither arm
        warm.dispatcher.stop(timeout=1)
        hook = WebhookSink(f"http://127.0.0.1:{hung.port}/alerts", name="ops", retries=0, timeout_s=SEND_TIMEOUT_S)
        arms = {"none": _analyzer(clip, tmp_path / "none", []), "hung": _analyzer(clip, tmp_path / "hung", [hook])}
        fps, worst = _interleaved(clip, arms)
        assert hung.accepted >= 1, "the webhook was never called: the test would prove nothing"
        print(f"frames/s: {fps['none']:.1f} without alerts, {fps['hung']:.1f} with a hanging webhook "
              f"({fps['hung'] / fps['none']:.2f}); slowest frame {worst['hung'] * 1000:.1f} ms")
        # Not a speed test (that is benchmarks/'s job, and a ratio of two timings flakes on a shared CI
        # machine): a send made inside the frame loop would hold one frame for the whole 30 s timeout.
        # No frame may take a tenth of that.
        assert worst["hung"] < SEND_TIMEOUT_S / 10, f"a frame waited {worst['hung']:.1f} s on the receiver"
        raised, d = arms["hung"].raised, arms["hung"].dispatcher
        assert len(raised) >= 10  # enough events that a delivery in the loop would have cost minutes
        assert len(arms["none"].raised) == len(raised)  # the same frames, the same events
        assert not d.stop(timeout=0.5)  # the worker is still stuck on the receiver...
        states = {r["event_id"]: r["state"] for r in d.store.deliveries()}
        assert set(states) == {e.id for e in raised}  # ...and every event is stored, its alert
        assert set(states.values()) == {"pending"}  # pending for a later pass: nothing lost
        arms["none"].dispatcher.stop(timeout=1)
    finally:
        hung.stop()
    # stopped dispatchers end once their hung send fails (the receiver is gone): no worker outlives its run
    deadline = time.monotonic() + 10
    while {t for t in threading.enumerate() if t.name == "alert-dispatcher"} - workers_before:
        assert time.monotonic() < deadline, "a stopped dispatcher's worker is still running"
        time.sleep(0.1)
