"""Reading a buffer beside a running agent, from its files alone (``edge-agent buffer stats``
and ``export``, ``status``): the committed samples, and those its journal of this boot holds (in
memory, or left by a run that was killed). Nothing here writes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from ..clock import Clock
from ..errors import StorageError
from ..model import Sample
from . import salvage
from .buffer import BufferStats
from .formats import (
    COLUMNS,
    DB_ERRORS,
    LEGACY_COLUMNS,
    checksummed_from,
    ids_present,
    refuse_newer,
    stored,
    wal_and_shm,
)
from .ids import IdLedger
from .journal import Journal, journal_dirs, journal_path
from .salvage import Found, StoredRow, intact, to_sample


def read_only(path: Path) -> sqlite3.Connection:
    """The buffer database opened for reading only: safe beside a running agent."""
    if not path.exists():
        raise StorageError(f"no buffer at {path}: the agent has not run with this data_dir yet")
    try:
        return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"buffer {path}: cannot open: {exc}") from exc


def stored_samples(
    path: Path, boot: str | None = None, damaged: Callable[[str], None] = lambda _: None
) -> Iterator[Sample]:
    """Every waiting sample, oldest first, from the buffer's files alone (safe beside a running
    agent): the committed ones and those its journal of this boot holds (in memory, or left by
    a run that was killed). Damaged rows are left out, each said to ``damaged``; a damaged
    database is read page by page. ``StorageError`` when there is no buffer at all."""
    refuse_newer(path, _journal_paths(path))
    journal = _journal_samples(path, boot)
    if not path.exists() and journal:  # a disk that never took the database
        yield from (journal[i] for i in sorted(journal))
        return
    try:
        with contextlib.closing(read_only(path)) as db:
            checked_from = checksummed_from(db)
            columns = COLUMNS if checked_from < 2**63 else LEGACY_COLUMNS
            rows = db.execute(f"SELECT {columns} FROM samples ORDER BY id")
            yield from _merged(map(stored, rows), journal, damaged, checked_from)
        return
    except DB_ERRORS as exc:
        damaged(f"the database is damaged ({exc}): reading it page by page")
    found = Found()
    rows_by_id = sorted(salvage.scan(path, wal_and_shm(path)[0], found), key=lambda r: r.id)
    yield from _merged(iter(rows_by_id), journal, damaged)
    for sample_id in sorted(found.damaged - {r.id for r in rows_by_id}):
        damaged(f"sample id {sample_id} is damaged: left out")


def stored_stats(path: Path, boot: str | None = None) -> BufferStats:
    """What a running (or stopped) agent has stored, from its files alone (its journal: of
    this boot unless ``boot`` names another)."""
    refuse_newer(path, _journal_paths(path))
    counts: dict[str, int] = {}
    journal = _journal_samples(path, boot)
    count, oldest = 0, None
    try:
        if not path.exists() and journal:
            raise FileNotFoundError(path)  # a disk that never took the database: the journal

        with contextlib.closing(read_only(path)) as db:
            count, oldest = db.execute("SELECT count(*), min(ts) FROM samples").fetchone()
            with contextlib.suppress(sqlite3.Error):
                counts = dict(db.execute("SELECT key, value FROM meta"))
            for sample_id in ids_present(db, journal):  # committed, still journaled until confirmed
                del journal[sample_id]
    except FileNotFoundError:
        pass
    except DB_ERRORS:
        found = Found()
        times = [r.ts for r in salvage.scan(path, wal_and_shm(path)[0], found)]
        count, oldest, counts = len(times), min(times, default=None), found.meta
    ids = IdLedger(path.with_suffix(".ids"))
    ids.load()
    oldest = min([t for t in (oldest, *(s.ts for s in journal.values())) if t is not None] or [0])
    size = sum(p.stat().st_size for p in (path, wal_and_shm(path)[0]) if p.exists())
    return BufferStats(
        depth=count + len(journal),
        in_memory=len(journal),
        on_disk=count,
        oldest_ts=oldest or None,
        bytes=size,
        dropped=max(int(counts.get("dropped", 0)), ids.record.dropped),
        next_id=max(ids.next_id, max(journal, default=0) + 1),
        lost=max(int(counts.get("lost", 0)), ids.record.lost),
    )


def _journal_paths(path: Path) -> list[Path]:
    return [journal_path(directory, path) for directory in journal_dirs()]


def _journal_samples(path: Path, boot: str | None) -> dict[int, Sample]:
    boot = Clock().boot_id() if boot is None else boot
    samples: dict[int, Sample] = {}
    for journal in _journal_paths(path):
        samples |= Journal(journal, path, boot).recover().samples
    return samples


def _merged(
    rows: Iterator[StoredRow],
    journal: dict[int, Sample],
    damaged: Callable[[str], None],
    checked_from: int = 0,
) -> Iterator[Sample]:
    """Stored rows (by id) and the journal's samples, in one ascending run of ids."""
    extra = deque(sorted(journal.items()))
    for row in rows:
        while extra and extra[0][0] < row.id:
            yield extra.popleft()[1]
        if extra and extra[0][0] == row.id:
            extra.popleft()
        try:
            if not intact(row, checked_from):
                raise ValueError("checksum mismatch")
            yield to_sample(row)
        except (ValueError, UnicodeDecodeError) as exc:
            damaged(f"sample id {row.id} is damaged ({exc}): left out")
    yield from (sample for _, sample in extra)
