"""Fixtures for the serving tests: a real `bentoml serve` of the session's registered model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cityloop.bento.serving import Server, free_port, start_server, stop_server

TOKEN = "test-token-not-a-secret"


def field_images(root: Path, n: int) -> list[bytes]:
    """Encoded JPEG bytes of the first n field-bench frames (what a camera sends)."""
    paths = sorted((Path(root) / "raw" / "field-bench" / "images").glob("*.jpg"))[:n]
    return [p.read_bytes() for p in paths]


@pytest.fixture(scope="module")
def ws_copy(model_ws, tmp_path_factory) -> Path:
    """A private copy of the model workspace (builds and registrations write into it)."""
    dst = tmp_path_factory.mktemp("bento-ws") / "ws"
    shutil.copytree(model_ws.root, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def server(model_ws, tmp_path_factory) -> Server:
    """The service file serving cityloop-detector:v1 from the registry, token required,
    small limits so the 413/503 paths are reachable: 1 MiB bodies, 2 requests in flight."""
    from cityloop.models.store import ModelStore

    mv = ModelStore(model_ws.root, track=False).get(model_ws.model_id)
    logs = tmp_path_factory.mktemp("serve-logs")
    srv = start_server(logs, free_port(), model_dir=mv.path, log_path=logs / "serve.log", extra_env={
        "CITYLOOP_API_TOKEN": TOKEN, "CITYLOOP_MAX_BYTES": str(1 << 20), "CITYLOOP_MAX_INFLIGHT": "2",
        "CITYLOOP_MAX_IMAGES": "64"})
    yield srv
    stop_server(srv)
