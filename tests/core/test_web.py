"""cityloop.core.web: a real uvicorn server on 127.0.0.1 (an ephemeral port) refusing hostile clients.

Raw sockets with short client timeouts prove that a refusal comes at once, without the server
reading (or waiting for) a body it has already refused, and that a client that stalls is dropped.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from datetime import date

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityloop.core.web import HttpServer, Limits, json_response, make_app, read_json, require_bearer, token_from
from tests.rawhttp import send_raw

LIMITS = Limits(max_body=1000, body_idle_s=0.5, body_total_s=5.0, header_s=0.5, concurrency=3)
TOKEN = "t0ken"


async def echo(request: Request) -> Response:
    require_bearer(request, TOKEN)
    return json_response({"got": await read_json(request), "day": date(2024, 5, 1)}, 201, default=str)


def hello(request: Request) -> Response:
    return json_response({"ok": True})


@pytest.fixture
def server() -> Iterator[HttpServer]:
    srv = HttpServer(make_app([Route("/echo", echo, methods=["POST"]), Route("/", hello)], LIMITS), limits=LIMITS)
    srv.start()
    yield srv
    srv.stop()


def raw(srv: HttpServer, data: bytes, timeout: float = 3.0) -> tuple[bytes, float]:
    return send_raw(srv.server_address, data, timeout)


def post_head(length: str | None, ctype: str = "application/json") -> bytes:
    head = f"POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {ctype}\r\n"
    return (head + (f"Content-Length: {length}\r\n" if length is not None else "") + "\r\n").encode()


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_a_json_post_is_answered_with_security_headers_and_no_cors(server):
    r = httpx.post(server.url + "/echo", json={"a": 1}, headers={"Authorization": f"Bearer {TOKEN}",
                                                                  "Origin": "https://evil.example"})
    assert r.status_code == 201 and r.json() == {"got": {"a": 1}, "day": "2024-05-01"}
    assert r.headers["content-type"] == "application/json" and r.headers["x-content-type-options"] == "nosniff"
    assert not [h for h in r.headers if h.startswith("access-control-")]  # cross-origin reads refused by browsers
    assert "server" not in r.headers
    assert server.server_address[0] == "127.0.0.1"


def test_no_token_text_plain_and_non_json_are_refused_with_a_reason(server):
    url = server.url + "/echo"
    assert httpx.post(url, json={"a": 1}).status_code == 401
    assert httpx.post(url, json={"a": 1}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.post(url, content=b'{"a": 1}', headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]  # a cross-site form post
    r = httpx.post(url, content=b"{nope", headers={"Authorization": f"Bearer {TOKEN}",
                                                    "Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    assert httpx.get(server.url + "/missing").json() == {"error": "Not Found"}


@pytest.mark.parametrize("length, want", [(None, 411), ("-1", 400), ("12x", 400)])
def test_a_missing_negative_or_bogus_length_is_refused_at_once(server, length, want):
    reply, took = raw(server, post_head(length))  # no body follows: a server reading to EOF would hang
    assert status(reply) == want and took < 2.0


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    # announces 10 MB, sends 100 bytes and waits: the 413 must come without the rest
    reply, took = raw(server, post_head(str(10_000_000)) + b"x" * 100)
    assert status(reply) == 413 and b"over 1000 bytes" in reply and took < 2.0


def test_a_client_that_stalls_mid_body_is_dropped_within_the_timeout(server):
    reply, took = raw(server, post_head("200") + b'{"a": "' + b"x" * 50)  # half a body, then silence
    assert status(reply) == 408 and took < LIMITS.body_idle_s + 1.5


def test_a_client_that_stalls_in_its_headers_is_dropped(server):
    reply, took = raw(server, b"POST /echo HTTP/1.1\r\nHost: x\r\n")  # the headers never end
    assert reply == b"" and took < LIMITS.header_s + 1.5  # closed without an answer
    reply, took = raw(server, b"")  # connects and says nothing
    assert reply == b"" and took < LIMITS.header_s + 1.5


def test_concurrency_is_bounded_with_503_and_the_server_recovers(server):
    stalled = []  # uvicorn counts the asking connection too: concurrency - 1 stalled ones fill it
    try:
        for _ in range(LIMITS.concurrency - 1):
            stalled.append(socket.create_connection(server.server_address, timeout=3))
            stalled[-1].sendall(post_head("100"))  # each holds a slot, its body never comes
            time.sleep(0.05)
        r = httpx.get(server.url + "/")
        assert r.status_code == 503 and r.headers.get("connection") == "close"
    finally:
        for s in stalled:
            s.close()
    time.sleep(0.2)
    assert httpx.get(server.url + "/").json() == {"ok": True}


def test_a_taken_port_fails_at_once_and_stop_frees_it(server):
    with pytest.raises(OSError):
        HttpServer(make_app([], LIMITS), port=server.port)
    port = server.port
    server.stop()
    HttpServer(make_app([], LIMITS), port=port).stop()  # SO_REUSEADDR: the port is free again


def test_token_is_generated_once_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv("X_TEST_TOKEN", raising=False)
    path = tmp_path / "state" / "svc" / "token"
    assert token_from("X_TEST_TOKEN", path) is None and not path.exists()  # reading never creates
    first = token_from("X_TEST_TOKEN", path, create=True)
    assert first and len(first) >= 40 and path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert token_from("X_TEST_TOKEN", path, create=True) == first == token_from("X_TEST_TOKEN", path)
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temp file left behind
    monkeypatch.setenv("X_TEST_TOKEN", "from-env")
    assert token_from("X_TEST_TOKEN", path, create=True) == "from-env"


def test_two_first_starts_at_once_agree_on_one_token(tmp_path, monkeypatch):
    monkeypatch.delenv("X_TEST_TOKEN", raising=False)
    path, got = tmp_path / "token", []
    threads = [threading.Thread(target=lambda: got.append(token_from("X_TEST_TOKEN", path, create=True)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and got[0] == path.read_text().strip()
    assert json.dumps(os.listdir(tmp_path)) == '["token"]'
