"""The project's small HTTP servers (edge inbox, Label Studio webhook receiver, live dashboard) on
the stack's own ASGI layer: Starlette apps under uvicorn, both already brought by Prefect and
BentoML. Every server built here shares the same closed defaults:

- it listens on 127.0.0.1 unless told otherwise; the socket is bound when the server is made (the
  port is known at once, a taken port fails at once);
- it is bounded: at most `concurrency` connections and requests (then uvicorn answers 503), a
  request's headers within `header_s` seconds, an idle keep-alive connection closed after
  `keep_alive_s`, a body that sends nothing for `body_idle_s` (or is not complete after
  `body_total_s`) answered 408 and its connection dropped;
- a request with a body (POST, PUT, PATCH, DELETE) must say `Content-Type: application/json`
  (else 415: an HTML form or a `text/plain` cross-site post never reaches a handler) and give a
  `Content-Length` (411 when missing, 400 when not a number, 413 over `max_body`), all refused
  before a byte of the body is read; the body is counted again while it streams;
- every reply carries `X-Content-Type-Options: nosniff` (a browser must not guess a type: a JSON
  error that echoes input is not HTML) and no CORS header, so browsers refuse cross-origin reads;
- errors are JSON `{"error": …}`; nothing here logs a request (headers may carry secrets).

Shared secrets (`token_from`) come from an environment variable, else from a 0600 file in the
workspace's state dir that the first start generates, as Label Studio's credentials are.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

# sent with every reply: a browser must not guess a type (a JSON error that echoes input is not HTML)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff"}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CLOSE = {"Connection": "close"}


@dataclass(frozen=True)
class Limits:
    """How much one server takes: body size, how long a client may dawdle, how many at once."""

    max_body: int = 1 << 20
    body_idle_s: float = 10.0  # no body bytes for this long: 408, connection dropped
    body_total_s: float = 120.0  # the whole body within this
    header_s: float = 10.0  # a request's headers within this (uvicorn itself has no such limit)
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this (uvicorn)
    concurrency: int = 32  # connections + requests at once; beyond: 503 (uvicorn limit_concurrency)
    graceful_s: float = 5.0  # stop() waits this long for requests in flight


# ------------------------------------------------------------------ replies and checks
def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The JSON error every server answers with."""
    return JSONResponse({"error": message}, status, headers=dict(headers or {}))


def json_response(body: Any, status: int = 200, default: Any = None) -> Response:
    """`body` as JSON (`default`: as json.dumps', for values JSON has no type for, e.g. dates)."""
    return Response(json.dumps(body, default=default), status, media_type="application/json")


