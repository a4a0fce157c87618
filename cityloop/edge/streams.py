"""Camera streams: a folder of frames, a video file, or any OpenCV-readable URL (rtsp://, http://).

A stream spec is `CAMERA_ID=URI` or just `URI` (camera id: the folder's or file's name).
Frames come out as encoded JPEG/PNG bytes (folders pass their files through untouched).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
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


def folder_frames(camera_id: str, folder: Path) -> Iterator[Frame]:
    """Images under folder (recursively, sorted) as frames."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    for i, p in enumerate(files):
        yield Frame(camera_id, i, p.stat().st_mtime, p.read_bytes())


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
