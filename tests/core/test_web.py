"""cityloop.core.web: a real ThreadingHTTPServer on 127.0.0.1 answering through send_json / send_bytes."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cityloop.core.web import send_bytes, send_json


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/json":
            return send_json(self, 201, {"ok": True, "day": date(2024, 5, 1)}, headers={"X-Extra": "1"}, default=str)
        send_bytes(self, 404, "text/plain", b"not found")


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _get(srv: ThreadingHTTPServer, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=5)
    conn.request("GET", path)
    return conn.getresponse()


def test_send_json_sets_type_length_and_security_headers(server):
    r = _get(server, "/json")
    body = r.read()
    assert r.status == 201
    assert r.getheader("Content-Type") == "application/json"
    assert r.getheader("Content-Length") == str(len(body))
    assert r.getheader("X-Content-Type-Options") == "nosniff" and r.getheader("X-Extra") == "1"
    assert json.loads(body) == {"ok": True, "day": "2024-05-01"}


def test_send_bytes_answers_other_types(server):
    r = _get(server, "/missing")
    assert (r.status, r.getheader("Content-Type"), r.read()) == (404, "text/plain", b"not found")
    assert r.getheader("X-Content-Type-Options") == "nosniff"
