"""The store of samples the broker has not acknowledged yet: memory first, disk for the rest.

A new sample lives in memory. Most are acknowledged within moments and never touch the SD card.
``flush`` (called every quarter of ``flush_interval``) commits to SQLite (WAL) the samples that
stayed unacknowledged for ¾ of ``flush_interval``, and deletes in one batch those acknowledged
since they were committed: a power cut loses less than one ``flush_interval``; a ``kill -9``
loses nothing committed.

The disk part is bounded by ``max_size`` (SQLite's ``max_page_count``): when it is full the oldest
samples are dropped, whole, and counted. A file system that is full or read-only, or a buffer
file that is corrupt (moved aside, a fresh one started), never stops the agent: samples wait in
memory (up to ``MEMORY_LIMIT``, oldest dropped beyond) and the disk is tried again.

Ids are persistent and never repeat: they are reserved in blocks in a small file beside the
database before they are handed out, and a clean close records the exact next id. After a crash
the ids resume after the reserved block — a gap, which to a consumer correctly says "samples may
be missing here". The same file keeps the newest sample time, for the clock check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StorageError
from .model import Sample, Value

log = logging.getLogger(__name__)

BUFFER_FILE = "buffer.sqlite"
ID_BLOCK = 10_000
#: Samples kept in memory at most while the disk cannot take them.
MEMORY_LIMIT = 100_000
#: Part of the stored samples dropped at once when the bound is reached (at least one).
DROP_FRACTION = 0.02
#: How often the same storage trouble is logged again, in seconds.
LOG_EVERY = 60.0
#: Room kept free on the file system for the write-ahead log (halved on a small one).
WAL_RESERVE = 8 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    ts INTEGER NOT NULL,
    vals TEXT NOT NULL,
    mono REAL,      -- set only for a sample whose wall clock was not trusted
    boot TEXT
);
"""


@dataclass(frozen=True)
class BufferStats:
    """What ``edge-agent buffer stats`` and ``health`` report."""

    depth: int  # samples waiting for the broker
    in_memory: int
    on_disk: int
    oldest_ts: int | None  # ms, of the oldest waiting sample
    bytes: int  # the database files on disk
    dropped: int  # samples ever dropped because the bound (or memory) was full
    next_id: int


