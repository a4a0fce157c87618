"""A raw HTTP exchange for the hostile-client tests: bytes a well-behaved client library would never
send (a negative Content-Length, half a body, headers that never end)."""

from __future__ import annotations

import socket
import time


def send_raw(address: tuple[str, int], data: bytes, timeout: float = 3.0) -> tuple[bytes, float]:
    """Send `data` on a fresh connection and read until the server closes it: (all it sent, seconds).
    A server that waited for more would hit the client's timeout (socket.timeout fails the test)."""
    with socket.create_connection(address, timeout=timeout) as s:
        t0 = time.monotonic()
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out, time.monotonic() - t0


def status_of(reply: bytes) -> int:
    """The status code of a raw HTTP reply."""
    return int(reply.split(b" ", 2)[1])
