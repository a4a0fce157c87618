"""Where a cityloop workspace lives and what its params.yaml says.

Nothing happens at import time: paths are resolved when a command asks for them.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import types
import typing
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
    """A params dataclass from its params.yaml section; unknown keys, required keys left out and
    values of the wrong type raise ValueError naming the section and key (a typo in params.yaml
    never passes silently)."""
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
    wrong = _wrong_types(cls, d)
    if wrong:
        raise ValueError(f"{section} params of the wrong type: " + "; ".join(
            f"{section}.{k}: expected {want}, got {type(v).__name__} {v!r}" for k, want, v in wrong))
    return cls(**d)


_SCALARS: dict[type, tuple[type, ...]] = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's annotation (scalars, None, lists/tuples, dicts and unions
    of them; anything else, such as a nested dataclass built by its own from_dict, is let through)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint in _SCALARS:
        return isinstance(value, _SCALARS[hint]) and (hint is bool or not isinstance(value, bool))
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):  # tuple[float, float]
            return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args))
        return all(_conforms(v, args[0]) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, Mapping)
    return True


def _wrong_types(cls: type, d: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(key, expected, value) for each value of `d` that does not fit `cls`'s annotation."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that cannot be resolved here: no type check
        return []
    return [(k, _type_name(hints[k]), v) for k, v in d.items() if k in hints and not _conforms(v, hints[k])]


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
