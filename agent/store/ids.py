"""Sample ids that never repeat, whatever the disk does.

An id is handed out only against a reservation known to be on disk: ``buffer.ids`` records
``reserved_until``, and every id below it may have been used. The file holds two slots of 512
bytes, each a checksummed JSON record with a sequence number, overwritten in place in turn
(``pwrite`` + ``fsync``): a torn or damaged write spoils one slot and the other still holds the
previous record, and overwriting blocks already allocated works on a full file system.

The reservation is extended ahead of need (at least ``MIN_BLOCK`` ids, or ``AHEAD_SECONDS`` of
the current rate), so a disk that refuses writes for a while costs nothing. A disk that refuses
for longer (remounted read-only, the file made unwritable) leaves no durable record to hand out
ids against; then ids come from the trusted wall clock instead: ``ms * 1000`` plus a sequence
within the millisecond for the first one of a run, and the next ones following on (never more
than 1000 a millisecond, so an id taken at time t is at most ``t * 1000 + 999``). Those cannot
repeat without durable state: at most one agent runs per data dir, and a later run starts above
every id an earlier one can have taken, as long as the wall clock does not repeat itself across
boots: so the buffer asks for ids from the clock only while the kernel says the clock is
synchronised (NTP), never on a clock merely restored at boot. They are far above any counted
id. Without a trusted
clock either, samples wait for an id (in memory, counted in the buffer's depth).

At a clean stop the exact next id is recorded: a restart continues without a gap. After an
unclean stop the ids resume at the reservation (a gap: the ids in it were reserved, and the
samples of the last moment before the crash may be among them), unless the crash journal in the
runtime directory tells exactly which were used (see ``agent.journal``).

The file's format is 1 (two slots, since 0.1.0); the one-record file of earlier versions (0) is
still read. A record of a later format names it (``"format": 2``; records of format 1 name none,
so that 0.1.0, which takes an unknown field for damage, reads this version's file): the buffer
refuses such a file rather than overwrite the only record of the ids a newer version handed out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The file's format (see the module docstring).
FORMAT = 1
SLOT = 512
#: Reserved at least this many ids at a time.
MIN_BLOCK = 10_000
#: Reserved ahead for this long at the current rate: a read-only disk goes unnoticed that long.
AHEAD_SECONDS = 6 * 3600.0
#: A block never grows more than this per reservation (the jump after a damaged slot relies on it).
GROWTH = 2
#: Ids from the clock: this many per millisecond.
PER_MS = 1000
#: JSON numbers beyond 2**53 lose precision in many consumers.
MAX_ID = 2**53 - 1
#: When no record of the reservation survives, ids skip this far beyond anything known.
BLIND_JUMP = 2**32
#: How often a refused reservation is tried again, in seconds.
RETRY_EVERY = 5.0


@dataclass(frozen=True)
class IdRecord:
    """One slot of ``buffer.ids``."""

    seq: int = 0
    reserved_until: int = 1  # every id below may have been handed out
    next_id: int | None = None  # the exact next id, recorded at a clean stop only
    block: int = MIN_BLOCK
    newest_ts: int = 0  # ms: the newest sample time ever stored (for the clock check)
    dropped: int = 0
    lost: int = 0
    stored: int = 0  # samples on disk, recorded at a clean stop: what the next start must find
    #: The run that last marked the file (a token): a crash journal speaks for the ids only if
    #: it is that run's.
    run: str = ""

    def encode(self) -> bytes:
        body = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        text = f'{body[:-1]},"crc":{zlib.crc32(body.encode())}}}'
        return text.encode().ljust(SLOT - 1) + b"\n"

    @classmethod
    def decode(cls, raw: bytes) -> IdRecord:
        """The record in one slot; ``ValueError`` when it is damaged."""
        record = cls(**_checked(raw))
        fields = (record.seq, record.reserved_until, record.block, record.newest_ts, record.stored)
        if not all(isinstance(v, int) and v >= 0 for v in fields):
            raise ValueError("not a record")
        if not isinstance(record.run, str):
            raise ValueError("not a record")
        return record


@dataclass(frozen=True)
class Loaded:
    """What ``IdLedger.load`` found, for the buffer to log."""

    clean: bool  # the last run recorded its exact next id
    reserved_until: int  # what the last run had reserved
    problems: tuple[str, ...]  # damage found, said once


class IdLedger:
    """Hands out ids against the reservation in ``path``; see the module docstring."""

    def __init__(self, path: Path, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._monotonic = monotonic
        self.record = IdRecord()
        self.next_id = 1
        #: Ids below this are backed by a reservation on disk.
        self._durable_until = 1
        self._block_started = (0.0, 1)  # (monotonic, next id) when the current block began
        self._retry_at = 0.0
        self.refusal = ""  # why the reservation cannot be recorded, while it cannot
        self.from_clock = False  # the last id came from the clock
        self._clock_used = False  # this run has taken an id from the clock
        #: The start's mark (both slots: "ids up to the reservation may be in use") is on disk;
        #: until it is, every reservation goes into both slots, so no older clean record can
        #: outvote it.
        self._marked = False
        #: This run, in the marks it writes and its crash journal.
        self.run = os.urandom(6).hex()
        #: (first id skipped, next id handed out) for each jump in this run, to be said.
        self.jumps: list[tuple[int, int]] = []

    # --- loading

    def peek(self) -> IdRecord:
        """The newest intact record, without loading it (the counts it keeps)."""
        records, _ = self._read()
        return max(records, key=lambda r: r.seq, default=IdRecord())

    def load(
        self,
        floor: int = 1,
        exact_next: int | None = None,
        expected: bool = False,
        known_reserved: int = 0,
    ) -> Loaded:
        """Read the reservation. ``floor`` is one past the highest id found stored;
        ``exact_next`` the first id the last run never handed out, when its crash journal
        says so (then no damage to the file costs a jump); ``expected``: a record must exist
        (a database lies beside it); ``known_reserved`` a reservation known from elsewhere
        (the database's copy), to jump beyond when the file cannot be trusted."""
        records, problems = self._read()
        if not records and not problems and expected:
            problems.append(f"{self.path.name} is missing beside the database")
        best = max(records, key=lambda r: r.seq, default=None)
        # A clean stop is written to both slots, and so is the mark a start makes before it
        # hands out an id: one damaged slot beside a clean record takes nothing away.
        clean = best is not None and best.next_id is not None
        if best is not None:
            reserved = best.reserved_until
            if problems and exact_next is None and not clean:
                # the newer slot may be the damaged one: it reserved one block more at most
                reserved = max(reserved, known_reserved) + best.block * GROWTH
            self.record = replace(best, reserved_until=reserved, next_id=None)
        if exact_next is not None:
            start = exact_next
        elif clean and best is not None and best.next_id is not None:
            start = best.next_id
        elif best is not None:
            start = self.record.reserved_until
        elif problems or floor > 1:
            # No record survives, yet samples were stored: nothing tells how far ids went.
            start = max(floor, known_reserved) + BLIND_JUMP
            self.record = replace(self.record, reserved_until=start)
            problems.append("no record of the ids handed out survives")
        else:
            start = 1
        self.next_id = max(floor, start)
        # Ids below an intact reservation may be used without writing first: a crash now makes
        # the next start resume above it.
        intact = best is not None and not problems and not clean
        self._durable_until = max(self.next_id, self.record.reserved_until if intact else 0)
        return Loaded(clean, self.record.reserved_until, tuple(problems))

    def _read(self) -> tuple[list[IdRecord], list[str]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            return [], [f"{self.path.name} cannot be read ({exc.strerror or exc})"]
        if raw[:1] == b"{" and len(raw) < SLOT and b'"crc"' not in raw:
            return _legacy(raw)
        records = []
        for start in range(0, 2 * SLOT, SLOT):
            with contextlib.suppress(ValueError, TypeError, UnicodeDecodeError, KeyError):
                records.append(IdRecord.decode(raw[start : start + SLOT]))
        problems = [] if len(records) == 2 else [f"{self.path.name} is damaged"]
        return records, problems

    # --- handing out

    def take(self, trusted_ms: int | None) -> int | None:
        """The next id, or None when none can be handed out safely yet (the disk refuses to
        record a reservation and the clock cannot be trusted)."""
        reserved = self.take_reserved()
        return reserved if reserved is not None else self.take_from_clock(trusted_ms)

    def take_reserved(self) -> int | None:
        """The next id from the reservation on disk (extended when due), or None when the disk
        refuses to record one: then ``take_from_clock``. (The clock is asked only then: asking
        the kernel whether it is synchronised is a system call.)"""
        if self.next_id >= self._durable_until or self._due_for_extension():
            self._extend()
        if self.next_id < self._durable_until:
            self.from_clock = False
            return self._hand_out(self.next_id)
        return None

    def take_from_clock(self, trusted_ms: int | None) -> int | None:
        """The next id from the clock, ``trusted_ms`` (None: it cannot be trusted), when no
        reservation is durable; None when none can be handed out safely yet."""
        if trusted_ms is None:
            return None
        floor = trusted_ms * PER_MS
        # The first id from the clock in a run is above every id an earlier run can have
        # taken from it; the next ones follow on, never faster than PER_MS a millisecond.
        candidate = max(self.next_id, self._durable_until, 0 if self._clock_used else floor)
        if candidate >= floor + PER_MS or candidate > MAX_ID:
            return None  # ahead of the clock: an id is free again within moments
        self.from_clock = self._clock_used = True
        return self._hand_out(candidate)

    def _hand_out(self, sample_id: int) -> int:
        if sample_id != self.next_id:
            self.jumps.append((self.next_id, sample_id))
        self.next_id = sample_id + 1
        return sample_id

    def _due_for_extension(self) -> bool:
        remaining = self._durable_until - self.next_id
        return 0 < remaining < self.record.block // 2

    def _extend(self) -> None:
        now = self._monotonic()
        if now < self._retry_at:
            return
        block = self._next_block(now)
        wanted = max(self.next_id, self._durable_until) + block
        record = replace(self.record, reserved_until=wanted, block=block, run=self.run)
        if self.save(record, both=not self._marked):
            self._marked = True
            self._durable_until = wanted
            self._block_started = (now, self.next_id)
        else:
            self._retry_at = now + RETRY_EVERY

    def _next_block(self, now: float) -> int:
        since, first = self._block_started
        rate = (self.next_id - first) / (now - since) if now > since and since else 0.0
        wanted = max(MIN_BLOCK, int(rate * AHEAD_SECONDS))
        return min(wanted, self.record.block * GROWTH)

    # --- recording

    def note(self, *, dropped: int, lost: int, newest_ts: int) -> None:
        """Counts to keep with the next record written (not written now)."""
        self.record = replace(self.record, dropped=dropped, lost=lost, newest_ts=newest_ts)

    def close(self, stored: int) -> bool:
        """Record the exact next id (the next start continues without a gap) and how many
        samples are on disk (the next start checks it finds them all)."""
        return self.save(replace(self.record, next_id=self.next_id, stored=stored), both=True)

    def mark_unclean(self) -> bool:
        """Record that ids up to the reservation may be in use (before using any of them)."""
        if self.save(replace(self.record, next_id=None, stored=0, run=self.run), both=True):
            self._marked = True
            self._durable_until = max(self.next_id, self.record.reserved_until)
            return True
        return False

    def save(self, record: IdRecord, both: bool = False) -> bool:
        """Write ``record`` into the older slot (``both``: into both, so that a damaged slot
        leaves the same record in the other: a clean stop, and the mark that undoes it, are
        never lost to one damaged slot); False (``refusal`` says why) when the disk refuses."""
        records = [replace(record, seq=self.record.seq + n) for n in ((1, 2) if both else (1,))]
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            return self._refused(exc)
        try:
            if os.fstat(fd).st_size < 2 * SLOT:  # new, or the old one-record format
                os.pwrite(fd, self.record.encode() * 2, 0)
            for written in records:
                os.pwrite(fd, written.encode(), (written.seq % 2) * SLOT)
            os.fsync(fd)
        except OSError as exc:
            return self._refused(exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.record = records[-1]
        self.refusal = ""
        return True

    def _refused(self, exc: OSError) -> bool:
        self.refusal = f"cannot record ids in {self.path}: {exc.strerror or exc}"
        return False


def _checked(raw: bytes) -> dict[str, Any]:
    """The fields of the record in one slot, its checksum checked; ``ValueError`` (or
    ``KeyError``, ``UnicodeDecodeError``) when it is damaged."""
    data = json.loads(raw.decode("ascii"))
    if not isinstance(data, dict):
        raise ValueError("not a record")
    crc = data.pop("crc")
    body = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if crc != zlib.crc32(body.encode()):
        raise ValueError("checksum mismatch")
    return data


def format_of(path: Path) -> int:
    """The newest format an intact slot of the file at ``path`` names (a damaged slot's says
    nothing); 0 without an intact record."""
    try:
        raw = path.read_bytes()
    except OSError:
        return 0
    found = 0
    for start in range(0, 2 * SLOT, SLOT):
        with contextlib.suppress(ValueError, KeyError, UnicodeDecodeError):
            number = _checked(raw[start : start + SLOT]).get("format", 1)
            found = max(found, number if isinstance(number, int) else 0)
    return found


def _legacy(raw: bytes) -> tuple[list[IdRecord], list[str]]:
    """The one-record file of earlier versions: ``{"reserved_until": …, …}``, no checksum."""
    try:
        data = json.loads(raw)
        record = IdRecord(
            reserved_until=int(data["reserved_until"]),
            newest_ts=int(data.get("newest_ts", 0)),
            dropped=int(data.get("dropped", 0)),
        )
    except (ValueError, KeyError, TypeError):
        return [], ["buffer.ids is damaged"]
    # It never said whether the stop was clean: resume at the reservation (a gap at worst).
    return [record, record], []