class Buffer:
    """Unacknowledged samples: the live ones in memory, the backlog on disk."""

    def __init__(self, path: Path, max_size: int, flush_interval: float) -> None:
        self.path = path
        self.max_size = max_size
        #: A sample unacknowledged this long is committed at the next flush.
        self.commit_age = flush_interval * 0.75
        self._ids_file = path.with_suffix(".ids")
        self._db: sqlite3.Connection | None = None
        self._memory: OrderedDict[int, tuple[Sample, float]] = OrderedDict()
        self._in_flight: set[int] = set()
        self._deletes: list[int] = []  # acknowledged samples still on disk
        self._disk_cursor = 0  # backlog rows up to this id were handed out
        self._on_disk = 0
        self._wal_limit = max_size // 5
        self._next_id = 1
        self._reserved_until = 1
        self.newest_ts = 0  # ms: the newest sample time ever stored
        self.dropped = 0  # ever, kept in the ids file
        self._last_complaint = -LOG_EVERY

    # --- life cycle

    def open(self) -> Buffer:
        """Open the store; a store that cannot be opened leaves the buffer in memory only."""
        self._load_ids()
        self._open_db()
        log.info(
            "buffer %s: %d samples waiting, next id %d", self.path, self._on_disk, self._next_id
        )
        return self

    def close(self) -> None:
        """Commit everything unacknowledged and record the exact next id: no gap after a stop."""
        self.flush(force=True)
        self._reserved_until = self._next_id
        self._save_ids()
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Buffer:
        return self.open()

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- samples in

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def depth(self) -> int:
        """Samples stored and not yet acknowledged."""
        return len(self._memory) + self._on_disk

    def add(
        self,
        device: str,
        ts: int,
        values: Mapping[str, Value],
        *,
        mono: float | None = None,
        boot: str | None = None,
        now: float | None = None,
    ) -> Sample:
        """Keep one sample under the next id; ``mono``/``boot`` mark an untrusted wall clock."""
        if self._next_id >= self._reserved_until:
            self._reserved_until = self._next_id + ID_BLOCK
            self._save_ids()
        sample = Sample(self._next_id, device, ts, dict(values), mono=mono, boot=boot)
        self._next_id += 1
        if mono is None:
            self.newest_ts = max(self.newest_ts, ts)
        self._memory[sample.id] = (sample, time.monotonic() if now is None else now)
        if len(self._memory) > MEMORY_LIMIT:  # the disk has been refusing for a long while
            self._memory.popitem(last=False)
            self._count_dropped(1, "memory is full and the disk cannot take samples")
        return sample

    # --- samples out

    def take_live(self, limit: int) -> list[Sample]:
        """Up to ``limit`` of the oldest samples still in memory and not handed out yet."""
        batch = []
        for sample_id, (sample, _) in self._memory.items():
            if sample_id not in self._in_flight:
                batch.append(sample)
                if len(batch) == limit:
                    break
        self._in_flight.update(s.id for s in batch)
        return batch

    def take_backlog(self, limit: int) -> list[Sample]:
        """Up to ``limit`` of the oldest samples on disk not handed out yet."""
        if self._db is None or not self._on_disk:
            return []
        batch: list[Sample] = []
        while len(batch) < limit:
            rows = self._query(
                "SELECT id, device, ts, vals, mono, boot FROM samples WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (self._disk_cursor, limit - len(batch)),
            )
            if not rows:
                break
            self._disk_cursor = rows[-1][0]
            batch.extend(
                Sample(i, d, ts, json.loads(v), mono=m, boot=b)
                for i, d, ts, v, m, b in rows
                if i not in self._in_flight  # moved to disk while it was being sent live
            )
        self._in_flight.update(s.id for s in batch)
        return batch

    def acknowledge(self, samples: Sequence[Sample]) -> None:
        """The broker has them: they leave the buffer (from disk at the next flush)."""
        for sample in samples:
            self._in_flight.discard(sample.id)
            if self._memory.pop(sample.id, None) is None:
                self._deletes.append(sample.id)

    def release(self) -> None:
        """Sending failed: everything handed out and unacknowledged is to be sent again."""
        self._in_flight.clear()
        self._disk_cursor = 0

    # --- the disk

    def flush(self, now: float | None = None, *, force: bool = False) -> None:
        """Commit samples unacknowledged for ``commit_age`` (all: ``force``) and the deletes."""
        if self._db is None and not self._reopen():
            return
        now = time.monotonic() if now is None else now
        due = [
            sample
            for sample, added in self._memory.values()
            if force or now - added >= self.commit_age
        ]
        if not due and not self._deletes:
            return
        try:
            self._commit(due)
        except sqlite3.DatabaseError as exc:
            self._storage_trouble(exc)
            return
        for sample in due:
            del self._memory[sample.id]

    def _commit(self, due: list[Sample]) -> None:
        """Insert ``due`` and run the batched deletes in one transaction, dropping the oldest
        samples when the bound is reached."""
        db = self._conn()
        while True:
            try:
                with db:
                    deleted = db.executemany(
                        "DELETE FROM samples WHERE id = ?", ((i,) for i in self._deletes)
                    ).rowcount
                    inserted = db.executemany(
                        "INSERT OR IGNORE INTO samples (id, device, ts, vals, mono, boot) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (_row(s) for s in due),
                    ).rowcount
                break
            except sqlite3.OperationalError as exc:
                if not _is_full(exc):
                    raise
                self._checkpoint()  # give the WAL's space back before deleting
                if not self._drop_oldest(room_for=len(due)):
                    raise
                self._apply_bound()
        self._on_disk += max(inserted, 0) - max(deleted, 0)
        self._deletes = []
        self._bound_wal()
        self._apply_bound()

    def _apply_bound(self) -> None:
        """Cap the database below both ``max_size`` and what the file system can still hold.

        On a file system that is really full SQLite cannot even delete (the WAL must grow
        first), so the cap leaves room for the WAL: when it is reached, the oldest samples can
        always be dropped.
        """
        db = self._conn()
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            free = self.max_size
        have = pages * page_size + free
        reserve = min(WAL_RESERVE, have // 2)
        allowed = min(self.max_size * 6 // 10, have - reserve)
        db.execute(f"PRAGMA max_page_count={max(pages, allowed // page_size, 8)}")
        self._wal_limit = min(self.max_size // 5, reserve // 2)

    def _bound_wal(self) -> None:
        """Fold the write-ahead log back into the database before it outgrows its share."""
        with contextlib.suppress(OSError):
            if Path(f"{self.path}-wal").stat().st_size > self._wal_limit:
                self._checkpoint()

    def _checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _drop_oldest(self, room_for: int) -> bool:
        """Make room (for ``room_for`` samples at least) by dropping the oldest stored ones;
        False when nothing is left to drop."""
        rows = self._count_rows()
        if not rows:
            return False
        count = min(rows, max(room_for, int(rows * DROP_FRACTION), 1))
        with self._conn() as db:
            db.execute(
                "DELETE FROM samples WHERE id IN (SELECT id FROM samples ORDER BY id LIMIT ?)",
                (count,),
            )
        self._on_disk = rows - count
        self._count_dropped(count, f"the buffer reached its bound of {self.max_size} bytes")
        return True

    def _count_dropped(self, count: int, why: str) -> None:
        self.dropped += count
        self._complain(
            f"buffer {self.path}: {why}; dropped the oldest {count} sample(s), "
            f"{self.dropped} in all since start"
        )

    def _storage_trouble(self, exc: sqlite3.DatabaseError) -> None:
        """The disk refused: corrupt file, full or read-only file system. Keep going in memory."""
        if _is_corrupt(exc):
            self._move_aside(str(exc))
            return
        self._complain(
            f"buffer {self.path}: cannot write ({exc}); keeping {len(self._memory)} sample(s) "
            "in memory and trying again"
        )
        try:
            self._conn().rollback()
        except sqlite3.Error:
            self._close_db()

    def _complain(self, message: str) -> None:
        """Log storage trouble at most once a minute: a full card must not fill the journal."""
        now = time.monotonic()
        if now - self._last_complaint >= LOG_EVERY:
            self._last_complaint = now
            log.error("%s", message)

    # --- opening, corruption

    def _open_db(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # ``with db`` commits or rolls back one transaction
            db = self._db = sqlite3.connect(self.path, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA journal_size_limit={self.max_size // 5}")
            db.executescript(_SCHEMA)
            self._apply_bound()
            self._on_disk = self._count_rows()
            highest = db.execute("SELECT coalesce(max(id), 0) FROM samples").fetchone()[0]
            self._next_id = max(self._next_id, highest + 1)
        except sqlite3.DatabaseError as exc:
            self._close_db()
            if _is_corrupt(exc):
                self._move_aside(str(exc))
            else:
                self._complain(f"buffer {self.path}: cannot open ({exc}); samples wait in memory")
        except OSError as exc:
            self._close_db()
            self._complain(f"buffer {self.path}: cannot open ({exc}); keeping samples in memory")

    def _reopen(self) -> bool:
        """Try the disk again (it may have been freed or remounted)."""
        now = time.monotonic()
        if now - self._last_complaint < LOG_EVERY / 4:
            return False
        self._open_db()
        return self._db is not None

    def _move_aside(self, reason: str) -> None:
        """A corrupt buffer file is kept for inspection under a timestamped name; a fresh one
        replaces it."""
        self._close_db()
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            old = Path(f"{self.path}{suffix}")
            if old.exists():
                old.rename(f"{self.path}.corrupt-{stamp}{suffix}")
        log.error(
            "buffer %s is corrupt (%s): moved aside as %s.corrupt-%s; starting a fresh buffer "
            "(the samples in it are lost unless recovered by hand)",
            self.path,
            reason,
            self.path.name,
            stamp,
        )
        self._disk_cursor = 0
        self._on_disk = 0
        self._open_db()

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    # --- ids

    def _load_ids(self) -> None:
        try:
            saved = json.loads(self._ids_file.read_text())
            self._next_id = max(self._next_id, int(saved["reserved_until"]))
            self.newest_ts = int(saved.get("newest_ts", 0))
            self.dropped = int(saved.get("dropped", 0))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Without it ids could repeat: jump far ahead instead (a gap, never a repeat).
            log.error(
                "buffer %s: %s unreadable (%s); ids skip ahead", self.path, self._ids_file.name, exc
            )
            self._next_id += 10 * ID_BLOCK
        self._reserved_until = self._next_id

    def _save_ids(self) -> None:
        """Atomically record the reservation: write, sync, rename."""
        state = {
            "reserved_until": self._reserved_until,
            "newest_ts": self.newest_ts,
            "dropped": self.dropped,
        }
        tmp = self._ids_file.with_suffix(".tmp")
        try:
            self._ids_file.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w") as file:
                json.dump(state, file)
                file.flush()
                os.fsync(file.fileno())
            tmp.replace(self._ids_file)
        except OSError as exc:
            self._complain(f"buffer {self.path}: cannot record ids in {self._ids_file}: {exc}")

    # --- inspection

    def stats(self) -> BufferStats:
        oldest = next(iter(self._memory.values()))[0].ts if self._memory else None
        if self._on_disk and self._db is not None:
            row = self._query("SELECT min(ts) FROM samples", ())
            oldest = row[0][0] if row and row[0][0] is not None else oldest
        size = sum(
            Path(f"{self.path}{s}").stat().st_size
            for s in ("", "-wal")
            if Path(f"{self.path}{s}").exists()
        )
        return BufferStats(
            self.depth, len(self._memory), self._on_disk, oldest, size, self.dropped, self._next_id
        )

    def purge(self) -> int:
        """Drop every waiting sample; returns how many. Ids go on from where they were."""
        count = self.depth
        self._memory.clear()
        self._in_flight.clear()
        self._deletes = []
        if self._db is not None:
            with self._conn() as db:
                db.execute("DELETE FROM samples")
        self._on_disk = 0
        return count

    def _count_rows(self) -> int:
        rows = self._query("SELECT count(*) FROM samples", ())
        return int(rows[0][0]) if rows else 0

    def _query(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            self._storage_trouble(exc)
            return []

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError(f"buffer {self.path} is not open")
        return self._db


def read_only(path: Path) -> sqlite3.Connection:
    """The buffer database opened for reading only: safe beside a running agent."""
    if not path.exists():
        raise StorageError(f"no buffer at {path}: the agent has not run with this data_dir yet")
    try:
        return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"buffer {path}: cannot open: {exc}") from exc


def stored_samples(db: sqlite3.Connection) -> Iterator[Sample]:
    """Every committed sample, oldest first."""
    for i, d, ts, v, m, b in db.execute(
        "SELECT id, device, ts, vals, mono, boot FROM samples ORDER BY id"
    ):
        yield Sample(i, d, ts, json.loads(v), mono=m, boot=b)


def stored_stats(path: Path) -> BufferStats:
    """What a running (or stopped) agent has committed, read from the files alone."""
    with contextlib.closing(read_only(path)) as db:
        count, oldest = db.execute("SELECT count(*), min(ts) FROM samples").fetchone()
    try:
        saved = json.loads(path.with_suffix(".ids").read_text())
    except (OSError, ValueError):
        saved = {}
    size = sum(
        p.stat().st_size for p in path.parent.glob(path.name + "*") if "corrupt" not in p.name
    )
    return BufferStats(
        count,
        0,
        count,
        oldest,
        size,
        int(saved.get("dropped", 0)),
        int(saved.get("reserved_until", 1)),
    )


def _row(sample: Sample) -> tuple[object, ...]:
    values = json.dumps(sample.values, separators=(",", ":"), ensure_ascii=False)
    return (sample.id, sample.device, sample.ts, values, sample.mono, sample.boot)


def _is_full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc).lower()


def _is_corrupt(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text
