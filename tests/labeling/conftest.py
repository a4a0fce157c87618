"""Labeling fixtures: a private copy of the trained workspace, the pool's truth. The session's real
Label Studio server (`labelstudio`) lives in tests/conftest.py, shared with the loop tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ModelWorkspace


@pytest.fixture(scope="module")
def lws(model_ws: ModelWorkspace, tmp_path_factory: pytest.TempPathFactory) -> ModelWorkspace:
    """A private copy of the trained workspace (labels become versions in it)."""
    root = tmp_path_factory.mktemp("lws") / "ws"
    shutil.copytree(model_ws.root, root, symlinks=True)
    return ModelWorkspace(root, model_ws.model_id, model_ws.pool, root / "raw" / "field-pool")


def ground_truth(ws: ModelWorkspace) -> dict:
    from cityloop.labeling.annotator import truth_from_folder

    return truth_from_folder(ws.pool_src) | truth_from_folder(Path(ws.root) / "raw" / "lab")
