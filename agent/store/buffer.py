"""The store of samples the broker has not acknowledged yet: memory first, disk for the rest.

A new sample lives in memory (and in the crash journal in RAM, ``agent.journal``). Most are
acknowledged within moments and never touch the SD card. ``flush`` (every quarter of
``flush_interval``) commits to SQLite (WAL) the samples that stayed unacknowledged for ¾ of
``flush_interval``, and deletes in one batch those acknowledged since they were committed: a
power cut loses less than one ``flush_interval``; a ``kill -9`` loses nothing. Committed samples
leave the journal only once a later write to the card succeeds: a card that fails into read-only
at the moment of a commit can lose that commit although SQLite reported it done.

The disk part is bounded by ``max_size`` and by what the file system can hold: when it is full
the oldest samples are dropped, whole, and counted. A file system that is full or read-only never
stops the agent: samples wait in memory (up to ``MEMORY_LIMIT``, oldest dropped beyond, counted)
and the disk is tried again.

Damage never stops it either. Every row carries a checksum: a damaged row is moved to the
``quarantine`` table and counted as lost, and the intact ones still drain. A damaged write-ahead
log (SQLite would silently drop every transaction after the damage) and a damaged database file
are read back page by page (``agent.salvage``): every intact row is kept, the damaged files are
moved aside for inspection, and the samples that were committed and are gone are reported once,
loudly, with their count and ids. Counts of dropped and lost samples are kept in the database, in
the same transaction as the drop, so they survive a ``kill -9``.

Ids never repeat: see ``agent.ids``.

Its files outlive a package upgrade, and each records its format: the database in ``PRAGMA
user_version`` (``formats.FORMAT``), the ids file and the crash journal in their own (``agent.ids``,
``agent.journal``). An upgrade migrates the database at open, one step per format, all in one
transaction with the new version (a crash part-way leaves the old version whole, migrated again
at the next open). A file of a newer format than this version reads (a downgrade) is not damage:
nothing reads, mends or writes it; the buffer refuses to open (``NewerFormat``), with one line
naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StorageError
from ..model import Sample, Value
from . import salvage
from .formats import (
    COLUMNS,
    DB_ERRORS,
    NewerFormat,
    checksummed_from,
    ids_present,
    migrate,
    refuse_newer,
    stored,
    wal_and_shm,
)
from .ids import IdLedger
from .journal import Journal, Recovered, journal_path, runtime_dir
from .salvage import Found, StoredRow, intact, row_crc, to_sample

log = logging.getLogger(__name__)

BUFFER_FILE = "buffer.sqlite"
#: Samples kept in memory at most while the disk cannot take them.
MEMORY_LIMIT = 100_000
#: Part of the stored samples dropped at once when the bound is reached (at least one).
DROP_FRACTION = 0.02
#: How often the same storage trouble is logged again, in seconds (a summary says the rest).
LOG_EVERY = 60.0
#: Room kept free on the file system for the write-ahead log (halved on a small one).
WAL_RESERVE = 8 * 1024 * 1024
#: Samples read per query while rebuilding a damaged database.
BATCH = 1000
#: Ids listed by name in a line about lost samples; the rest are counted.
SHOWN_IDS = 20


@dataclass(frozen=True)
class BufferStats:
    """What ``edge-agent buffer stats``, ``health`` and ``status`` report."""

    depth: int  # samples waiting for the broker
    in_memory: int
    on_disk: int
    oldest_ts: int | None  # ms, of the oldest waiting sample
    bytes: int  # the database files on disk
    dropped: int  # samples ever dropped because the bound (or memory) was full
    next_id: int
    lost: int = 0  # samples ever lost to damage on disk
    waiting_for_id: int = 0  # samples held until an id can be handed out safely


class Complaints:
    """Storage trouble logged at most once per ``LOG_EVERY`` per kind; what was held back is
    said by ``tick`` once the minute is over (the latest message, with how many were held
    back), so that the last word is never swallowed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, tuple[int, str, int]] = {}  # kind: (count, latest, level)
        self._tried: dict[str, float] = {}

    def due(self, kind: str, every: float) -> bool:
        """True at most once per ``every`` seconds for ``kind``: for retries, not for logs."""
        now = self._clock()
        if now - self._tried.get(kind, -every) < every:
            return False
        self._tried[kind] = now
        return True

    def say(self, kind: str, message: str, level: int = logging.ERROR) -> None:
        now = self._clock()
        if now - self._last.get(kind, -LOG_EVERY) >= LOG_EVERY:
            self._last[kind] = now
            self._held.pop(kind, None)
            log.log(level, "%s", message)
            return
        count = self._held.get(kind, (0, "", level))[0]
        self._held[kind] = (count + 1, message, level)

    def tick(self) -> None:
        now = self._clock()
        for kind, (count, message, level) in list(self._held.items()):
            if now - self._last.get(kind, 0.0) >= LOG_EVERY:
                del self._held[kind]
                self._last[kind] = now
                many = f"{count} time{'s' * (count != 1)}"
                log.log(level, "%s (this happened %s more in the last minute)", message, many)


