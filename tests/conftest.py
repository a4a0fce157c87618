"""Shared fixtures: throwaway workspaces (git + DVC) and small simulator datasets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cityloop.core.settings import quiet_env
from cityloop.labeling.server import LabelStudioServer
from cityloop.scenes.frames import generate_frames

REPO = Path(__file__).resolve().parents[1]
TEST_SIZE = 192  # px: the frames every fixture renders (generate_frames' default)
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
    small_frames(ws)
    shutil.copytree(REPO / "data" / "expectations", ws / "data" / "expectations")
    for pkg in ("cityloop/scenes", "cityloop/governance", "models"):  # dvc.yaml stages depend on the code
        shutil.copytree(REPO / pkg, ws / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    git(ws, "init", "-q", "-b", "main")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "workspace")
    return ws


def small_frames(ws: Path, size: int = TEST_SIZE) -> None:
    """Pin the workspace's frame contract (generate.size, gate.allowed_sizes, train.size) to the simulator's
    default of 192 px: the fixtures render there and tiny trainings stay fast. The shipped contract
    (the repository's params.yaml) is checked by `test_the_projects_params_yaml_passes_check`."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["generate"]["size"] = params["train"]["size"] = size
    params["gate"]["allowed_sizes"] = [f"{size}x{size}"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


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


@dataclass
class ModelWorkspace:
    """A workspace holding lab@v1, field-bench@v1, a field pool (unlabeled) and a registered model."""

    root: Path
    model_id: str
    pool: str  # the unlabeled field pool dataset version
    pool_src: Path  # the simulator output the pool came from (ground truth for scripted annotators)


TINY_TRAIN = {"epochs": 12, "batch_size": 8, "width": 8, "lr": 0.01, "seed": 0, "threads": 2}


def build_model_workspace(ws: Path) -> ModelWorkspace:
    """lab@v1 (120 frames), field-bench@v1 (40), field-pool@v1 (60 unlabeled field frames) and a
    tiny detector trained on lab@v1, exported, parity-checked and registered as cityloop-detector:v1."""
    from cityloop.governance.gate import GateParams
    from cityloop.governance.repository import DataRepository
    from cityloop.models.lifecycle import build_version

    make_workspace(ws)
    repo = DataRepository(ws, GateParams.from_dict({"min_frames_per_class": 1}), holdout=("field-bench",))
    generate_frames("lab", 120, 0, ws / "raw" / "lab")
    generate_frames("field", 40, 1, ws / "raw" / "field-bench")
    generate_frames("field", 60, 2, ws / "raw" / "field-pool")
    repo.ingest(ws / "raw" / "lab", "lab", docs=False, push=False)
    repo.ingest(ws / "raw" / "field-bench", "field-bench", split="bench", docs=False, push=False)
    unlabeled = ws / "raw" / "field-pool-unlabeled"  # the pool as cameras deliver it: frames, no boxes
    shutil.copytree(ws / "raw" / "field-pool", unlabeled, ignore=shutil.ignore_patterns("annotations.coco.json"))
    DataRepository(ws, GateParams.from_dict({"require_labels": False}), holdout=("field-bench",)).ingest(
        unlabeled, "field-pool", source="field", split="pool", docs=False, push=False)
    built = build_version(ws, "lab@v1", TINY_TRAIN, runs_dir=ws / ".cityloop" / "runs", parity_frames=8)
    return ModelWorkspace(ws, built["model"], "field-pool@v1", ws / "raw" / "field-pool")


@pytest.fixture(scope="session")
def model_ws(tmp_path_factory: pytest.TempPathFactory) -> ModelWorkspace:
    """One shared, trained workspace per test session (read-only for tests: copy it to change it)."""
    return build_model_workspace(tmp_path_factory.mktemp("model-ws") / "ws")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def labelstudio(tmp_path_factory: pytest.TempPathFactory):
    """One real Label Studio for the session (labeling and loop tests), started by the project's own
    lifecycle code from its venv (`make install` creates it), data in a temp dir, on 127.0.0.1."""
    state = tmp_path_factory.mktemp("labelstudio")
    server = LabelStudioServer(state, port=free_port(), state_dir=state / "ls", venv=REPO / ".venv-labelstudio")
    with pytest.MonkeyPatch.context() as mp:  # a secret of the caller's shell the server must not inherit
        mp.setenv("CITYLOOP_TEST_SECRET", "parent-shell-secret-not-for-servers")
        server.start(timeout=300)
    yield server
    server.stop()


def wait_for(cond: Callable[[], object], timeout: float, what: str, every: float = 0.2):
    """Poll cond() until truthy; its value, or an AssertionError saying what did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
