"""Append-only JSON-lines logs that a crash cannot corrupt beyond the line it was writing.

A process killed in the middle of an append leaves a torn last line (no newline). The next
append would glue its first record onto that fragment, and a reader would lose both. So every
append here starts on a fresh line (a newline is written first when the file does not end with
one), goes out in one write, and is flushed and fsynced before it returns; a reader skips, and
counts, each line that is not a JSON object instead of failing or merging lines. Used by the
algorithm repository's `events.jsonl` and the loop's `rounds.jsonl`; callers serialise their own
appends (the registry holds the workspace lock).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class JsonlRead:
    """What a read found: the records in order, and the line numbers it had to skip."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # 1-based numbers of lines that are not JSON objects


def append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append `records` as one line each, starting on a fresh line; durable when it returns."""
    text = "".join(json.dumps(r, default=str, separators=(",", ":")) + "\n" for r in records)
    if not text:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    with open(path, "a+b") as fh:  # a+: writes always land at the end; reads see the last byte
        data = text.encode("utf-8")
        if _ends_torn(fh):
            data = b"\n" + data
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if created:
        _fsync_dir(path.parent)


def read_jsonl(path: Path) -> JsonlRead:
    """Every complete record of `path` (empty when it does not exist); torn or foreign lines are
    skipped and listed in `skipped`, with one warning per read."""
    out = JsonlRead()
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return out
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except ValueError:  # includes UnicodeDecodeError: a line cut inside a character
            rec = None
        if isinstance(rec, dict):
            out.records.append(rec)
        else:
            out.skipped.append(n)
    if out.skipped:
        log.warning("%s: skipped %d unreadable line(s) (torn by a crash?): %s", path, len(out.skipped),
                    ", ".join(map(str, out.skipped[:10])))
    return out


def _ends_torn(fh: Any) -> bool:
    """True when the open file is not empty and does not end with a newline."""
    if fh.seek(0, os.SEEK_END) == 0:
        return False
    fh.seek(-1, os.SEEK_END)
    return fh.read(1) != b"\n"


def _fsync_dir(path: Path) -> None:
    """Make a new file's directory entry durable too."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