@dataclass
class _Pending:
    """A sample taken while no id could be handed out safely."""

    device: str
    ts: int
    values: dict[str, Value]
    mono: float | None
    boot: str | None
    added: float


class Buffer:
    """Unacknowledged samples: the live ones in memory, the backlog on disk."""

    def __init__(
        self,
        path: Path,
        max_size: int,
        flush_interval: float,
        *,
        journal_dir: Path | None = None,
        trusted_ms: Callable[[], int | None] | None = None,
        boot: str = "",
    ) -> None:
        self.path = path
        self.max_size = max_size
        #: A sample unacknowledged this long is committed at the next flush.
        self.commit_age = flush_interval * 0.75
        #: The wall clock in ms when it can be trusted: ids come from it when the disk refuses.
        self._trusted_ms = trusted_ms or (lambda: None)
        self._ledger = IdLedger(path.with_suffix(".ids"))
        self._journal = (
            Journal(journal_path(journal_dir, path), path, boot) if journal_dir else None
        )
        self._db: sqlite3.Connection | None = None
        self._memory: OrderedDict[int, tuple[Sample, float]] = OrderedDict()
        self._pending: deque[_Pending] = deque()
        self._in_flight: set[int] = set()
        self._deletes: set[int] = set()  # acknowledged samples still on disk
        #: Committed by the last flush, and still in the journal: a card that fails into
        #: read-only at the moment of a commit can lose it although SQLite said it was done
        #: (the fault campaign saw it). A later write to the card that succeeds confirms it.
        self._unconfirmed: dict[int, Sample] = {}
        self._unrestored: Found | None = None  # rows of a damaged WAL, still to be put back
        self._noted_reservation = 0  # the reservation last copied into the database
        self._journal_base = ""  # the run whose mark of the ids file this run started from
        self._disk_cursor = 0  # backlog rows up to this id were handed out
        self._on_disk = 0
        self._wal_limit = max_size // 5
        self._full_because = ""  # what limits the database now, for the drop message
        #: Damaged rows skipped (and counted) while the database cannot be rebuilt.
        self._bad: set[int] = set()
        self._checked_from = 0  # rows from this id on carry a checksum
        self._rebuilding = False
        self.newest_ts = 0  # ms: the newest sample time ever stored
        self.dropped = 0  # ever (kept in the database and in the ids file)
        self.lost = 0  # ever lost to damage
        self._counts_stored = (0, 0)
        self._id_state = ""  # how ids were last said to be handed out: "", "clock", "waiting"
        self.complaints = Complaints()

    # --- life cycle

    def open(self) -> Buffer:
        """Open the store, mending what damage it finds; one that cannot be opened leaves the
        buffer in memory (and the journal) until the disk can be used. ``NewerFormat``, before
        anything is written, when a file is of a newer version's format."""
        refuse_newer(self.path, [self._journal.path] if self._journal else [])
        had_database = self.path.exists()
        self._make_dir()
        recovered = self._journal.recover() if self._journal else None
        earlier = self._ledger.peek()
        self.dropped, self.lost, self.newest_ts = earlier.dropped, earlier.lost, earlier.newest_ts
        wal_rows = self._wal_rows_lost_by_sqlite()
        lost_before = self.lost
        # What the disk should hold: what a clean stop left (a rebuild compares with it).
        self._on_disk = earlier.stored if earlier.next_id is not None else 0
        self._open_db()
        self._load_counts()
        # The journal's next id speaks for the ids only if no run after it marked the ids file
        # (its own mark, or the one it started from, is the last): a journal left by an older
        # run, whose successor had no journal, must not.
        exact = None
        self._journal_base = earlier.run
        if recovered and recovered.next_id and earlier.run in (recovered.run, recovered.base):
            exact = recovered.next_id
        loaded = self._ledger.load(
            self._floor(recovered),
            exact,
            expected=had_database,
            known_reserved=self._meta_value("reserved_until"),
        )
        for problem in loaded.problems:
            log.error("buffer %s: %s: ids resume at %d", self.path, problem, self.next_id)
        if loaded.clean:
            self._check_count(earlier.stored, self.lost - lost_before)
        elif exact is None and earlier.seq and not loaded.problems:
            log.warning(
                "buffer %s: the last run did not stop cleanly and left no journal (a reboot or "
                "power cut): ids resume at %d, past what it reserved; the samples it had not "
                "yet committed are lost",
                self.path,
                self.next_id,
            )
        if self._ledger.mark_unclean():
            self._note_reservation()
        else:
            self.complaints.say("ids", f"buffer {self.path}: {self._ledger.refusal}")
        self._unrestored = wal_rows
        self._restore_pending()
        if recovered and recovered.samples:
            self._take_back(recovered.samples)
        self._start_journal()
        log.info(
            "buffer %s: %d samples waiting, next id %d",
            self.path,
            self.depth,
            self._ledger.next_id,
        )
        return self

    def _floor(self, recovered: Recovered | None) -> int:
        """One past the highest id known to be taken: on disk, or in the journal."""
        floor = self._highest_stored() + 1
        if recovered:
            floor = max(floor, recovered.next_id, max(recovered.samples, default=0) + 1)
        return floor

    def close(self) -> None:
        """Commit everything unacknowledged and record the exact next id: no gap after a stop."""
        self.flush(force=True)
        if self._pending:  # never got an id: nothing can keep them past this stop
            self.dropped += len(self._pending)
            log.error(
                "buffer %s: %d sample(s) that never got an id (no reservation on disk, no "
                "synchronised clock) are lost with this stop; counted as dropped",
                self.path,
                len(self._pending),
            )
            self._pending.clear()
        self._store_counts()
        self._ledger.note(dropped=self.dropped, lost=self.lost, newest_ts=self.newest_ts)
        recorded = self._ledger.close(stored=self._on_disk if self._db is not None else 0)
        if not recorded:
            log.error("buffer %s: %s", self.path, self._ledger.refusal)
        elif self._journal:  # the ids file went to the card after the last commit: confirmed
            self._journal.removed(self._unconfirmed)
            self._unconfirmed.clear()
        if self._journal:
            # kept while it holds samples, or the exact next id the disk would not take
            self._journal.close(keep=bool(self._memory or self._pending) or not recorded)
        self._close_db()
        self.complaints.tick()

    def __enter__(self) -> Buffer:
        return self.open()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _make_dir(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            self.complaints.say(
                "open", f"buffer {self.path}: cannot make its directory ({exc.strerror or exc})"
            )

    # --- samples in

    @property
    def next_id(self) -> int:
        return self._ledger.next_id

    @property
    def depth(self) -> int:
        """Samples stored and not yet acknowledged."""
        return len(self._memory) + self._on_disk + len(self._pending)

    def add(
        self,
        device: str,
        ts: int,
        values: Mapping[str, Value],
        *,
        mono: float | None = None,
        boot: str | None = None,
        now: float | None = None,
    ) -> Sample | None:
        """Keep one sample under the next id; ``mono``/``boot`` mark an untrusted wall clock.
        None when no id can be handed out safely yet: the sample waits for one (in order)."""
        added = time.monotonic() if now is None else now
        self._pending.append(_Pending(device, ts, dict(values), mono, boot, added))
        sample = self._number_pending()
        if len(self._memory) + len(self._pending) > MEMORY_LIMIT:
            self._drop_from_memory()
        return sample if not self._pending else None

    def _number_pending(self) -> Sample | None:
        """Give the waiting samples their ids, oldest first; the last one numbered."""
        sample = None
        while self._pending:
            sample_id = self._ledger.take_reserved()
            if sample_id is None:
                sample_id = self._ledger.take_from_clock(self._trusted_ms())
            if sample_id is None:
                break
            p = self._pending.popleft()
            sample = Sample(sample_id, p.device, p.ts, p.values, mono=p.mono, boot=p.boot)
            if p.mono is None:
                self.newest_ts = max(self.newest_ts, p.ts)
            self._memory[sample_id] = (sample, p.added)
            if self._journal:
                self._journal.added(sample)
        self._say_ids()
        while self._ledger.jumps:
            first, to = self._ledger.jumps.pop(0)
            # parseable, for whoever accounts for every id: these were never handed out
            log.warning("buffer %s: ids skip from %d to %d (none between)", self.path, first, to)
        return sample

    def _say_ids(self) -> None:
        """Say once, and again when it changes, how ids are handed out while the disk refuses
        to record a reservation."""
        state = "waiting" if self._pending else "clock" if self._ledger.from_clock else ""
        if state == self._id_state:
            return
        self._id_state = state
        refusal = self._ledger.refusal or "ids cannot be reserved on disk"
        if state == "waiting":
            log.error(
                "buffer %s: %s, and the clock cannot be trusted yet: samples wait for an id "
                "(%d now)",
                self.path,
                refusal,
                len(self._pending),
            )
        elif state == "clock":
            log.error(
                "buffer %s: %s: ids come from the clock until a reservation can be recorded "
                "(they cannot repeat; they are far larger than the counted ones)",
                self.path,
                refusal,
            )
        else:
            log.info("buffer %s: ids are reserved on disk again", self.path)

    def _drop_from_memory(self) -> None:
        """Memory is full and the disk cannot take samples: the oldest go."""
        if self._memory:
            sample_id, _ = self._memory.popitem(last=False)
            self._in_flight.discard(sample_id)
            if self._journal:
                self._journal.removed((sample_id,))
        else:
            self._pending.popleft()
        self.dropped += 1
        self._say_dropped(1, "memory is full and the disk cannot take samples")

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
        """Up to ``limit`` of the oldest samples on disk not handed out yet; damaged rows are
        quarantined on the way."""
        if self._db is None or not self._on_disk:
            return []
        batch: list[Sample] = []
        while len(batch) < limit:
            rows = self._query(
                f"SELECT {COLUMNS} FROM samples WHERE id > ? ORDER BY id LIMIT ?",
                (self._disk_cursor, limit - len(batch)),
            )
            if not rows:
                break
            self._disk_cursor = rows[-1][0]
            damaged: list[tuple[StoredRow, str]] = []
            for row in map(stored, rows):
                if row.id in self._in_flight or row.id in self._bad:
                    continue  # being sent (live, or from here), or known damaged
                try:
                    if not intact(row, self._checked_from):
                        raise ValueError("checksum mismatch")
                    sample = to_sample(row)
                except (ValueError, UnicodeDecodeError) as exc:
                    damaged.append((row, str(exc)))
                    continue
                if row.id not in self._deletes:  # acknowledged, its delete still to come
                    batch.append(sample)
            if damaged:
                self._mend(damaged)
                break  # the cursor starts again, on the rebuilt database
        self._in_flight.update(s.id for s in batch)
        return batch

    def acknowledge(self, samples: Sequence[Sample]) -> None:
        """The broker has them: they leave the buffer (from disk at the next flush)."""
        gone = []
        for sample in samples:
            self._in_flight.discard(sample.id)
            if self._memory.pop(sample.id, None) is None:
                self._deletes.add(sample.id)
                if self._unconfirmed.pop(sample.id, None) is not None:
                    gone.append(sample.id)
            else:
                gone.append(sample.id)
        if self._journal and gone:
            self._journal.removed(gone)

    def discard(self, samples: Sequence[Sample]) -> None:
        """These can never be delivered (larger than the broker takes): they leave the buffer
        and are counted as dropped. The caller names them."""
        self.acknowledge(samples)
        self.dropped += len(samples)
        # now, not at the next flush: a crash journal already says they are gone, and a kill
        # before that flush would leave them uncounted
        self.flush(force=True)

    def release(self) -> None:
        """Sending failed: everything handed out and unacknowledged is to be sent again."""
        self._in_flight.clear()
        self._disk_cursor = 0

    def settle(self, samples: Sequence[Sample]) -> set[int]:
        """These are about to be sent in this form (re-stamped, or marked unsynced for good):
        store it, so that a sample sent again is sent the same. Returns the ids whose form could
        not be stored (the disk refused): they must not be sent now, and are handed out again
        later."""
        on_disk: list[Sample] = []
        for sample in samples:
            if sample.id in self._memory:
                self._memory[sample.id] = (sample, self._memory[sample.id][1])
                if self._journal:
                    self._journal.added(sample)
            else:
                on_disk.append(sample)
                if sample.id in self._unconfirmed and self._journal:
                    self._unconfirmed[sample.id] = sample
                    self._journal.added(sample)
        if not on_disk:
            return set()
        try:
            with self._conn() as db:
                _write_forms(db, on_disk)
        except (*DB_ERRORS, StorageError) as exc:
            if not isinstance(exc, StorageError):
                self._storage_trouble(exc)
            refused = {s.id for s in on_disk}
            self._in_flight -= refused
            self._disk_cursor = min(self._disk_cursor, min(refused) - 1)
            return refused
        return set()

    # --- the disk

    def flush(self, now: float | None = None, *, force: bool = False) -> None:
        """Commit samples unacknowledged for ``commit_age`` (all: ``force``) and the deletes."""
        self._number_pending()
        self.complaints.tick()
        if self._journal and self._journal.failed and self.complaints.due("journal", LOG_EVERY):
            self._start_journal()
        if self._db is None and not self._reopen():
            return
        self._restore_pending()
        now = time.monotonic() if now is None else now
        due = [
            sample
            for sample, added in self._memory.values()
            if force or now - added >= self.commit_age
        ]
        idle = not (due or self._deletes)
        if idle and self._counts_stored == (self.dropped, self.lost):
            return
        try:
            self._commit(due)
        except DB_ERRORS as exc:
            self._storage_trouble(exc)
            return
        for sample in due:
            del self._memory[sample.id]
        confirmed, self._unconfirmed = self._unconfirmed, {s.id: s for s in due}
        if self._journal:
            self._journal.removed(confirmed)
            self._journal.maybe_compact(self._journaled(), self._ledger.next_id)

    def _journaled(self) -> Iterator[Sample]:
        """What the journal must hold: the samples in memory, and those not yet confirmed."""
        yield from (s for s, _ in self._memory.values())
        yield from self._unconfirmed.values()

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
                        "INSERT OR IGNORE INTO samples (id, device, ts, vals, mono, boot, crc) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (_row(s) for s in due),
                    ).rowcount
                    self._adjust_rows(db, max(inserted, 0) - max(deleted, 0))
                    self._write_counts(db)
                    self._write_reservation(db)
                break
            except sqlite3.OperationalError as exc:
                if not _is_full(exc):
                    raise
                self._checkpoint()  # give the WAL's space back before deleting
                if not self._drop_oldest(room_for=len(due)):
                    raise
                self._apply_bound()
        self._on_disk += max(inserted, 0) - max(deleted, 0)
        self._deletes = set()
        self._bound_wal()
        self._apply_bound()

    def _write_counts(self, db: sqlite3.Connection, dropped: int | None = None) -> None:
        """The dropped and lost counts, in the transaction under way."""
        counts = (self.dropped if dropped is None else dropped, self.lost)
        if counts != self._counts_stored:
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                zip(("dropped", "lost"), counts, strict=True),
            )
            self._counts_stored = counts

    def _store_counts(self) -> None:
        if self._db is None or self._counts_stored == (self.dropped, self.lost):
            return
        try:
            with self._conn() as db:
                self._write_counts(db)
        except DB_ERRORS as exc:
            self._storage_trouble(exc)

    def _load_counts(self) -> None:
        """The counts kept in the database, if they are ahead of what is known."""
        meta = dict(self._query("SELECT key, value FROM meta", ())) if self._db else {}
        stored = (int(meta.get("dropped", 0)), int(meta.get("lost", 0)))
        self.dropped = max(self.dropped, stored[0])
        self.lost = max(self.lost, stored[1])
        self._counts_stored = stored

    def _meta_value(self, key: str) -> int:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return int(rows[0][0]) if rows else 0

    def _note_reservation(self) -> None:
        """A copy of the reservation in the database, at a start and then with the commits
        (never a write of its own): should ``buffer.ids`` ever be lost, ids jump beyond it
        rather than beyond what the database happens to hold."""
        if self._db is None:
            return
        try:
            with self._conn() as db:
                self._write_reservation(db)
        except DB_ERRORS as exc:
            self._storage_trouble(exc)

    def _write_reservation(self, db: sqlite3.Connection) -> None:
        reserved = self._ledger.record.reserved_until
        if reserved != self._noted_reservation:
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('reserved_until', ?)",
                (reserved,),
            )
            self._noted_reservation = reserved

    def _adjust_rows(self, db: sqlite3.Connection, delta: int) -> None:
        """How many samples the database holds, kept in it in the same transaction: a rebuild
        knows how many it should find, whatever damage left no trace."""
        if delta:
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'rows'", (delta,))

    @staticmethod
    def _set_rows(db: sqlite3.Connection, rows: int) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('rows', ?)", (rows,))

    def _start_journal(self) -> None:
        if self._journal:
            self._journal.start(
                self._journaled(), self._ledger.next_id, self._ledger.run, self._journal_base
            )

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
        ours = self.max_size * 6 // 10
        allowed = min(ours, have - reserve)
        self._full_because = (
            f"it reached its bound ([buffer] max_size = {self.max_size} bytes, 60 % of it for "
            "samples)"
            if ours <= have - reserve
            else f"the file system holding it is full ({free // 1000} kB free)"
        )
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
            # in the drop's own transaction: the count survives whatever comes next
            self._write_counts(db, dropped=self.dropped + count)
            self._adjust_rows(db, -count)
        self.dropped += count
        self._on_disk = rows - count
        self._say_dropped(count, self._full_because or "it reached its bound")
        return True

    def _say_dropped(self, count: int, why: str) -> None:
        self.complaints.say(
            "dropped",
            f"buffer {self.path}: {why}; dropped the oldest {count} sample(s), "
            f"{self.dropped} in all",
        )

    def _storage_trouble(self, exc: Exception) -> None:
        """The disk refused: damaged file, full or read-only file system. Keep going."""
        # the counts written in the transaction that failed are not stored: the next writes them
        self._counts_stored = (-1, -1)
        if _is_corrupt(exc):
            self._rebuild(_damage_reason(exc))
            return
        self.complaints.say(
            "write",
            f"buffer {self.path}: cannot write ({exc}); keeping {len(self._memory)} sample(s) "
            "in memory and trying again",
        )
        try:
            self._conn().rollback()
        except sqlite3.Error:
            self._close_db()

    # --- opening, damage

    def _open_db(self) -> None:
        try:
            self._create_private(self.path)
            db = self._db = sqlite3.connect(self.path, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on the card when it returns, and only then do its samples leave
            # memory and the journal (NORMAL would leave the last seconds to the page cache,
            # lost to a power cut or to a card that fails into read-only).
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA journal_size_limit={self.max_size // 5}")
            migrate(db, self.path)
            self._checked_from = checksummed_from(db)
            self._apply_bound()
            self._on_disk = self._count_rows()
            if self._db is not db:  # it was found damaged and rebuilt on the way: done
                return
            self._load_counts()
            self._check_rows(db)
        except DB_ERRORS as exc:
            self._close_db()
            if _is_corrupt(exc):
                self._rebuild(_damage_reason(exc))
            else:
                self.complaints.say(
                    "open", f"buffer {self.path}: cannot open ({exc}); samples wait in memory"
                )
        except NewerFormat as exc:  # open() refused it: here the file was replaced since
            self._close_db()
            self.complaints.say("open", f"{exc}; samples wait in memory")
        except OSError as exc:
            self._close_db()
            self.complaints.say(
                "open",
                f"buffer {self.path}: cannot open ({exc.strerror or exc}); samples wait in memory",
            )

    def _create_private(self, path: Path) -> None:
        """The files readings are kept in are the agent's alone (0600), whatever the umask;
        SQLite gives its -wal and -shm files the database's mode."""
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        for other in (path, *wal_and_shm(path), self._ledger.path):
            with contextlib.suppress(OSError):
                if other.stat().st_mode & 0o077:
                    other.chmod(0o600)

    def _reopen(self) -> bool:
        """Try the disk again (it may have been freed or remounted)."""
        if not self.complaints.due("reopen", LOG_EVERY / 4):
            return False
        self._make_dir()
        if self._unrestored is None:  # the log may be read only now, before SQLite cuts it
            self._unrestored = self._wal_rows_lost_by_sqlite()
        self._open_db()
        if self._db is not None:
            self._load_counts()
            self._restore_pending()
        return self._db is not None

    def _highest_stored(self) -> int:
        rows = self._query("SELECT coalesce(max(id), 0) FROM samples", ())
        return int(rows[0][0]) if rows else 0

    def _wal_rows_lost_by_sqlite(self) -> Found | None:
        """Before SQLite opens the database: the rows of committed transactions it will drop
        because its write-ahead log is damaged (the log is copied aside first)."""
        wal_path = Path(f"{self.path}-wal")
        scan = salvage.scan_wal(wal_path)
        if not scan.damage:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        with contextlib.suppress(OSError):
            shutil.copyfile(wal_path, f"{self.path}.damaged-{stamp}-wal")
        found = salvage.rows_in_frames(wal_path, scan)
        log.error(
            "buffer %s: %s: SQLite would drop the transactions after it; reading them back "
            "(the log is kept as %s.damaged-%s-wal)",
            self.path,
            scan.damage,
            self.path.name,
            stamp,
        )
        return found

    def _restore_pending(self) -> None:
        """Put back the rows of a damaged WAL, once the database can take them: until then
        they are kept here (SQLite's next commit would overwrite the frames they came from)."""
        if self._unrestored is not None and self._restore(self._unrestored, "the write-ahead log"):
            self._unrestored = None

    def _restore(self, found: Found, where: str) -> bool:
        """Put the intact rows ``found`` back; count and report the ids of which no intact copy
        survives. False when the database cannot take them now."""
        if self._db is None:
            return False
        try:
            with self._conn() as db:
                _insert(db, found.rows.values())
            present = ids_present(self._conn(), found.damaged)
            self._on_disk = self._count_rows()
            with self._conn() as db:
                self._set_rows(db, self._on_disk)
        except DB_ERRORS as exc:
            self._storage_trouble(exc)
            return False
        self._checkpoint()  # the damaged log folded in and emptied: said once, not at each start
        lost = sorted(found.damaged - present)
        # the count the last transaction wrote says what left no trace at all
        unreadable = max(found.unreadable, found.meta.get("rows", 0) - self._on_disk - len(lost))
        self._report_lost(lost, unreadable, where, len(found.rows))
        return True

    def _report_lost(self, ids: list[int], unreadable: int, where: str, restored: int) -> None:
        count = len(ids) + unreadable
        self.lost += count
        shown = ", ".join(map(str, ids[:SHOWN_IDS])) + (" …" if len(ids) > SHOWN_IDS else "")
        detail = f" (ids {shown})" if ids else ""
        if unreadable:
            detail += f"{',' if ids else ''} {unreadable} record(s) too damaged to tell their id"
        level = logging.ERROR if count else logging.WARNING
        log.log(
            level,
            "buffer %s: %s was damaged: %d intact sample(s) read back, %d committed sample(s) "
            "lost to the damage%s; %d lost to damage in all",
            self.path,
            where,
            restored,
            count,
            detail,
            self.lost,
        )
        self._store_counts()

    def _rebuild(self, reason: str) -> None:
        """The database is damaged: read every intact row out of it (and its WAL), move the
        damaged files aside, and start again from what was read."""
        if self._rebuilding:  # the rebuilt file failed too: the disk itself is failing
            self._close_db()
            self.complaints.say("open", f"buffer {self.path}: {reason}; samples wait in memory")
            return
        expected = self._on_disk  # the rows the database held, as far as the buffer knows
        if self._db is not None:
            with contextlib.suppress(*DB_ERRORS):
                expected = max(expected, self._meta_value("rows"))
        self._close_db()
        stamp = time.strftime("%Y%m%dT%H%M%S")
        fresh = self.path.with_name(f"{self.path.name}.rebuilt")
        found = Found()
        try:
            for old in (fresh, *wal_and_shm(fresh)):
                old.unlink(missing_ok=True)
            with contextlib.closing(sqlite3.connect(fresh)) as db:
                migrate(db, fresh)
                with db:
                    _insert(db, salvage.scan(self.path, wal_and_shm(self.path)[0], found))
                    _keep_for_inspection(db, found.quarantined)
                restored = int(db.execute("SELECT count(*) FROM samples").fetchone()[0])
                present = ids_present(db, found.damaged)
            for old in (self.path, *wal_and_shm(self.path)):
                if old.exists():  # buffer.sqlite-wal → buffer.sqlite.corrupt-STAMP-wal
                    suffix = old.name.removeprefix(self.path.name)
                    old.rename(old.with_name(f"{self.path.name}.corrupt-{stamp}{suffix}"))
            fresh.rename(self.path)
        except (OSError, sqlite3.Error) as exc:
            self.complaints.say(
                "open",
                f"buffer {self.path} is damaged ({reason}) and cannot be rebuilt now "
                f"({getattr(exc, 'strerror', None) or exc}); samples wait in memory",
            )
            return
        self.dropped = max(self.dropped, found.meta.get("dropped", 0))
        self.lost = max(self.lost, found.meta.get("lost", 0))
        log.error(
            "buffer %s is damaged (%s): rebuilt from the intact samples in it; the damaged "
            "files are kept as %s.corrupt-%s",
            self.path,
            reason,
            self.path.name,
            stamp,
        )
        # The cursor and the samples in flight stay: what was handed out is not handed out
        # again, and the deletes of acknowledged ones are still to run.
        self._rebuilding = True
        try:
            self._open_db()
        finally:
            self._rebuilding = False
        expected = max(expected, found.meta.get("rows", 0))
        gone = found.damaged - present
        # rows that left no trace at all (a cell pointer damaged) still show in the count
        unreadable = max(found.unreadable, expected - restored - len(gone))
        counted, self._bad = self._bad, set()  # skipped earlier: counted then
        self._report_lost(sorted(gone - counted), unreadable, "its database", restored)

    def _mend(self, damaged: list[tuple[StoredRow, str]]) -> None:
        """A row failed its checksum: the database is rebuilt from its intact rows (the damaged
        ones go to ``quarantine``; a damaged row may even carry another row's id, so it is never
        deleted by id). A database that cannot be rebuilt now (read-only, full) is read on,
        skipping the damaged rows, which are counted as lost."""
        first, why = damaged[0]
        self._rebuild(f"sample id {first.id} is damaged ({why})")
        if self._db is None:
            fresh = {r.id for r, _ in damaged} - self._bad
            self._bad |= fresh
            self._report_lost(sorted(fresh), 0, "a sample", 0)
            self._open_db()

    def _check_rows(self, db: sqlite3.Connection) -> None:
        """The database must hold as many samples as its own count says (kept with every
        change): fewer is damage that left no trace, counted and said."""
        row = db.execute("SELECT value FROM meta WHERE key = 'rows'").fetchone()
        if row is not None and self._on_disk < int(row[0]) and not self._rebuilding:
            missing = int(row[0]) - self._on_disk
            self.lost += missing
            log.error(
                "buffer %s: %d committed sample(s) are missing from it (it counted %d, holds "
                "%d): lost to damage; %d lost to damage in all",
                self.path,
                missing,
                int(row[0]),
                self._on_disk,
                self.lost,
            )
        if row is None or int(row[0]) != self._on_disk:
            with contextlib.suppress(*DB_ERRORS), db:  # a read-only disk: said elsewhere
                self._set_rows(db, self._on_disk)

    def _check_count(self, expected: int, counted: int) -> None:
        """After a clean stop the disk must hold what that stop left (less ``counted``, lost to
        damage found already): fewer is damage."""
        missing = expected - self._on_disk - counted
        if missing > 0 and self._db is not None:
            self.lost += missing
            log.error(
                "buffer %s: %d committed sample(s) are missing (the last clean stop left %d on "
                "disk, %d are there): lost to damage or removed by hand; %d lost to damage in "
                "all",
                self.path,
                missing,
                expected,
                self._on_disk,
                self.lost,
            )
            self._store_counts()

    def _take_back(self, samples: Mapping[int, Sample]) -> None:
        """Samples that were in memory only when the last run ended (from the journal)."""
        stored: set[int] = set()
        if self._db is not None:
            with contextlib.suppress(sqlite3.DatabaseError):
                stored = ids_present(self._conn(), samples.keys())
        back = [s for i, s in sorted(samples.items()) if i not in stored]
        try:  # old samples: the backlog's, sent as such ("backlog": true), not as live ones
            with self._conn() as db:
                inserted = db.executemany(
                    "INSERT OR IGNORE INTO samples (id, device, ts, vals, mono, boot, crc) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    map(_row, back),
                ).rowcount
                self._adjust_rows(db, max(inserted, 0))
            self._on_disk += max(inserted, 0)
        except (*DB_ERRORS, StorageError):  # no disk now: they wait in memory
            now = time.monotonic()
            for sample in back:
                self._memory[sample.id] = (sample, now)
        if back:
            log.info(
                "buffer %s: %d sample(s) that were in memory when the last run ended came back "
                "from its journal",
                self.path,
                len(back),
            )

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    # --- inspection

    def stats(self) -> BufferStats:
        oldest = next(iter(self._memory.values()))[0].ts if self._memory else None
        if self._on_disk and self._db is not None:
            row = self._query("SELECT min(ts) FROM samples", ())
            oldest = row[0][0] if row and row[0][0] is not None else oldest
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += Path(f"{self.path}{suffix}").stat().st_size
        return BufferStats(
            self.depth,
            len(self._memory),
            self._on_disk,
            oldest,
            size,
            self.dropped,
            self._ledger.next_id,
            self.lost,
            len(self._pending),
        )

    def purge(self) -> int:
        """Drop every waiting sample; returns how many. Ids go on from where they were."""
        count = self.depth
        if self._journal:
            self._journal.removed([*self._memory, *self._unconfirmed])
        self._memory.clear()
        self._unconfirmed.clear()
        self._pending.clear()
        self._in_flight.clear()
        self._deletes = set()
        if self._db is not None:
            try:
                with self._conn() as db:
                    db.execute("DELETE FROM samples")
                    self._set_rows(db, 0)
            except DB_ERRORS as exc:
                raise StorageError(f"buffer {self.path}: cannot purge: {exc}") from None
        self._on_disk = 0
        return count

    def _count_rows(self) -> int:
        rows = self._query("SELECT count(*) FROM samples", ())
        return int(rows[0][0]) if rows else 0

    def _query(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        """The rows of a read; none while the database cannot be used (damage is mended)."""
        for attempt in range(2):  # once more on the database rebuilt from a damaged one
            if self._db is None:
                return []
            try:
                return self._conn().execute(sql, args).fetchall()
            except DB_ERRORS as exc:
                self._storage_trouble(exc)
                if not _is_corrupt(exc) or attempt:
                    return []
        return []

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError(f"buffer {self.path} is not open")
        return self._db


def open_buffer(
    data_dir: Path,
    max_size: int,
    flush_interval: float,
    trusted_ms: Callable[[], int | None] | None = None,
    boot: str = "",
) -> Buffer:
    """The agent's buffer in ``data_dir``, with its journal in the runtime directory."""
    return Buffer(
        data_dir / BUFFER_FILE,
        max_size,
        flush_interval,
        journal_dir=runtime_dir(),
        trusted_ms=trusted_ms,
        boot=boot,
    )


def _stored_values(row: StoredRow) -> tuple[object, ...]:
    return (row.id, row.device, row.ts, row.vals, row.mono, row.boot, row.crc)


def _row(sample: Sample) -> tuple[object, ...]:
    """A sample as the columns it is stored in, with its checksum."""
    vals = sample.values_json
    device = sample.device.encode()
    boot = sample.boot.encode() if sample.boot is not None else None
    crc = row_crc(StoredRow(sample.id, device, sample.ts, vals, sample.mono, boot, None))
    return (sample.id, sample.device, sample.ts, vals.decode(), sample.mono, sample.boot, crc)


def _is_full(exc: Exception) -> bool:
    return "full" in str(exc).lower()


#: How SQLite (and its Python module) say that a file is damaged.
_DAMAGE = ("malformed", "not a database", "corrupt", "could not decode", "unsupported file format")


def _damage_reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "its schema is damaged"
    return str(exc)


def _is_corrupt(exc: Exception) -> bool:
    if isinstance(exc, UnicodeDecodeError):  # SQLite's own message quoted damaged bytes
        return True
    text = str(exc).lower()
    return any(words in text for words in _DAMAGE)


def _insert(db: sqlite3.Connection, rows: Iterable[StoredRow]) -> None:
    """Rows read back from damage: a later copy of a row replaces an earlier one."""
    db.executemany(
        "INSERT OR REPLACE INTO samples (id, device, ts, vals, mono, boot, crc) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        map(_stored_values, rows),
    )


def _write_forms(db: sqlite3.Connection, samples: Iterable[Sample]) -> None:
    """The forms samples are sent in, over what is stored."""
    db.executemany(
        "UPDATE samples SET ts = ?, mono = ?, boot = ?, crc = ? WHERE id = ?",
        ((s.ts, s.mono, s.boot, _row(s)[-1], s.id) for s in samples),
    )


def _keep_for_inspection(db: sqlite3.Connection, rows: Iterable[StoredRow]) -> None:
    now = int(time.time() * 1000)
    db.executemany(
        "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, 'checksum mismatch', ?)",
        ((*_stored_values(r), now) for r in rows),
    )
