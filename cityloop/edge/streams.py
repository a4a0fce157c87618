"""Camera streams: a folder of frames, a video file, or any OpenCV-readable URL (rtsp://, http://).

A stream spec is `CAMERA_ID=URI` or just `URI` (camera id: the folder's or file's name).
Frames come out as encoded JPEG/PNG bytes (folders pass their files through untouched).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2

IMAGE_EXTS = {".jpg", ".jpeg", ".png"}


@dataclass
class Frame:
    camera_id: str
    index: int
    ts: float  # unix seconds (the file's or the capture's time)
    data: bytes  # encoded JPEG/PNG


def parse_spec(spec: str) -> tuple[str, str]:
    """`cam-3=/data/cam3.mp4` -> ("cam-3", "/data/cam3.mp4"); `/data/cam3` -> ("cam3", "/data/cam3")."""
    if "=" in spec and not spec.split("=", 1)[0].count("/") and "://" not in spec.split("=", 1)[0]:
        cam, uri = spec.split("=", 1)
        return cam, uri
    p = Path(spec)
    return (p.stem if p.suffix else p.name) or "camera", spec


def stream_clock(folder: Path, camera_id: str) -> tuple[float, float] | None:
    """(start unix seconds, fps) of a recorded stream folder, from the `cameras.json` beside it (what the
    simulator and a site's recorder write: `<streams>/cameras.json`, `<streams>/<camera>/frames/`), or None."""
    folder = Path(folder)
    names = {camera_id, folder.name, folder.parent.name}
    for d in (folder, folder.parent, folder.parent.parent):
        path = d / "cameras.json"
        if not path.is_file():
            continue
        try:
            cams = json.loads(path.read_text())
            cam = next(c for c in cams if isinstance(c, dict) and c.get("camera_id") in names)
            return datetime.fromisoformat(cam["start_ts"]).timestamp(), float(cam["fps"])
        except (ValueError, TypeError, KeyError, StopIteration, OSError):
            return None
    return None


def folder_frames(camera_id: str, folder: Path) -> Iterator[Frame]:
    """Images under folder (recursively, sorted) as frames, stamped with stream time: the recording's start
    plus index / fps when a cameras.json describes it (so dwell times, windows and a schedule's sampling
    see the camera's clock), else each file's modification time."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    clock = stream_clock(Path(folder), camera_id)
    for i, p in enumerate(files):
        ts = clock[0] + i / clock[1] if clock and clock[1] > 0 else p.stat().st_mtime
        yield Frame(camera_id, i, ts, p.read_bytes())


def capture_frames(camera_id: str, uri: str, quality: int = 90) -> Iterator[Frame]:
    """Frames of a video file or stream URL through OpenCV, re-encoded as JPEG."""
    cap = cv2.VideoCapture(uri)
    if not cap.isOpened():
        raise ValueError(f"cannot open stream {uri!r}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    start = time.time()
    i = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                yield Frame(camera_id, i, start + (i / fps if fps > 0 else 0.0), buf.tobytes())
            i += 1
    finally:
        cap.release()


def open_stream(spec: str) -> Iterator[Frame]:
    """The frames of one stream spec."""
    camera_id, uri = parse_spec(spec)
    if Path(uri).is_dir():
        return folder_frames(camera_id, Path(uri))
    return capture_frames(camera_id, uri)


def round_robin(specs: list[str], loop: bool = False) -> Iterator[Frame]:
    """One frame of each stream in turn (a finished stream drops out; `loop` restarts it)."""
    streams = {s: open_stream(s) for s in specs}
    while streams:
        for s in list(streams):
            try:
                yield next(streams[s])
            except StopIteration:
                if loop:
                    streams[s] = open_stream(s)
                else:
                    del streams[s]
