"""The buffer's database file as this version writes it: its tables and the columns read back,
its format version (``PRAGMA user_version``) and the migrations from older ones, and the refusal
of a file a newer version wrote.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import AgentError
from . import salvage
from .ids import FORMAT as IDS_FORMAT
from .ids import format_of as ids_format
from .journal import FORMAT as JOURNAL_FORMAT
from .journal import format_of as journal_format
from .salvage import StoredRow

log = logging.getLogger(__name__)

#: The database's format, in ``PRAGMA user_version``, recorded by the transaction that makes or
#: migrates it: 1 (0.1.0's tables) since 0.2.0. 0 is none recorded: a database of 0.1.0, or a
#: new file; ``_STEPS`` takes either on from there, one format at a time.
FORMAT = 1

#: Format 1's tables, as 0.1.0 made them at every open (kept as they were: a later format
#: changes them in a step of its own, so that a new database and a migrated one are the same).
_TABLES_1 = (
    """CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    ts INTEGER NOT NULL,
    vals TEXT NOT NULL,
    mono REAL,      -- set only for a sample whose wall clock was not trusted
    boot TEXT,      -- its boot id; NULL with mono set: sent unsynced, to stay so
    crc INTEGER     -- salvage.row_crc of the row; NULL in rows of earlier versions
)""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER, device BLOB, ts INTEGER, vals BLOB, mono REAL, boot BLOB, crc INTEGER,
    reason TEXT NOT NULL, at INTEGER NOT NULL
)""",
)
#: Each column as stored, or NULL (-1 for the checksum) where damage changed its type: a row
#: read this way is judged by its checksum, never by a decoding error that stops the query.
COLUMNS = (
    "id, CAST(device AS BLOB), CASE typeof(ts) WHEN 'integer' THEN ts END, "
    "CAST(vals AS BLOB), CASE WHEN typeof(mono) IN ('real', 'integer') THEN mono END, "
    "CAST(boot AS BLOB), CASE typeof(crc) WHEN 'integer' THEN crc WHEN 'null' THEN NULL "
    "ELSE -1 END"
)
LEGACY_COLUMNS = COLUMNS[: COLUMNS.rindex(", CASE typeof(crc)")] + ", NULL"


class NewerFormat(AgentError):
    """A file of the buffer is of a newer format than this version reads: a newer edge-agent
    wrote it, then this one was installed. Not damage (nothing is wrong with it): it is never
    mended, rebuilt or purged, nor written to; a person chooses what to run."""


#: What a damaged file makes SQLite raise: its errors, and a UnicodeDecodeError when the message
#: it gives quotes the damaged bytes (a mangled schema).
DB_ERRORS = (sqlite3.DatabaseError, UnicodeDecodeError)


def stored(row: Sequence[Any]) -> StoredRow:
    sample_id, device, ts, vals, mono, boot, crc = row
    return StoredRow(sample_id, device, ts, vals, mono, boot, crc)


def wal_and_shm(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def ids_present(db: sqlite3.Connection, ids: Iterable[int]) -> set[int]:
    """Which of ``ids`` the samples table holds."""
    wanted, found = sorted(ids), set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        found |= {i for (i,) in db.execute(f"SELECT id FROM samples WHERE id IN ({marks})", chunk)}
    return found


def _to_format_1(db: sqlite3.Connection) -> None:
    """Format 1, 0.1.0's: a new database gets its tables. 0.1.0's own database has them all and
    needs nothing (this step just lets it be stamped); one of a version before it gets the
    checksum column, its rows left unchecked (rows carry a checksum from ``checked_from`` on)."""
    for table in _TABLES_1:
        db.execute(table)
    columns = {r[1] for r in db.execute("PRAGMA table_info(samples)")}
    first = 0
    if "crc" not in columns:
        db.execute("ALTER TABLE samples ADD COLUMN crc INTEGER")
        first = int(db.execute("SELECT coalesce(max(id), 0) + 1 FROM samples").fetchone()[0])
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('checked_from', ?)", (first,))


#: ``_STEPS[n]`` takes a database from format n to n + 1 (a new one, at 0, takes them all). A
#: step runs inside the migration's transaction: it must not commit (``with db``), and it may
#: find a database it already worked on, rolled back by a crash: the work is all there or none.
_STEPS: tuple[Callable[[sqlite3.Connection], None], ...] = (_to_format_1,)


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the database to ``FORMAT``: the steps from the format it records, and the new
    format, in one transaction. A failure or a crash part-way rolls it all back (SQLite's own
    journal): the database stays whole at its old format, and the next open starts again."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if not _written_by_a_release(version):
        log.warning(
            "buffer %s: its header says format %d, which no edge-agent wrote (damage): "
            "read as format %d",
            path,
            version,
            FORMAT,
        )
        with db:
            db.execute(f"PRAGMA user_version = {FORMAT}")
        return
    if version > FORMAT:  # open() read it from the file first: only a file replaced since
        raise _newer(path, version, FORMAT, _MOVE_DB)
    if version == FORMAT:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in _STEPS[version:FORMAT]:
            step(db)
        db.execute(f"PRAGMA user_version = {FORMAT}")
        db.commit()
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.rollback()
        raise


def refuse_newer(path: Path, journals: Iterable[Path]) -> None:
    """``NewerFormat`` when the database at ``path``, its ids file or one of ``journals`` is of
    a newer format than this version reads. Read from the bytes (SQLite is not asked: it would
    write to the file), before anything is written. Moving the ids file away is no fix: it is
    the only record of the ids the newer version handed out (without it they could repeat)."""
    ids_path = path.with_suffix(".ids")
    found = [
        (path, salvage.user_version(path, wal_and_shm(path)[0]), FORMAT, _MOVE_DB),
        (ids_path, ids_format(ids_path), IDS_FORMAT, ""),
        *((journal, journal_format(journal), JOURNAL_FORMAT, _MOVE) for journal in journals),
    ]
    for file, version, known, fix in found:
        if version > known and (file != path or _written_by_a_release(version)):
            raise _newer(file, version, known, fix)


#: Formats a later release may have written, beyond ``FORMAT``. A database whose header says
#: more (or less than 0) was written by none: those 4 bytes of its first page, which no checksum
#: covers, are damaged. It is read as ``FORMAT``, never refused for good over a flipped byte.
FORMATS_AHEAD = 16


def _written_by_a_release(version: int) -> bool:
    return 0 <= version <= FORMAT + FORMATS_AHEAD


#: The other fix for a file of a newer format: it stays for the newer version, this one starts
#: without it (the samples in it wait there).
_MOVE = ", or move it away to start empty"
_MOVE_DB = ", or move it and its -wal away to start empty"


def _newer(file: Path, version: int, known: int, fix: str) -> NewerFormat:
    return NewerFormat(
        f"{file} is format {version}, newer than this edge-agent {__version__} reads "
        f"({known}): install the newer edge-agent again{fix}"
    )


def checksummed_from(db: sqlite3.Connection) -> int:
    """For a reader: from which id rows carry a checksum (all ids: none do yet)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(samples)")}
    if "crc" not in columns:
        return 2**63
    with contextlib.suppress(sqlite3.Error):
        row = db.execute("SELECT value FROM meta WHERE key = 'checked_from'").fetchone()
        return int(row[0]) if row else 0
    return 0
