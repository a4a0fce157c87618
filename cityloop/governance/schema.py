"""The data contracts of the governance standard: manifest columns, classes, splits.

Everything that reads or writes a manifest or a COCO file agrees on these names.
"""

from __future__ import annotations

from cityloop.scenarios import registry

# Platform classes: the registered scenarios' (cityloop.scenarios), in registry order; COCO category
# ids are 1-based in this order and never reordered (a new scenario's classes come after).
CLASSES: tuple[str, ...] = registry().classes
CATEGORY_IDS: dict[str, int] = registry().category_ids

SOURCES: tuple[str, ...] = ("sim", "field", "partner", "edge-hard")
SPLITS: tuple[str, ...] = ("train", "val", "test", "pool", "bench")

# One row per frame in a dataset version (Parquet).
MANIFEST_COLUMNS: dict[str, str] = {
    "sha256": "string",  # content address of the image bytes
    "path": "string",  # location inside data/: "frames/packs/<pack>.zip/<sha256>.<ext>"
    "width": "int64",
    "height": "int64",
    "format": "string",  # JPEG | PNG
    "mode": "string",  # PIL mode of the decoded image (RGB expected)
    "bytes": "int64",
    "brightness": "float64",  # mean luma 0..255
    "sharpness": "float64",  # variance of the Laplacian
    "camera_id": "string",
    "district": "string",
    "timestamp": "datetime64[ns, UTC]",
    "condition": "string",  # primary condition: one of CONDITIONS, or "unknown"
    "conditions": "string",  # comma-joined full set, e.g. "night,rain,blur"
    "source": "string",  # one of SOURCES
    "split": "string",  # one of SPLITS
    "original_name": "string",  # file name as it arrived
    "ingest_id": "string",  # the ingest batch that admitted the frame
    "labeled": "bool",  # annotated (zero boxes on a labeled frame is an explicit "no objects")
}

# One row per box (the gate's view of a COCO file, joined with the frame's size).
ANNOTATION_COLUMNS: dict[str, str] = {
    "ann_id": "int64",
    "sha256": "string",  # the frame the box belongs to
    "category_id": "int64",
    "category_name": "string",
    "x": "float64",  # COCO bbox: top-left x, y, width, height in pixels
    "y": "float64",
    "w": "float64",
    "h": "float64",
    "img_width": "int64",
    "img_height": "int64",
    "track_id": "int64",  # -1 when the box is not part of a track
}