async def read_json(request: Request) -> Any:
    """The request's JSON body (the guard has already bounded its size and time); 400 when it is not JSON."""
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise HTTPException(400, "the client went away before its body was in", headers=CLOSE) from None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise HTTPException(400, f"body is not JSON: {exc}") from None


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented secret with the expected one."""
    return bool(expected) and hmac.compare_digest((given or "").encode(), expected.encode())


def require_bearer(request: Request, token: str, what: str = "token") -> None:
    """401 unless the request carries `Authorization: Bearer <token>`."""
    if not same_secret(request.headers.get("authorization"), f"Bearer {token}"):
        raise HTTPException(401, f"missing or wrong {what}", headers={"WWW-Authenticate": "Bearer"})


def token_from(env: str, path: Path, create: bool = False) -> str | None:
    """A shared secret: `$env` when set, else the file at `path`; when neither and `create`, a new
    one (secrets.token_urlsafe) written to `path` with mode 0600 (its folder 0700). Two first starts
    at once agree on one token: the file appears whole (temp file + link) or not at all."""
    if os.environ.get(env):
        return os.environ[env]
    path = Path(path)
    if path.exists():
        return path.read_text().strip() or None
    if not create:
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.link(tmp, path)
    except FileExistsError:  # another process generated it first: use theirs
        return path.read_text().strip()
    finally:
        Path(tmp).unlink(missing_ok=True)
    return token


# ------------------------------------------------------------------ the guard
class _BoundedBody:
    """The request's `receive`, with the body's size and time bounded while it streams."""

    def __init__(self, receive: Receive, limits: Limits) -> None:
        self.receive, self.limits = receive, limits
        self.size, self.done = 0, False
        self.deadline = time.monotonic() + limits.body_total_s

    async def __call__(self) -> Message:
        if self.done:  # the body is in: the app may wait for a disconnect as long as it likes
            return await self.receive()
        wait = min(self.limits.body_idle_s, self.deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(self.receive(), max(wait, 0.0))
        except TimeoutError:
            raise HTTPException(408, "the request body did not arrive in time", headers=CLOSE) from None
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limits.max_body:
                raise HTTPException(413, f"body over {self.limits.max_body} bytes", headers=CLOSE)
            self.done = not message.get("more_body", False)
        return message


class Guard:
    """ASGI middleware: JSON-only bounded bodies, security headers on every reply (see the module doc)."""

    def __init__(self, app: ASGIApp, limits: Limits, headers: Mapping[str, str] | None = None) -> None:
        self.app, self.limits = app, limits
        self.headers = [(k.lower().encode(), v.encode()) for k, v in {**SECURITY_HEADERS, **(headers or {})}.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        body = _BoundedBody(receive, self.limits) if scope["method"] in BODY_METHODS else None

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = list(self.headers)
                if body is not None and not body.done:  # answered before its body was read (a 401, say):
                    extra.append((b"connection", b"close"))  # close rather than wait for the rest
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in present)]
            await send(message)

        if body is not None:
            refused = self.refusal(scope)
            if refused is not None:
                return await error(*refused)(scope, receive, send_with_headers)
        await self.app(scope, body or receive, send_with_headers)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """Why a request with a body is refused before its body is read (None: read it)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            return 415, "Content-Type must be application/json"
        length = headers.get("content-length")
        if length is None:
            return 411, "Content-Length is required"
        if not length.isdigit():
            return 400, "Content-Length is not a number"
        if int(length) > self.limits.max_body:
            return 413, f"body over {self.limits.max_body} bytes"
        return None


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), exc.headers)


def make_app(routes: Sequence[BaseRoute], limits: Limits, headers: Mapping[str, str] | None = None) -> ASGIApp:
    """A Starlette app of `routes` behind the guard; HTTP errors answered as JSON."""
    return Guard(Starlette(routes=list(routes), exception_handlers={HTTPException: _http_error}), limits, headers)


# ------------------------------------------------------------------ the server
class _Http11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers: uvicorn's keep-alive timer
    is cancelled by any byte, so a client trickling its headers would otherwise hold a slot forever."""

    header_s = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(None)

    def on_response_complete(self) -> None:
        done = self.cycle
        super().on_response_complete()
        self._arm(done)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self, cycle: Any) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.header_s, self._headers_late, cycle)

    def _headers_late(self, cycle: Any) -> None:
        if self.cycle is cycle and not self.transport.is_closing():  # no new request began since
            self.transport.close()


class HttpServer:
    """One ASGI app under uvicorn on a socket bound now: `start()` serves it from a thread (tests,
    the CLI's servers), `serve_forever()` in the foreground (Ctrl-C/SIGTERM stop it), `stop()` ends it."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, limits: Limits = Limits(),
                 name: str = "http") -> None:
        self.name = name
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=128)
        # uvicorn writes a reply's headers and body separately; without TCP_NODELAY (asyncio sets it only on
        # sockets whose proto is IPPROTO_TCP, and create_server's is 0) Nagle holds the body until the client's
        # delayed ACK: +40 ms on every keep-alive request. Accepted sockets inherit it from the listener.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        protocol = type("Http11", (_Http11,), {"header_s": limits.header_s})
        config = uvicorn.Config(app, http=protocol, lifespan="off", log_config=None, log_level="warning",
                                access_log=False, server_header=False, timeout_keep_alive=limits.keep_alive_s,
                                limit_concurrency=limits.concurrency, timeout_graceful_shutdown=limits.graceful_s)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    def start(self, timeout: float = 10.0) -> HttpServer:
        """Serve from a daemon thread; returns once the server accepts requests."""
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]}, daemon=True,
                                        name=self.name)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM (re-raised afterwards, as KeyboardInterrupt for Ctrl-C)."""
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving (requests in flight get `graceful_s`), close the socket."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self._server.config.timeout_graceful_shutdown + 5)
        self.socket.close()
