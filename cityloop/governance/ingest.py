"""Ingest: read a folder of frames, content-address them, extract metadata, quarantine the rest.

Nothing is dropped silently: every input file ends up either as a manifest row (possibly a
duplicate of a frame already stored) or in the quarantine list with the reason. Each file's header
is checked (cityloop.core.images: PNG/JPEG, within `limits.max_image_pixels`) before a pixel is
decoded, so a decompression bomb is one quarantined file, not a failed batch.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError

from cityloop.core.images import DEFAULT_MAX_PIXELS, ImageRefused, check_image

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not decode half grey
IMAGE_EXTS = {".jpg", ".jpeg", ".png"}
ALLOWED_MODES = {"RGB"}
EXT = {"JPEG": "jpg", "PNG": "png"}


@dataclass
class Probe:
    """What reading one file told us."""

    rel: str  # path relative to the source folder
    sha256: str
    ok: bool
    reason: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    mode: str = ""
    bytes: int = 0
    brightness: float = float("nan")
    sharpness: float = float("nan")
    exif_time: str | None = None


@dataclass
class Scan:
    """A source folder read through: good frames with their bytes, and the quarantined."""

    probes: list[Probe]
    metadata: pd.DataFrame  # optional per-file metadata found beside the frames
    annotations: dict | None
    data: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes (good frames only)

    @property
    def good(self) -> list[Probe]:
        return [p for p in self.probes if p.ok]

    @property
    def bad(self) -> list[Probe]:
        return [p for p in self.probes if not p.ok]


def probe_bytes(rel: str, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Probe:
    """Check the header (format, size within `max_pixels`), then decode fully (truncation shows
    only on load) and measure brightness and sharpness."""
    sha = hashlib.sha256(data).hexdigest()
    p = Probe(rel=rel, sha256=sha, ok=False, bytes=len(data))
    if not data:
        p.reason = "empty file"
        return p
    try:
        header = check_image(data, max_pixels)
    except ImageRefused as exc:
        p.reason = f"refused before decoding: {exc}"
        return p
    p.width, p.height, p.format, p.mode = header.width, header.height, header.format, header.mode
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            p.width, p.height, p.format, p.mode = im.width, im.height, im.format or "", im.mode
            exif = im.getexif() if p.format == "JPEG" else {}
            p.exif_time = exif.get(36867) or exif.get(306) if exif else None
            gray = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        p.reason = f"unreadable image: {exc}"
        return p
    if p.format not in EXT:
        p.reason = f"format {p.format} not accepted (JPEG or PNG)"
    elif p.mode not in ALLOWED_MODES:
        p.reason = f"mode {p.mode} not accepted (RGB)"
    else:
        p.ok = True
    p.brightness = float(gray.mean())
    p.sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    return p


def _probe_file(args: tuple[str, str, int]) -> tuple[Probe, bytes]:
    root, rel, max_pixels = args
    data = (Path(root) / rel).read_bytes()
    return probe_bytes(rel, data, max_pixels), data


def list_frames(src: Path) -> list[str]:
    """Every file under src that is not a known side-car (metadata, annotations, cameras, events)."""
    side = {"metadata.parquet", "metadata.csv", "annotations.coco.json", "cameras.json", "events.json"}
    files = []
    for f in sorted(src.rglob("*")):
        if f.is_file() and f.name not in side and not f.name.startswith(".") and f.suffix != ".mp4":
            files.append(f.relative_to(src).as_posix())
    return files


def read_metadata(src: Path) -> pd.DataFrame:
    """The optional metadata table beside the frames, keyed by `file_name` (relative path)."""
    for name, reader in (("metadata.parquet", pd.read_parquet), ("metadata.csv", pd.read_csv)):
        if (src / name).exists():
            df = reader(src / name)
            if "file_name" not in df.columns:
                raise ValueError(f"{src / name} has no file_name column")
            return df.set_index("file_name")
    return pd.DataFrame(index=pd.Index([], name="file_name"))


def scan(src: Path, annotations: Path | None = None, workers: int = 1,
         progress: Callable[[int], None] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Scan:
    """Read every file of src (in `workers` processes), plus metadata and COCO annotations; an
    image over `max_pixels` (its header says) is quarantined without being decoded."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    files = list_frames(src)
    ann_path = annotations or (src / "annotations.coco.json")
    coco = json.loads(Path(ann_path).read_text()) if Path(ann_path).exists() else None
    if annotations and coco is None:
        raise FileNotFoundError(f"annotations file {annotations} does not exist")
    jobs = [(str(src), rel, max_pixels) for rel in files]
    probes, data = [], {}
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 256 else None
    try:
        results = pool.map(_probe_file, jobs, chunksize=64) if pool else map(_probe_file, jobs)
        for probe, raw in results:
            probes.append(probe)
            if probe.ok:
                data.setdefault(probe.sha256, raw)
            if progress:
                progress(1)
    finally:
        if pool:
            pool.shutdown()
    return Scan(probes, read_metadata(src), coco, data)


def _timestamp(p: Probe, meta: pd.Series | None, src: Path) -> pd.Timestamp:
    if meta is not None and "timestamp" in meta and pd.notna(meta["timestamp"]):
        return pd.Timestamp(meta["timestamp"]).tz_convert("UTC") if pd.Timestamp(
            meta["timestamp"]).tzinfo else pd.Timestamp(meta["timestamp"], tz="UTC")
    if p.exif_time:
        try:
            return pd.Timestamp(datetime.strptime(str(p.exif_time), "%Y:%m:%d %H:%M:%S"), tz="UTC")
        except ValueError:
            pass
    return pd.Timestamp(datetime.fromtimestamp((src / p.rel).stat().st_mtime, tz=UTC))


def manifest_rows(sc: Scan, src: Path, source: str, ingest_id: str) -> pd.DataFrame:
    """Manifest rows (without path/split) for the good frames of a scan, first copy of each sha."""
    rows, seen = [], set()
    labeled = _labeled_files(sc.annotations)
    has_reason = "reason" in sc.metadata.columns
    for p in sc.good:
        if p.sha256 in seen:
            continue
        seen.add(p.sha256)
        meta = sc.metadata.loc[p.rel] if p.rel in sc.metadata.index else None

        def get(key: str, default: str = "unknown", meta: pd.Series | None = meta) -> str:
            return str(meta[key]) if meta is not None and key in meta and pd.notna(meta[key]) else default

        rows.append({
            "sha256": p.sha256, "width": p.width, "height": p.height, "format": p.format, "mode": p.mode,
            "bytes": p.bytes, "brightness": p.brightness, "sharpness": p.sharpness,
            "camera_id": get("camera_id"), "district": get("district"),
            "timestamp": _timestamp(p, meta, src), "condition": get("condition"),
            "conditions": get("conditions", get("condition")), "source": source,
            "original_name": p.rel, "ingest_id": ingest_id, "labeled": p.rel in labeled,
            "ext": EXT[p.format],
        })
        if has_reason:  # a hard example's why (DESIGN.md: low confidence, disagreement, dismissed alert...)
            rows[-1]["reason"] = get("reason", "")
    cols = ["sha256", "width", "height", "format", "mode", "bytes", "brightness", "sharpness", "camera_id",
            "district", "timestamp", "condition", "conditions", "source", "original_name", "ingest_id", "labeled",
            "ext", *(["reason"] if has_reason else [])]
    return pd.DataFrame(rows, columns=cols)


def _labeled_files(coco: dict | None) -> set[str]:
    return {im["file_name"] for im in coco["images"]} if coco else set()
