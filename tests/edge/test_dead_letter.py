"""The outbox never jams: uploads stay under the inbox's body limit, an example that can never fit
or that the center keeps refusing goes to the dead letter, and everything behind it is delivered."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cityloop.bento.serving import free_port
from cityloop.edge.node import NodeConfig, Uploader
from cityloop.edge.outbox import HardExample, Outbox

from .conftest import wait_for


def _example(i: int, size: int) -> HardExample:
    return HardExample("cam", "m:v1", "novelty", 0.5, 1000.0 + i, i, os.urandom(size))


class Center:
    """A stand-in inbox: refuses bodies over `max_body` (413), and either the whole batch (400) or just
    the example (200 without acking it) when it holds a poisoned sha256; acks everything else."""

    def __init__(self, max_body: int, poisoned: set[str], whole_batch: bool) -> None:
        self.bodies: list[int] = []
        self.sent: list[str] = []
        self.acked: set[str] = set()
        center = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers["Content-Length"])
                raw = self.rfile.read(n)
                center.bodies.append(n)
                if n > max_body:
                    return self._send(413, {"error": "body too large"})
                shas = [ex["sha256"] for ex in json.loads(raw)["examples"]]
                center.sent += shas
                bad = [s for s in shas if s in poisoned]
                if bad and whole_batch:
                    return self._send(400, {"error": f"bad example {bad[0][:12]}"})
                ok = [s for s in shas if s not in poisoned]
                center.acked.update(ok)
                self._send(200, {"acked": ok, "errors": [f"{s}: ts must be a number" for s in bad]})

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_batches_are_split_by_encoded_size(tmp_path: Path):
    ob = Outbox(tmp_path / "outbox.db")
    for i in range(6):
        ob.add(_example(i, 30_000))  # about 40 KB each once base64-encoded in JSON
    big = _example(99, 200_000)
    batch, oversized = ob.batch(limit=8, max_bytes=100_000)
    assert len(batch) == 2 and not oversized
    assert 256 + sum(ex.encoded_size() for ex in batch) <= 100_000
    body = json.dumps({"node": "n1", "examples": [ex.upload_item() for ex in batch]})
    assert len(body) <= 100_000
    ob.ack([ex.sha256 for ex in ob.pending(8)])
    ob.add(big)
    ob.add(_example(7, 1000))
    batch, oversized = ob.batch(limit=8, max_bytes=100_000)
    assert [ex.sha256 for ex in oversized] == [big.sha256] and len(batch) == 1  # the rest still goes
    ob.close()


@pytest.mark.parametrize("whole_batch", [False, True], ids=["example-refused", "batch-refused"])
def test_refused_and_oversized_examples_go_to_the_dead_letter_and_the_rest_is_delivered(tmp_path: Path,
                                                                                        whole_batch: bool):
    ob = Outbox(tmp_path / ".cityloop" / "edge" / "n1" / "outbox.db")
    good = [_example(i, 20_000) for i in range(7)]
    poison = _example(50, 20_000)
    huge = _example(60, 150_000)  # can never fit under the 100 KB limit below
    for ex in good[:2] + [poison] + good[2:4] + [huge] + good[4:]:
        ob.add(ex)
    center = Center(100_000, {poison.sha256}, whole_batch)
    cfg = NodeConfig(root=tmp_path, name="n1", port=1, center=f"http://127.0.0.1:{center.port}", upload_batch=4,
                     upload_interval_s=0.01, upload_max_bytes=100_000, max_attempts=3)
    stop = threading.Event()
    up = Uploader(cfg, stop)
    up.start()
    try:
        wait_for(lambda: ob.stats()["pending"] == 0, 30, "the outbox to drain")
    finally:
        stop.set()
        up.join(10)
        center.close()
    assert center.acked == {ex.sha256 for ex in good}  # everything behind the bad ones arrived
    assert max(center.bodies) <= 100_000  # no request over the inbox's limit, so no 413
    assert huge.sha256 not in center.sent  # dead-lettered at once, never sent
    assert center.sent.count(poison.sha256) >= 3
    dead = {d["sha256"]: d for d in ob.dead_letters()}
    assert set(dead) == {poison.sha256, huge.sha256}
    assert dead[poison.sha256]["refusals"] == 3 and "refused 3 times" in dead[poison.sha256]["reason"]
    assert "body limit" in dead[huge.sha256]["reason"]
    assert ob.stats() == {"pending": 0, "acked": 7, "dead": 2}
    assert ob.requeue([huge.sha256]) == 1 and ob.stats()["pending"] == 1  # an operator can put one back
    assert hashlib.sha256(ob.pending(1)[0].image).hexdigest() == huge.sha256  # its bytes were kept
    ob.close()


def test_an_older_outbox_gains_the_dead_letter_without_losing_rows(tmp_path: Path):
    import sqlite3

    path = tmp_path / "outbox.db"
    with sqlite3.connect(path) as db:  # the schema before the dead letter
        db.executescript("""CREATE TABLE hard_examples (sha256 TEXT PRIMARY KEY, camera_id TEXT NOT NULL,
            model_version TEXT NOT NULL, reason TEXT NOT NULL, score REAL NOT NULL, ts REAL NOT NULL,
            frame_index INTEGER NOT NULL, image BLOB, selected REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            acked REAL);""")
        db.execute("INSERT INTO hard_examples VALUES ('a', 'cam', 'm', 'novelty', 0.5, 1, 1, x'00', 1, 2, NULL)")
    ob = Outbox(path)
    assert ob.stats() == {"pending": 1, "acked": 0, "dead": 0}
    assert ob.refused(["a"], "HTTP 400", max_attempts=1) == ["a"] and ob.stats()["dead"] == 1
    ob.close()
