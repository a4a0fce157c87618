"""A stand-in for `bentoml serve` in the edge node's supervision tests (tests/edge/test_supervision.py):
the same HTTP surface (/readyz, /detect, /detect_raw, /info) answered in microseconds, so a test can start, swap,
kill and fail servers many times a second. Real bentoml servers are covered by the slow tests.

    python fake_bento.py PORT VERSION

A VERSION containing "bad" exits at once (a candidate that cannot start); "slow" waits 1.5 s before
listening (a server that takes a while to get ready).
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    port, version = int(sys.argv[1]), sys.argv[2]
    if "bad" in version:
        print(f"cannot load the model of {version}: not an ONNX file", flush=True)
        sys.exit(3)
    if "slow" in version:
        time.sleep(1.5)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._send(200 if self.path == "/readyz" else 404, {})

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/detect_raw":  # one frame, or a multipart/mixed body of frames: one box each
                kind = self.headers.get("Content-Type", "")
                n = raw.count(b"--" + kind.split("boundary=")[1].encode() + b"\r\n") if "boundary=" in kind else 1
                print(f"detect_raw frames {n}", flush=True)
                if b"BROKEN" in raw:  # a broken camera image fails its whole request, as the real service does
                    return self._send(400, {"error": "not a decodable JPEG/PNG image"})
                return self._send(200, [{"model_version": version, "boxes": [[1.0, 2.0, 30.0, 40.0, 0.9, 0]],
                                         "width": 64, "height": 64} for _ in range(n)])
            body = json.loads(raw or b"{}")
            if self.path == "/info":
                return self._send(200, {"model_version": version, "classes": ["car"]})
            dets = [{"box": [1.0, 2.0, 30.0, 40.0], "score": 0.9, "label": "car", "cls": 0}]
            self._send(200, [{"model_version": version, "detections": dets} for _ in body.get("images", [])])

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
