"""The loop's figures the report and the dashboard show: model versions with their benchmark
accuracy (the accuracy curve) and the labeled dataset's versions (frames labeled per round).
Read-only; a workspace without a registry or git tags simply has none."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cityloop.core.settings import load_section

log = logging.getLogger("cityloop.analysis")


def accuracy_curve(root: Path) -> list[dict[str, Any]]:
    """Per registered version in order: id, stage, registered, benchmark mAP50 (None: not evaluated)."""
    try:
        from cityloop.models.store import ModelStore

        versions = ModelStore(Path(root), track=False).list()
    except Exception as exc:  # noqa: BLE001 - no registry is a normal state for a fresh workspace
        log.info("no registry figures: %s", exc)
        return []
    out = []
    for mv in versions:
        m = mv.metrics() or {}
        out.append({"id": mv.id, "stage": mv.stage, "registered": mv.registered,
                    "mAP50": m.get("mAP50"), "benchmark": m.get("benchmark")})
    return out


def labeling_rounds(root: Path) -> list[dict[str, Any]]:
    """Versions of the labeled dataset (params `labeling.dataset`): frames and labeled frames."""
    from cityloop.labeling.params import LabelingParams

    dataset = load_section(Path(root), "labeling", LabelingParams).dataset
    try:
        from cityloop.governance.versioning import list_versions

        recs = list_versions(Path(root), dataset)
    except Exception as exc:  # noqa: BLE001 - not a git/DVC workspace: no labeling figures
        log.info("no labeling figures: %s", exc)
        return []
    return [{"id": r.id, "created": r.created, "frames": r.summary.get("frames"),
             "labeled": r.summary.get("labeled")} for r in recs]
