"""An edge node that does not fall over: blue/green swaps without a frame going undetected, a
candidate that cannot start leaves the old version serving (and says so in `edge status`), a dead
server is restarted, a failing or blocked analysis sink never stops the frame loop.

These run the real EdgeNode loop (in a thread) against a fake `bentoml serve` (tests/edge/
fake_bento.py: same HTTP surface, starts in milliseconds) so that swaps and failures take seconds;
the real bentoml servers swap in the slow test of test_rollout.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cityloop.bento.serving import Server, free_port, stop_server, wait_ready
from cityloop.cli import app
from cityloop.core.procs import alive, start_time
from cityloop.edge.node import EdgeNode, NodeConfig, assign, node_dir, read_json

from .conftest import wait_for

FAKE = str(Path(__file__).with_name("fake_bento.py"))


class Recorder:
    """An analysis sink that records every call (and can be told to raise or block)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str, int]] = []  # camera, frame index, version, detections
        self.raise_every = 0  # raise on every n-th call (0: never)
        self.block = threading.Event()  # set: the next call blocks until `release` is set
        self.release = threading.Event()
        self.n = 0

    def on_detections(self, camera_id, ts, frame_index, detections, model_version, image=None) -> None:
        self.n += 1
        if self.raise_every and self.n % self.raise_every == 0:
            raise RuntimeError("database is locked")
        if self.block.is_set():
            self.release.wait(30)
        self.calls.append((camera_id, frame_index, model_version, len(detections)))


SINK = Recorder()  # the node loads it by name: --sink tests.edge.test_supervision:SINK


