"""The edge node's durable outbox of hard examples (SQLite, WAL, synchronous=FULL).

A hard example is committed here in one transaction when it is selected; the uploader sends
pending rows to the center and marks them acknowledged only after the center's ack (the image
bytes are then dropped, the row stays as the record of what was sent). Primary key: the frame's
sha256, so re-selecting the same frame after a restart is a no-op. Killing the process at any
moment leaves each row either pending (sent again: the center's ingest is idempotent) or acked.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS hard_examples (
    sha256 TEXT PRIMARY KEY,
    camera_id TEXT NOT NULL,
    model_version TEXT NOT NULL,
    reason TEXT NOT NULL,          -- low_confidence | disagreement | novelty
    score REAL NOT NULL,
    ts REAL NOT NULL,              -- frame time (unix seconds)
    frame_index INTEGER NOT NULL,
    image BLOB,                    -- encoded JPEG/PNG; NULL once acknowledged
    selected REAL NOT NULL,        -- when it entered the outbox (the hourly budget counts these)
    attempts INTEGER NOT NULL DEFAULT 0,
    acked REAL                     -- when the center acknowledged it (NULL: pending)
);
CREATE INDEX IF NOT EXISTS pending ON hard_examples (acked, selected);
"""


@dataclass
class HardExample:
    """A frame worth labeling, and why."""

    camera_id: str
    model_version: str
    reason: str
    score: float
    ts: float
    frame_index: int
    image: bytes
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(self.image).hexdigest()

    def meta(self) -> dict:
        """The JSON sidecar the center stores (everything but the image)."""
        return {k: v for k, v in self.__dict__.items() if k != "image"}


class Outbox:
    """One SQLite file per node; one connection per thread (open one Outbox per thread)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def add(self, ex: HardExample) -> bool:
        """Commit a selected example; False when that frame is already in the outbox."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO hard_examples (sha256, camera_id, model_version, reason, score, ts, frame_index,"
            " image, selected) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ex.sha256, ex.camera_id, ex.model_version, ex.reason, float(ex.score), float(ex.ts), int(ex.frame_index),
             ex.image, time.time()))
        return cur.rowcount == 1

    def pending(self, limit: int = 16) -> list[HardExample]:
        """The oldest unacknowledged examples."""
        rows = self.db.execute(
            "SELECT camera_id, model_version, reason, score, ts, frame_index, image, sha256 FROM hard_examples"
            " WHERE acked IS NULL ORDER BY selected LIMIT ?", (limit,)).fetchall()
        return [HardExample(*r) for r in rows]

    def attempted(self, shas: list[str]) -> None:
        self.db.executemany("UPDATE hard_examples SET attempts = attempts + 1 WHERE sha256 = ?", [(s,) for s in shas])

    def ack(self, shas: list[str]) -> int:
        """Mark examples acknowledged by the center (drops their bytes); returns rows changed."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            n = sum(self.db.execute("UPDATE hard_examples SET acked = ?, image = NULL"
                                    " WHERE sha256 = ? AND acked IS NULL", (now, s)).rowcount for s in shas)
        return n

    def selected_since(self, since: float) -> int:
        """Examples that entered the outbox after `since` (the hourly budget survives restarts)."""
        return self.db.execute("SELECT COUNT(*) FROM hard_examples WHERE selected >= ?", (since,)).fetchone()[0]

    def stats(self) -> dict[str, int]:
        pending, acked = self.db.execute(
            "SELECT COALESCE(SUM(acked IS NULL), 0), COALESCE(SUM(acked IS NOT NULL), 0) FROM hard_examples").fetchone()
        return {"pending": int(pending), "acked": int(acked)}

    def shas(self) -> set[str]:
        """Every example ever selected on this node (pending or acknowledged)."""
        return {r[0] for r in self.db.execute("SELECT sha256 FROM hard_examples")}

    def close(self) -> None:
        self.db.close()
