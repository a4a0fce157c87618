"""The demo's field pool: simulator frames ingested the way cameras deliver them, without labels.

The simulator's truth moves aside to `data/raw/field-pool.truth.json`, where only the scripted
annotators read it (labeling.annotator.truth_path).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cityloop.governance.repository import open_repository
from cityloop.scenes.frames import generate_frames

POOL = "field-pool"


def make_pool(root: Path, frames: int, seed: int, workers: int = 2) -> str:
    """Render `frames` field frames, keep their truth aside, ingest them unlabeled as field-pool; its version id."""
    raw = Path(root) / "data" / "raw" / POOL
    if raw.exists():
        shutil.rmtree(raw)
    generate_frames("field", frames, seed, raw, workers=workers)
    (raw / "annotations.coco.json").replace(raw.with_name(f"{POOL}.truth.json"))
    repo = open_repository(Path(root), require_labels=False)
    return repo.ingest(raw, POOL, source="field", split="pool").version.id
