"""The local store of samples not yet acknowledged by the broker.

Samples live in SQLite (WAL) under the data dir. ``add`` gives each sample the next id; the
transaction is committed by ``flush``, which the owner calls every ``buffer.flush_interval``, so the
card sees one write burst per interval, not one per sample.

Ids are persistent and never repeat: ids are reserved on disk in blocks before they are handed
out, and a clean close records the exact next id. After a crash the agent resumes after the
reserved block — a gap, which to a consumer correctly says "samples may be missing here".
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import StorageError
from .model import Sample, Value

log = logging.getLogger(__name__)

_ID_BLOCK = 10_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    ts INTEGER NOT NULL,
    vals TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Buffer:
    """Unacknowledged samples, oldest first; one batch at a time is handed out for sending."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._next_id = 1
        self._reserved_until = 0  # ids below this are reserved on disk
        self._sent_upto = 0  # samples with ids up to this were handed out and not released
        self._depth = 0

    def open(self) -> Buffer:
        """Open (creating when needed) the database; raises ``StorageError`` with the path."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
            self._next_id = self._first_free_id()
            self._depth = db.execute("SELECT count(*) FROM samples").fetchone()[0]
            db.execute("BEGIN")
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"buffer {self.path}: cannot open: {exc}") from exc
        log.info("buffer %s: %d samples waiting, next id %d", self.path, self._depth, self._next_id)
        return self

    def close(self) -> None:
        """Commit everything and record the exact next id, so a clean restart leaves no gap."""
        if self._db is None:
            return
        self._set_meta("next_id", self._next_id)
        self._set_meta("reserved_until", self._next_id)
        self.flush()
        self._db.close()
        self._db = None

    def __enter__(self) -> Buffer:
        return self.open()

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def depth(self) -> int:
        """Samples stored and not yet acknowledged."""
        return self._depth

    @property
    def next_id(self) -> int:
        return self._next_id

    def add(self, device: str, ts: int, values: Mapping[str, Value]) -> Sample:
        """Store one sample under the next id (committed at the next ``flush``)."""
        db = self._conn()
        if self._next_id >= self._reserved_until:
            self._reserve_ids()
        sample = Sample(self._next_id, device, ts, dict(values))
        db.execute(
            "INSERT INTO samples (id, device, ts, vals) VALUES (?, ?, ?, ?)",
            (sample.id, device, ts, json.dumps(sample.values, separators=(",", ":"))),
        )
        self._next_id += 1
        self._depth += 1
        return sample

    def take(self, limit: int) -> list[Sample]:
        """Up to ``limit`` of the oldest samples not handed out yet."""
        rows = (
            self._conn()
            .execute(
                "SELECT id, device, ts, vals FROM samples WHERE id > ? ORDER BY id LIMIT ?",
                (self._sent_upto, limit),
            )
            .fetchall()
        )
        if rows:
            self._sent_upto = rows[-1][0]
        return [Sample(i, d, ts, json.loads(v)) for i, d, ts, v in rows]

    def acknowledge(self, samples: Sequence[Sample]) -> None:
        """The broker has them: they leave the buffer."""
        ids = [(s.id,) for s in samples]
        self._conn().executemany("DELETE FROM samples WHERE id = ?", ids)
        self._depth -= len(ids)

    def release(self) -> None:
        """Sending failed: everything handed out and unacknowledged is to be sent again."""
        self._sent_upto = 0

    def flush(self) -> None:
        """Commit what was added and acknowledged since the last flush."""
        db = self._conn()
        try:
            db.execute("COMMIT")
            db.execute("BEGIN")
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {self.path}: cannot commit: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError(f"buffer {self.path} is not open")
        return self._db

    def _first_free_id(self) -> int:
        db = self._conn()
        highest: int = db.execute("SELECT coalesce(max(id), 0) FROM samples").fetchone()[0]
        meta: dict[str, int] = dict(db.execute("SELECT key, value FROM meta").fetchall())
        reserved = meta.get("reserved_until", 1)
        self._reserved_until = reserved
        return max(highest + 1, reserved, meta.get("next_id", 1))

    def _reserve_ids(self) -> None:
        """Record on disk, before handing them out, that the next block of ids is taken."""
        self._reserved_until = self._next_id + _ID_BLOCK
        self._set_meta("reserved_until", self._reserved_until)
        self.flush()

    def _set_meta(self, key: str, value: int) -> None:
        self._conn().execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
