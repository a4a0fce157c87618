"""Replies for `http.server` handlers: the project's small servers (edge inbox, Label Studio
webhook receiver, live dashboard) answer through these, so every reply carries the same headers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any

# sent with every reply: a browser must not guess a type (a JSON error that echoes input is not HTML)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff"}


def send_bytes(handler: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes,
               headers: Mapping[str, str] | None = None) -> None:
    """Answer with `body` as `content_type`: status line, Content-Type/-Length, security headers, body."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def send_json(handler: BaseHTTPRequestHandler, status: int, body: Any, headers: Mapping[str, str] | None = None,
              default: Callable[[Any], Any] | None = None) -> None:
    """Answer with `body` as JSON (`default`: as json.dumps', for values JSON has no type for)."""
    send_bytes(handler, status, "application/json", json.dumps(body, default=default).encode(), headers)
