"""Where a cityloop workspace lives and what its params.yaml says.

Nothing happens at import time: paths are resolved when a command asks for them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

# Telemetry off and generous start-up timeouts for the embedded defaults (see STACK-NOTES).
QUIET_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "BENTOML_DO_NOT_TRACK": "true",
}


def quiet_env() -> None:
    """Set the telemetry/timeout variables unless the user set them already."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def find_root(start: Path | None = None) -> Path:
    """The workspace: $CITYLOOP_ROOT, else the git top level above `start` (or cwd), else cwd."""
    if os.environ.get("CITYLOOP_ROOT"):
        return Path(os.environ["CITYLOOP_ROOT"]).resolve()
    start = Path(start or Path.cwd())
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True,
                             text=True, check=True)
        return Path(out.stdout.strip()).resolve()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return start.resolve()


def load_params(root: Path) -> dict:
    """The workspace's params.yaml (the one home of tunables), or {} when it has none."""
    path = Path(root) / "params.yaml"
    return yaml.safe_load(path.read_text()) or {} if path.exists() else {}