class FakeNode(EdgeNode):
    """The real node loop; its servers are tests/edge/fake_bento.py processes instead of `bentoml serve`."""

    launches: list[str]

    def start_version(self, version: str, port: int) -> tuple[Server, str]:
        self.launches = getattr(self, "launches", []) + [version]
        log_path = self.cfg.dir / f"fake-{port}.log"
        with open(log_path, "ab") as fh:
            proc = subprocess.Popen([sys.executable, FAKE, str(port), version], stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        server = Server(proc.pid, port, log_path, version, proc=proc, started=start_time(proc.pid))
        try:
            wait_ready(server, 20, self.stop)
        except BaseException:
            stop_server(server, grace=2)
            raise
        return server, f"fake:{version}"


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    return folder


@pytest.fixture
def run_node(tmp_path: Path, frames: Path):
    """Start a FakeNode in a thread (assigned `v1`); stopped and joined in teardown."""
    started: list[tuple[FakeNode, threading.Thread]] = []

    def start(**overrides) -> FakeNode:
        global SINK
        SINK = Recorder()
        root = tmp_path / "ws"
        version = overrides.pop("version", "v1")
        settings = {"streams": [f"cam={frames}"], "loop": True, "max_fps": 100, **overrides}
        cfg = NodeConfig(root=root, name="n1", port=free_port(), sink="tests.edge.test_supervision:SINK",
                         heartbeat_s=0.2, retry_base_s=1.0, retry_max_s=8.0, **settings)
        assign(root, "n1", version)
        node = FakeNode(cfg)
        t = threading.Thread(target=node.run, daemon=True)
        t.start()
        started.append((node, t))
        wait_for(lambda: node.state == "serving" and node.version == "v1", 30, "the node serving v1")
        return node

    yield start
    for node, t in started:
        node.stop.set()
        t.join(30)
        assert not t.is_alive(), "the node did not stop"


def test_frames_of_several_cameras_share_a_request_and_a_broken_one_costs_only_itself(run_node, tmp_path):
    """Without a frame-rate cap the node sends one frame of each camera per request; a request the server
    refuses as bad input (one broken image among them) is retried frame by frame: every other frame still
    reaches the sink, each camera's in order, and the broken one is the only error."""
    other = tmp_path / "other"
    other.mkdir()
    for i in range(12):
        cv2.imwrite(str(other / f"g{i:03d}.png"), np.full((48, 48, 3), i * 10, np.uint8))
    (other / "g005.png").write_bytes(b"BROKEN camera image")
    node = run_node(streams=[f"cam={tmp_path / 'frames'}", f"cam2={other}"], loop=False, max_fps=0)
    wait_for(lambda: node.streams_done, 20, "both streams to be done")
    wait_for(lambda: len(SINK.calls) == 23, 10, "every good frame in the sink")
    for cam, expected in (("cam", list(range(12))), ("cam2", [i for i in range(12) if i != 5])):
        assert [i for c, i, _, _ in SINK.calls if c == cam] == expected
    assert node.errors == 1 and node.last_error["status"] == 400
    log = "".join(p.read_text() for p in node.cfg.dir.glob("fake-*.log"))
    assert "detect_raw frames 2" in log  # the two cameras' frames went together


def _status(node: EdgeNode) -> dict:
    return read_json(node_dir(node.cfg.root, node.cfg.name) / "status.json") or {}


def test_blue_green_swap_leaves_no_frame_without_detections(run_node):
    node = run_node()
    old = node.server
    wait_for(lambda: len(SINK.calls) >= 20, 20, "frames through v1")
    assign(node.cfg.root, "n1", "v2-slow")  # takes 1.5 s to get ready: frames must go on meanwhile
    wait_for(lambda: node.launch is not None, 5, "the swap to start")
    during = len(SINK.calls)
    wait_for(lambda: node.version == "v2-slow", 30, "the node serving v2-slow")
    swapped_at = len(SINK.calls)
    wait_for(lambda: len(SINK.calls) >= swapped_at + 20, 20, "frames through v2-slow")
    assert swapped_at - during >= 10, "the frame loop stalled while the new server started"
    assert node.errors == 0 and node.last_error is None  # no request failed across the swap
    versions = [v for _, _, v, _ in SINK.calls]
    assert all(n > 0 for *_, n in SINK.calls)  # every frame got its detections
    first_new = versions.index("v2-slow")
    assert set(versions[:first_new]) == {"v1"} and set(versions[first_new:]) == {"v2-slow"}
    assert node.server.port != old.port and node.swaps == 1
    wait_for(lambda: not old.alive(), 15, "the old server to be stopped after the switch")
    st = _status(node)
    assert st["model_version"] == "v2-slow" and st["url"].endswith(f":{node.server.port}")
    server_json = read_json(node.cfg.dir / "server.json")
    assert server_json["pid"] == node.server.pid and server_json["started"] == start_time(node.server.pid)


def test_a_candidate_that_cannot_start_leaves_the_old_version_serving_and_is_reported(run_node, monkeypatch):
    node = run_node()
    assign(node.cfg.root, "n1", "v2-bad")
    wait_for(lambda: (_status(node).get("last_failure") or {}).get("version") == "v2-bad", 20, "the failure in status")
    before = len(SINK.calls)
    time.sleep(3.5)  # backoff 1 s, 2 s, 4 s...: at most 3 tries in this time, not one per half second
    assert node.launches.count("v2-bad") <= 3
    assert len(SINK.calls) > before + 50  # v1 kept serving all along
    assert node.version == "v1" and node.state == "serving" and node.server.alive()
    st = _status(node)
    failure = st["last_failure"]
    assert "not an ONNX file" in failure["reason"] and failure["attempts"] >= 1 and failure["retry_at"] > failure["ts"]
    assert st["model_version"] == "v1" and "v2-bad" in st["failing_versions"]

    monkeypatch.setenv("CITYLOOP_ROOT", str(node.cfg.root))
    out = CliRunner().invoke(app, ["edge", "status"], env={"COLUMNS": "400"})
    assert out.exit_code == 0, out.output
    assert "v2-bad" in out.stdout and "not an ONNX file" in out.stdout
    as_json = json.loads(CliRunner().invoke(app, ["edge", "status", "--json"]).stdout)
    assert as_json[0]["last_failure"]["version"] == "v2-bad"

    assign(node.cfg.root, "n1", "v3")  # a good version after the bad one is taken at once
    wait_for(lambda: node.version == "v3", 20, "the node serving v3")


def test_a_dead_server_is_restarted_and_the_death_reported(run_node):
    node = run_node()
    os.killpg(node.server.pid, signal.SIGKILL)
    wait_for(lambda: node.restarts == 1, 10, "the death to be noticed")
    wait_for(lambda: node.state == "serving" and node.server is not None and node.server.alive(), 20,
             "the server restarted")
    n = len(SINK.calls)
    wait_for(lambda: len(SINK.calls) > n + 10, 20, "frames again")
    failure = _status(node)["last_failure"]
    assert failure["kind"] == "died" and failure["version"] == "v1" and "resolved" in failure


def test_a_sink_that_raises_does_not_stop_the_node_and_shows_in_status(run_node):
    node = run_node(sink_retries=1)
    SINK.raise_every = 3
    frames_before = node.frames
    wait_for(lambda: (_status(node).get("sink") or {}).get("errors", 0) >= 5, 20, "sink errors in status")
    assert node.frames > frames_before + 10 and node.state == "serving"
    sink = _status(node)["sink"]
    assert "database is locked" in sink["last_error"]["error"] and sink["delivered"] > 0
    assert node.errors == 0  # the sink's failures are not the server's


def test_a_blocked_sink_is_buffered_with_a_bound_and_the_frame_loop_goes_on(run_node):
    node = run_node(sink_queue=8)
    SINK.block.set()
    wait_for(lambda: (_status(node).get("sink") or {}).get("dropped", 0) > 0, 20, "frames dropped for the sink")
    frames = node.frames
    wait_for(lambda: node.frames > frames + 20, 20, "frames detected while the sink is blocked")
    st = _status(node)["sink"]
    assert st["queued"] <= 8 and st["busy_s"] is not None
    SINK.block.clear()
    SINK.release.set()
    calls = len(SINK.calls)
    wait_for(lambda: len(SINK.calls) > calls + 10, 20, "the sink to catch up")


def test_adopt_and_stop_leave_a_recycled_pid_alone(tmp_path: Path):
    """server.json names a pid whose process started at another time: someone else's process now."""
    from cityloop.bento.serving import adopt_server
    from cityloop.core.procs import ManagedProcess

    # argv[0] says bentoml, so only the start time tells it apart from our server
    proc = subprocess.Popen(["bash", "-c", "exec -a bentoml-serve sleep 60"], start_new_session=True)
    try:
        wait_for(lambda: "bentoml" in Path(f"/proc/{proc.pid}/cmdline").read_text(), 5, "the exec")
        real = start_time(proc.pid)
        port = free_port()  # nothing listens there: a server of ours there would be stopped as not ready
        assert adopt_server(proc.pid, port, "x", tmp_path / "log", started=real + 1) is None
        stop_server(Server(proc.pid, port, tmp_path / "log", "x", started=real + 1), grace=1)
        pf = ManagedProcess("serve", tmp_path, ["bentoml-serve"], marker="bentoml")
        pf.pid_file.write_text(f"{proc.pid} {real + 1}")
        assert pf.pid() is None and not pf.stop(timeout=1)
        time.sleep(0.3)
        assert alive(proc.pid), "a recycled pid was signalled"
        # the same pid with its true start time is ours: not ready on its port, so it is stopped
        assert adopt_server(proc.pid, port, "x", tmp_path / "log", started=real) is None
        wait_for(lambda: proc.poll() is not None, 10, "our own unready server to be stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
