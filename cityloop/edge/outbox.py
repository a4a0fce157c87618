"""The edge node's durable outbox of hard examples (SQLite, WAL, synchronous=FULL).

A hard example is committed here in one transaction when it is selected; the uploader sends
pending rows to the center and marks them acknowledged only after the center's ack (the image
bytes are then dropped, the row stays as the record of what was sent). Primary key: the frame's
sha256, so re-selecting the same frame after a restart is a no-op. Killing the process at any
moment leaves each row either pending (sent again: the center's ingest is idempotent) or acked.

An example the center keeps refusing (a 4xx for it alone, or a 2xx that does not acknowledge it)
is moved to the dead letter after `max_attempts` refusals, and one that can never fit in a request
under the inbox's body limit at once: it leaves the pending queue (which goes on draining) and
keeps its image and the reason, for an operator to look at (`dead_letters`) or put back (`requeue`).
"""

from __future__ import annotations

import base64
import hashlib
import json
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
CREATE TABLE IF NOT EXISTS dead_letter (
    sha256 TEXT PRIMARY KEY REFERENCES hard_examples (sha256),
    reason TEXT NOT NULL,          -- the center's last answer, or why it can never be sent
    refusals INTEGER NOT NULL,
    moved REAL NOT NULL            -- when it left the pending queue
);
"""
MIGRATIONS = (("refusals", "ALTER TABLE hard_examples ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0"),
              ("last_error", "ALTER TABLE hard_examples ADD COLUMN last_error TEXT"))
NOT_DEAD = "sha256 NOT IN (SELECT sha256 FROM dead_letter)"


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

    def upload_item(self) -> dict:
        """This example as one item of an upload body: its sidecar and the base64 image."""
        return {**self.meta(), "image": base64.b64encode(self.image).decode()}

    def encoded_size(self) -> int:
        """Bytes this example adds to a JSON upload body (its item and a separator)."""
        return len(json.dumps(self.upload_item())) + 2


class Outbox:
    """One SQLite file per node; one connection per thread (open one Outbox per thread)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        have = {r[1] for r in self.db.execute("PRAGMA table_info(hard_examples)")}
        for column, ddl in MIGRATIONS:  # an outbox written by an older node
            if column not in have:
                self.db.execute(ddl)

    def add(self, ex: HardExample) -> bool:
        """Commit a selected example; False when that frame is already in the outbox."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO hard_examples (sha256, camera_id, model_version, reason, score, ts, frame_index,"
            " image, selected) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ex.sha256, ex.camera_id, ex.model_version, ex.reason, float(ex.score), float(ex.ts), int(ex.frame_index),
             ex.image, time.time()))
        return cur.rowcount == 1

    def pending(self, limit: int = 16) -> list[HardExample]:
        """The oldest unacknowledged examples (dead letters excluded)."""
        rows = self.db.execute(
            "SELECT camera_id, model_version, reason, score, ts, frame_index, image, sha256 FROM hard_examples"
            f" WHERE acked IS NULL AND {NOT_DEAD} ORDER BY selected LIMIT ?", (limit,)).fetchall()
        return [HardExample(*r) for r in rows]

    def batch(self, limit: int, max_bytes: int, overhead: int = 256) -> tuple[list[HardExample], list[HardExample]]:
        """The next upload: the oldest pending examples (at most `limit`) whose JSON body stays under
        `max_bytes` (`overhead`: the body's own keys), and the examples at its head that could never
        fit even alone (for the dead letter)."""
        batch: list[HardExample] = []
        oversized: list[HardExample] = []
        size = overhead
        for ex in self.pending(limit):
            n = ex.encoded_size()
            if overhead + n > max_bytes:
                if not batch:
                    oversized.append(ex)
                    continue
                break
            if size + n > max_bytes:
                break
            batch.append(ex)
            size += n
        return batch, oversized

    def refused(self, shas: list[str], why: str, max_attempts: int) -> list[str]:
        """Count one refusal by the center for each example; those refused `max_attempts` times go to the
        dead letter (returned)."""
        dead = []
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for sha in shas:
                self.db.execute("UPDATE hard_examples SET refusals = refusals + 1, last_error = ?"
                                " WHERE sha256 = ? AND acked IS NULL", (why[:500], sha))
                row = self.db.execute("SELECT refusals FROM hard_examples WHERE sha256 = ? AND acked IS NULL",
                                      (sha,)).fetchone()
                if row and row[0] >= max_attempts:
                    self._bury(sha, f"refused {row[0]} times; last: {why}")
                    dead.append(sha)
        return dead

    def dead_letter(self, sha: str, why: str) -> None:
        """Take one example out of the pending queue for good (e.g. it can never fit in a request)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self._bury(sha, why)

    def _bury(self, sha: str, why: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO dead_letter (sha256, reason, refusals, moved) SELECT sha256, ?,"
                        " refusals, ? FROM hard_examples WHERE sha256 = ?", (why[:1000], time.time(), sha))

    def dead_letters(self) -> list[dict]:
        """The dead letter: sha256, reason, refusals, moved (oldest first)."""
        cur = self.db.execute("SELECT sha256, reason, refusals, moved FROM dead_letter ORDER BY moved")
        return [dict(zip(("sha256", "reason", "refusals", "moved"), r, strict=True)) for r in cur]

    def requeue(self, shas: list[str] | None = None) -> int:
        """Put dead letters back in the pending queue (all when `shas` is None), refusals reset."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            shas = shas if shas is not None else [r[0] for r in self.db.execute("SELECT sha256 FROM dead_letter")]
            for sha in shas:
                self.db.execute("UPDATE hard_examples SET refusals = 0 WHERE sha256 = ?", (sha,))
            return sum(self.db.execute("DELETE FROM dead_letter WHERE sha256 = ?", (s,)).rowcount for s in shas)

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
        """pending (waiting to be sent), acked, dead (in the dead letter)."""
        dead = self.db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
        unacked, acked = self.db.execute(
            "SELECT COALESCE(SUM(acked IS NULL), 0), COALESCE(SUM(acked IS NOT NULL), 0) FROM hard_examples").fetchone()
        return {"pending": int(unacked) - int(dead), "acked": int(acked), "dead": int(dead)}

    def shas(self) -> set[str]:
        """Every example ever selected on this node (pending or acknowledged)."""
        return {r[0] for r in self.db.execute("SELECT sha256 FROM hard_examples")}

    def close(self) -> None:
        self.db.close()
