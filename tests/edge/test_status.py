"""`cityloop edge status`: every node from its status file; stale heartbeats show as down."""

from __future__ import annotations

import json
import os
import time

from typer.testing import CliRunner

from cityloop.cli import app
from cityloop.edge.node import node_dir, write_json


def test_status_shows_fresh_nodes_up_and_stale_ones_down(tmp_path, monkeypatch):
    monkeypatch.setenv("CITYLOOP_ROOT", str(tmp_path))
    base = {"port": 1, "url": "http://127.0.0.1:1", "state": "serving", "model_version": "m:v1", "fps": 4.0,
            "latency_p50_ms": 9.5, "queue_depth": 3, "acked": 7, "frames": 100, "stale_s": 10}
    for name, beat, pid in (("alive", time.time(), os.getpid()), ("stale", time.time() - 60, os.getpid()),
                            ("dead", time.time(), 2 ** 22 + 1)):
        node_dir(tmp_path, name).mkdir(parents=True)
        write_json(node_dir(tmp_path, name) / "status.json", {**base, "name": name, "heartbeat": beat, "pid": pid})
    res = CliRunner().invoke(app, ["edge", "status", "--json"])
    assert res.exit_code == 0, res.output
    up = {n["name"]: n["up"] for n in json.loads(res.stdout)}
    assert up == {"alive": True, "stale": False, "dead": False}
    table = CliRunner().invoke(app, ["edge", "status"], env={"COLUMNS": "160"})
    assert "alive" in table.stdout and "down" in table.stdout and "m:v1" in table.stdout
