"""Start, probe and stop `bentoml serve` processes, and talk to them (the edge node and tests).

A server runs in its own process group, so `stop()` takes its workers down with it. Its start
time (from /proc) is recorded beside its pid: a server adopted or stopped later is signalled only
while that pid still is the process we started, never a recycled one.
"""

from __future__ import annotations

import base64
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from cityloop.bento.build import bento_env, bentoml_bin
from cityloop.core.procs import cmdline, is_ours, start_time, stop_group, tail
from cityloop.core.settings import from_section

SERVICE = "cityloop.bento.service:DetectorService"


class ServingError(RuntimeError):
    """The server answered with an error status (4xx: the caller's input; 5xx: the server)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.retry_after = retry_after


@dataclass
class Server:
    """One `bentoml serve` process on 127.0.0.1 (its pid is its process group)."""

    pid: int
    port: int
    log_path: Path
    target: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None  # when started by this process (None: adopted after a restart)
    started: int | None = None  # the process's start time (procs.start_time): tells a recycled pid apart

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """Running (not a zombie); our own child is polled so its exit code stays known."""
        return self.proc.poll() is None if self.proc is not None else is_ours(self.pid, self.started)


@dataclass
class ServeParams:
    """The `serve:` section of params.yaml: the tunables of cityloop.bento.service.ServeSettings (same
    names and defaults), which the service reads from CITYLOOP_* variables (`serve_env` writes them)."""

    max_batch_size: int = 32  # images per adaptive batch
    max_latency_ms: int = 1000  # queueing + inference budget before the dispatcher answers 503
    ort_threads: int = 1  # onnxruntime intra-op threads per server process
    ort_spinning: int = 0  # 1: intra-op threads busy-wait between runs (they take the event loop's CPU)
    workers: int = 1  # server processes: one per core the node owns
    max_images: int = 64  # images per request
    max_bytes: int = 8 << 20  # request body limit (413 beyond)
    min_side: int = 16  # smallest accepted width/height in px
    max_side: int = 4096  # largest accepted width/height in px
    max_inflight: int = 64  # concurrent requests before 503 + Retry-After

    @classmethod
    def from_dict(cls, d: dict | None) -> ServeParams:
        return from_section(cls, d, "serve")


def serve_env(params: ServeParams, max_image_pixels: int | None = None) -> dict[str, str]:
    """params.yaml `serve:` -> the service's CITYLOOP_* environment variables (every tunable), plus
    `limits.max_image_pixels` (cityloop.core.images.image_limit) when given."""
    env = {f"CITYLOOP_{k.upper()}": str(v) for k, v in asdict(params).items()}
    if max_image_pixels is not None:
        env["CITYLOOP_MAX_IMAGE_PIXELS"] = str(max_image_pixels)
    return env


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, target: str = SERVICE, model_dir: Path | None = None,
                 extra_env: dict[str, str] | None = None, log_path: Path | None = None,
                 timeout: float = 90.0, cancel: threading.Event | None = None,
                 on_spawn: Callable[[Server], None] | None = None) -> Server:
    """`bentoml serve TARGET` (a bento tag, or the service file with `model_dir`) and wait until ready.

    `on_spawn(server)`: called once the process exists, before it is ready (an edge node records it,
    so a crash meanwhile leaves no unknown server behind); `cancel`: set it to give up the wait (the
    server is stopped and RuntimeError raised). A server that does not get ready is stopped."""
    env = bento_env(root)
    env.update(extra_env or {})
    if model_dir is not None:
        env["CITYLOOP_MODEL_DIR"] = str(Path(model_dir).resolve())
    log_path = Path(log_path or Path(root) / ".cityloop" / "logs" / f"serve-{port}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # the service module comes from the installed package; a bento tag brings its own code
    cwd = log_path.parent
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([bentoml_bin(), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
                                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc.pid, port, log_path, target,
                    {k: v for k, v in (extra_env or {}).items() if "TOKEN" not in k}, proc, start_time(proc.pid))
    try:
        if on_spawn is not None:
            on_spawn(server)
        wait_ready(server, timeout, cancel)
    except BaseException:
        stop_server(server)
        raise
    return server


def adopt_server(pid: int, port: int, target: str, log_path: Path, started: int | None = None) -> Server | None:
    """The still-running server of a previous (killed) run, if it is alive and ready on `port`.

    `started`: its recorded start time. A recycled pid (another start time, or not a `bentoml serve`)
    is neither adopted nor stopped."""
    server = Server(pid, port, Path(log_path), target, started=started)
    if not server.alive() or "bentoml" not in cmdline(pid):
        return None
    try:
        if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
            return server
    except httpx.HTTPError:
        pass
    stop_server(server, grace=5)
    return None


def wait_ready(server: Server, timeout: float, cancel: threading.Event | None = None) -> None:
    """Poll /readyz until 200; RuntimeError with the log's tail when the process dies or time runs out
    (or `cancel` is set)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cancel is not None and cancel.is_set():
            raise RuntimeError("start cancelled")
        if not server.alive():
            code = server.proc.returncode if server.proc is not None else "?"
            raise RuntimeError(f"bentoml serve exited ({code}):\n{tail(server.log_path, 40)}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"bentoml serve not ready after {timeout:.0f} s:\n{tail(server.log_path, 40)}")


def stop_server(server: Server, grace: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after `grace` seconds (nothing is
    signalled when its pid now names another process: see `procs.stop_group`)."""
    stop_group(server.pid, grace, started=server.started)
    if server.proc is not None:
        try:
            server.proc.wait(5)  # reap it
        except subprocess.TimeoutExpired:
            pass


def multipart_frames(frames: list[bytes]) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/mixed body holding the encoded frames, one part each (the
    compact route's form for several frames per request)."""
    boundary = f"cityloop-{secrets.token_hex(12)}"
    head = f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
    body = b"".join(head + f + b"\r\n" for f in frames) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/mixed; boundary={boundary}"


class DetectorClient:
    """A small client of the service's HTTP API (encoded images in, detections out)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, keepalive: bool = True) -> None:
        """`keepalive=False`: a connection per request. A server of several processes shares its listening
        socket, and a kept-alive connection stays with the process that accepted it: a node's few
        long-lived connections could all land on one (measured: 150 instead of 200 frames/s through a
        node, one run in two); fresh connections go to whichever process is waiting."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout, limits=limits)
        self._classes: dict[str, list[str | None]] = {}  # model version -> platform class per label
        self.compact = True  # False once the server turned out to have no compact route (an older bento)

    @staticmethod
    def _raise(r: httpx.Response) -> None:
        if r.status_code != 200:
            retry = r.headers.get("retry-after")
            raise ServingError(r.status_code, r.text[:500], float(retry) if retry else None)

    def detect_frame(self, data: bytes) -> dict:
        """One encoded frame (JPEG/PNG bytes) through the compact route: `detect_frames([data])[0]`."""
        return self.detect_frames([data])[0]

    def detect_frames(self, frames: list[bytes], min_score: float = 0.0) -> list[dict]:
        """Encoded frames (JPEG/PNG bytes) through the compact route `/detect_raw` (the raw frame as the
        body, several as a multipart/mixed body; box arrays out), returned as `detect` returns them:
        per frame {"detections": [{"box", "score", "label", "cls"}], "width", "height", "model_version"}.
        `min_score`: boxes scored lower are not sent back (the compact route only).
        A server without the route (an older bento) gets `/detect`."""
        if not self.compact:
            return self.detect(frames)
        if len(frames) == 1:
            body, kind = frames[0], "application/octet-stream"
        else:
            body, kind = multipart_frames(frames)
        headers = {"content-type": kind, **({"x-min-score": repr(float(min_score))} if min_score > 0 else {})}
        r = self.http.post("/detect_raw", content=body, headers=headers)
        if r.status_code == 404:
            self.compact = False
            return self.detect(frames)
        self._raise(r)
        results = r.json()
        for res in results:
            version = res["model_version"]
            if version not in self._classes:
                self._classes[version] = list(self.info()["classes"])
            classes = self._classes[version]
            res["detections"] = [{"box": b[:4], "score": b[4], "label": int(b[5]),
                                  "cls": classes[int(b[5])] if 0 <= int(b[5]) < len(classes) else None}
                                 for b in res.pop("boxes")]
        return results

    def detect(self, images: list[bytes], endpoint: str = "/detect") -> list[dict]:
        """One result per encoded image (JPEG/PNG bytes); ServingError on an error status."""
        body = {"images": [base64.b64encode(b).decode("ascii") for b in images]}
        r = self.http.post(endpoint, json=body)
        self._raise(r)
        return r.json()

    def info(self) -> dict:
        r = self.http.post("/info")
        r.raise_for_status()
        return r.json()

    def close(self) -> None:
        self.http.close()
