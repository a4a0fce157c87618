"""Shared fixtures: throwaway workspaces (git + DVC) and small simulator datasets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cityloop.settings import quiet_env
from scenes.frames import generate_frames

REPO = Path(__file__).resolve().parents[1]
quiet_env()


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


def make_workspace(ws: Path) -> Path:
    """A fresh git repo holding the project's params, pipeline, suites and the code the
    dvc.yaml stages depend on: what a temporary clone of the project gives a test."""
    (ws / "data").mkdir(parents=True)
    (ws / ".dvc").mkdir()
    for name in ("params.yaml", "dvc.yaml", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        shutil.copy(REPO / name, ws / name)
    shutil.copytree(REPO / "data" / "expectations", ws / "data" / "expectations")
    for pkg in ("scenes", "governance", "models"):  # dvc.yaml stages depend on the code
        shutil.copytree(REPO / pkg, ws / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    git(ws, "init", "-q", "-b", "main")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "workspace")
    return ws


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary clone of the project (make_workspace), CITYLOOP_ROOT pointing at it."""
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.setenv("CITYLOOP_ROOT", str(ws))
    monkeypatch.setenv("PATH", f"{Path(os.sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return ws


@pytest.fixture(scope="session")
def lab_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 simulator lab frames with COCO ground truth and metadata (read-only: copy before changing)."""
    out = tmp_path_factory.mktemp("lab")
    generate_frames("lab", 80, 0, out)
    return out


@pytest.fixture
def lab_copy(lab_src: Path, tmp_path: Path) -> Path:
    """A private, writable copy of lab_src."""
    dst = tmp_path / "src"
    shutil.copytree(lab_src, dst)
    return dst
