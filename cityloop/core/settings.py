"""Where a cityloop workspace lives and what its params.yaml says.

Nothing happens at import time: paths are resolved when a command asks for them.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

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


def load_section(root: Path, section: str, cls: type[T], **overrides: Any) -> T:
    """The one way a params.yaml section is read: `section:` of the workspace's params.yaml, with
    `overrides` (None values ignored) on top, built by `cls.from_dict` when it has one (nested
    sections, extra checks), else by `from_section`. Either way unknown and missing keys are errors."""
    raw = {**(load_params(Path(root)).get(section) or {}), **{k: v for k, v in overrides.items() if v is not None}}
    build = getattr(cls, "from_dict", None)
    return build(raw) if build is not None else from_section(cls, raw, section)


def from_section(cls: type[T], d: Mapping[str, Any] | None, section: str) -> T:
    """A params dataclass from its params.yaml section; unknown keys, and required keys left out,
    raise ValueError naming the section (a typo in params.yaml never passes silently)."""
    d = dict(d or {})
    fields = dataclasses.fields(cls)
    known = sorted(f.name for f in fields)
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {section} params: {unknown} (known: {known})")
    missing = [f.name for f in fields if f.name not in d and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{section} params missing: {missing} (set them in the {section}: section of params.yaml)")
    return cls(**d)
