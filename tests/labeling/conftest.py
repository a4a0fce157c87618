"""A real Label Studio server for the session, started by the project's own lifecycle code."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from labeling.server import LabelStudioServer
from tests.conftest import REPO, ModelWorkspace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def labelstudio(tmp_path_factory: pytest.TempPathFactory):
    """Label Studio from the project's venv (`make install` creates it), data in a temp dir, 127.0.0.1."""
    state = tmp_path_factory.mktemp("labelstudio")
    server = LabelStudioServer(state, port=free_port(), state_dir=state / "ls", venv=REPO / ".venv-labelstudio")
    server.start(timeout=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lws(model_ws: ModelWorkspace, tmp_path_factory: pytest.TempPathFactory) -> ModelWorkspace:
    """A private copy of the trained workspace (labels become versions in it)."""
    root = tmp_path_factory.mktemp("lws") / "ws"
    shutil.copytree(model_ws.root, root, symlinks=True)
    return ModelWorkspace(root, model_ws.model_id, model_ws.pool, root / "raw" / "field-pool")


def ground_truth(ws: ModelWorkspace) -> dict:
    from labeling.annotator import truth_from_folder

    return truth_from_folder(ws.pool_src) | truth_from_folder(Path(ws.root) / "raw" / "lab")
