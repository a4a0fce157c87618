"""Workspace wiring: the analysis params and the event store URL of a cityloop root."""

from __future__ import annotations

from pathlib import Path

from cityloop.analysis.params import AnalysisParams
from cityloop.analysis.store import default_url
from cityloop.core.settings import load_params


def analysis_params(root: Path) -> AnalysisParams:
    """params.yaml `analysis:` (defaults where it has none)."""
    return AnalysisParams.from_dict(load_params(root).get("analysis"))


def store_url(root: Path, db: str | None = None) -> str:
    """--db, else params `analysis.db` with {root} filled in."""
    return default_url(root, db or analysis_params(root).db)
