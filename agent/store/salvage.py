"""Samples read straight from SQLite's file format: what SQLite itself would lose to damage.

SQLite stops at damage: a write-ahead log whose frame fails its checksum is ignored from that
frame on (every committed transaction after it is dropped without a word), and a damaged page
makes queries fail with "database disk image is malformed". The buffer's rows carry a checksum of
their own (``crc``), so every intact row can be told from a damaged one wherever it is found;
this module finds them, reading pages the way sqlite.org/fileformat2.html describes (table
b-tree leaf cells, records, the freelist, WAL frames and their checksums), as SQLite's own
``.recover`` does. It never writes.

``scan_wal`` reads the WAL alone (cheap: it is bounded): the frames SQLite will apply, and the
ones it will drop; ``rows_in_frames`` reads the rows of the dropped ones. ``scan`` reads the
database and its WAL as SQLite would see them (the newest version of each page), for rebuilding a
damaged database. ``user_version`` reads the format the buffer recorded, before SQLite writes a
byte.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..model import Sample

WAL_HEADER = 32
FRAME_HEADER = 24
_WAL_MAGIC = (0x377F0682, 0x377F0683)  # checksums little- or big-endian
_TABLE_LEAF = 0x0D
_OTHER_BTREE = (0x02, 0x05, 0x0A)  # index interior, table interior, index leaf
DEFAULT_PAGE = 4096
#: Damaged rows kept whole for inspection at most per scan (the rest are counted).
QUARANTINE_LIMIT = 10_000


@dataclass(frozen=True)
class StoredRow:
    """One ``samples`` row as stored: text columns as bytes, ``crc`` None in rows written
    before rows had checksums."""

    id: int
    device: bytes
    ts: int
    vals: bytes
    mono: float | None
    boot: bytes | None
    crc: int | None


@dataclass
class Found:
    """What a scan met besides intact rows: the ids of damaged rows, damaged cells of no id,
    and the ``meta`` counts. ``rows`` holds the intact rows where a scan collects them."""

    rows: dict[int, StoredRow] = field(default_factory=dict)
    damaged: set[int] = field(default_factory=set)
    unreadable: int = 0  # cells too damaged to tell their id
    meta: dict[str, int] = field(default_factory=dict)
    #: Damaged rows that still read as rows (their checksum fails), for a person to look at.
    quarantined: list[StoredRow] = field(default_factory=list)

    def damage(self, row: StoredRow) -> None:
        self.damaged.add(row.id)
        if len(self.quarantined) < QUARANTINE_LIMIT:
            self.quarantined.append(row)


@dataclass
class WalScan:
    """The WAL as SQLite will read it: for each page the offset of its newest ``applied``
    version, and the offsets of the frames it will drop."""

    page_size: int = 0
    applied: dict[int, int] = field(default_factory=dict)  # page number: offset of the page
    dropped: list[tuple[int, int]] = field(default_factory=list)  # (page number, offset)
    #: Why frames that held committed transactions are dropped; "" when none are.
    damage: str = ""


def row_crc(row: StoredRow) -> int:
    """The checksum a row is stored with (zlib's CRC-32 of every column)."""
    import zlib

    head = f"{row.id}|{row.ts}|{row.mono!r}|".encode()
    tail = b"\x00".join((row.device, row.vals, row.boot if row.boot is not None else b"\xff"))
    return zlib.crc32(head + tail)


def with_checksum(row: StoredRow) -> StoredRow:
    """A row of an earlier version, checked from now on."""
    return StoredRow(row.id, row.device, row.ts, row.vals, row.mono, row.boot, row_crc(row))


def intact(row: StoredRow, checked_from: int = 0) -> bool:
    """The row is as it was written: its checksum matches (rows of earlier versions, below
    ``checked_from``, have none: only their shape can be checked)."""
    if not (isinstance(row.device, bytes) and isinstance(row.ts, int)):
        return False
    if not isinstance(row.vals, bytes):
        return False
    if row.crc is None:
        return row.id < checked_from
    return row.crc == row_crc(row)


def to_sample(row: StoredRow) -> Sample:
    """The sample a row holds; ``ValueError`` when its text is damaged (not UTF-8, not JSON)."""
    import json

    if not isinstance(row.vals, bytes) or not isinstance(row.device, bytes):
        raise ValueError("a column is missing")
    values = json.loads(row.vals.decode("utf-8"))
    if not isinstance(values, dict):
        raise ValueError("values are not an object")
    boot = row.boot.decode("utf-8") if row.boot is not None else None
    return Sample(row.id, row.device.decode("utf-8"), row.ts, values, mono=row.mono, boot=boot)


# --- the WAL


def scan_wal(path: Path) -> WalScan:
    """Split the WAL at ``path`` into the frames SQLite applies and those it drops."""
    try:
        with path.open("rb") as file:
            return _scan_wal(file)
    except OSError:
        return WalScan()


def _scan_wal(file: BinaryIO) -> WalScan:
    head = file.read(WAL_HEADER)
    if len(head) < WAL_HEADER:
        return WalScan()
    magic, _, page_size, _, salt1, salt2, ck1, ck2 = struct.unpack(">8I", head)
    page_size = page_size if _valid_page_size(page_size) else DEFAULT_PAGE
    big_endian = magic == _WAL_MAGIC[1]
    checksum = _checksum(head[:24], 0, 0, big_endian)
    header_ok = magic in _WAL_MAGIC and checksum == (ck1, ck2)
    scan = WalScan(page_size)
    pending: dict[int, int] = {}  # pages of the transaction being read
    broken = not header_ok
    committed_after_break = False
    offset, index = WAL_HEADER, 0
    while len(frame := file.read(FRAME_HEADER + page_size)) == FRAME_HEADER + page_size:
        pgno, commit, f_salt1, f_salt2, fk1, fk2 = struct.unpack(">6I", frame[:FRAME_HEADER])
        if index == 0 and not header_ok:  # the frames' own salt tells the generation
            salt1, salt2 = f_salt1, f_salt2
        page_at = offset + FRAME_HEADER
        if _same_generation((f_salt1, f_salt2), (salt1, salt2)):
            if not broken:
                checksum = _checksum(frame[:8], *checksum, big_endian)
                checksum = _checksum(frame[FRAME_HEADER:], *checksum, big_endian)
                broken = checksum != (fk1, fk2) or (f_salt1, f_salt2) != (salt1, salt2)
            if broken:
                scan.dropped.append((pgno, page_at))
                committed_after_break = committed_after_break or commit != 0
            else:
                pending[pgno] = page_at
                if commit:
                    scan.applied.update(pending)
                    pending.clear()
        elif not broken:
            broken = True  # SQLite stops at the first frame of another generation
        offset += FRAME_HEADER + page_size
        index += 1
    scan.dropped[:0] = list(pending.items())  # an unfinished transaction: never committed
    if committed_after_break:
        where = "its header" if not header_ok else "a frame"
        scan.damage = f"the write-ahead log is damaged (at {where}, of {index} frames)"
    return scan


def _same_generation(salts: tuple[int, int], expected: tuple[int, int]) -> bool:
    """A frame of the log's current generation: its salts match (a damaged byte or two in
    them still do; another generation's salts are random)."""
    have, want = struct.pack(">II", *salts), struct.pack(">II", *expected)
    return sum(a != b for a, b in zip(have, want, strict=True)) <= 2


def _checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum over ``data`` (a multiple of 8 bytes), continued from (s0, s1)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def user_version(db_path: Path, wal_path: Path) -> int:
    """The database's ``PRAGMA user_version`` (the buffer's format), from the files alone: page 1
    as SQLite would read it (its newest committed copy in the WAL, else the database's). Opening
    the database to ask would let SQLite write (a checkpoint at close) to a file of a newer
    version. 0 without a database header: no file yet, or one damaged (for the buffer to mend)."""
    wal = scan_wal(wal_path)
    with contextlib.ExitStack() as stack:
        if 1 in wal.applied:
            header = _read_at(_open_or_none(stack, wal_path), wal.applied[1], 100)
        else:
            header = _read_at(_open_or_none(stack, db_path), 0, 100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return 0
    return int(struct.unpack(">i", header[60:64])[0])


# --- pages and records


def rows_in_frames(wal_path: Path, wal: WalScan) -> Found:
    """The sample rows in the frames SQLite drops (few: the WAL is bounded), by id; an intact
    copy in a later frame wins (a row re-stamped later)."""
    found = Found()
    usable = wal.page_size
    try:
        with wal_path.open("rb") as file:
            for pgno, offset in wal.dropped:
                file.seek(offset)
                for row in _leaf_rows(file.read(wal.page_size), pgno, usable, found):
                    found.rows[row.id] = row
    except OSError:
        pass
    return found


def scan(db_path: Path, wal_path: Path, found: Found) -> Iterator[StoredRow]:
    """Every intact sample row of the database as SQLite would see it (each page's newest
    version, pages on the freelist left out), then those of the WAL frames SQLite would drop;
    the damage met goes into ``found``. Read page by page: a large buffer is never in memory."""
    wal = scan_wal(wal_path)
    with contextlib.ExitStack() as stack:
        db = _open_or_none(stack, db_path)
        log_file = _open_or_none(stack, wal_path)
        page_size = wal.page_size or _page_size_of(_read_at(db, 0, 100))

        def page(pgno: int) -> bytes:
            if pgno in wal.applied and log_file is not None:
                return _read_at(log_file, wal.applied[pgno], page_size)
            return _read_at(db, (pgno - 1) * page_size, page_size)

        first = page(1)
        usable = page_size - (first[20] if len(first) > 20 and first[20] < 64 else 0)
        count = max(_file_size(db) // page_size, max(wal.applied, default=0))
        free = _freelist(page, count)
        for pgno in range(1, count + 1):
            if pgno not in free:
                yield from _leaf_rows(page(pgno), pgno, usable, found)
        yield from rows_in_frames(wal_path, wal).rows.values()


def _open_or_none(stack: contextlib.ExitStack, path: Path) -> BinaryIO | None:
    try:
        return stack.enter_context(path.open("rb"))
    except OSError:
        return None


def _read_at(file: BinaryIO | None, offset: int, size: int) -> bytes:
    if file is None:
        return b""
    file.seek(offset)
    return file.read(size)


def _file_size(file: BinaryIO | None) -> int:
    if file is None:
        return 0
    return os.fstat(file.fileno()).st_size


def _leaf_rows(page: bytes, pgno: int, usable: int, found: Found) -> Iterator[StoredRow]:
    rows = Found()
    _read_leaf(page, 100 if pgno == 1 else 0, usable, rows)
    found.damaged |= rows.damaged
    found.unreadable += rows.unreadable
    found.meta.update(rows.meta)
    found.quarantined += rows.quarantined[: QUARANTINE_LIMIT - len(found.quarantined)]
    return iter(rows.rows.values())


def _page_size_of(header: bytes) -> int:
    if len(header) < 18:
        return DEFAULT_PAGE
    size = struct.unpack(">H", header[16:18])[0]
    size = 65536 if size == 1 else size
    return size if _valid_page_size(size) else DEFAULT_PAGE


def _valid_page_size(size: int) -> bool:
    return 512 <= size <= 65536 and size & (size - 1) == 0


def _freelist(page: Callable[[int], bytes], count: int) -> set[int]:
    """The pages on the freelist (their old content would bring deleted rows back)."""
    free: set[int] = set()
    header = page(1)
    if len(header) < 40:
        return free
    trunk = struct.unpack(">I", header[32:36])[0]
    while 0 < trunk <= count and trunk not in free:
        free.add(trunk)
        content = page(trunk)
        if len(content) < 8:
            break
        following, leaves = struct.unpack(">II", content[:8])
        leaves = min(leaves, (len(content) - 8) // 4)
        free.update(struct.unpack(f">{leaves}I", content[8 : 8 + 4 * leaves]))
        trunk = following
    return free


def _read_leaf(page: bytes, start: int, usable: int, found: Found) -> None:
    """The cells of one table leaf page into ``found``; a page whose type byte was damaged is
    tried as a leaf too, keeping only rows whose checksum proves them."""
    if len(page) < start + 8:
        return
    kind = page[start]
    if kind in _OTHER_BTREE:
        return
    proven_only = kind != _TABLE_LEAF
    cells = struct.unpack(">H", page[start + 3 : start + 5])[0]
    pointers = start + 8
    if pointers + 2 * cells > len(page):
        if not proven_only:
            found.unreadable += 1
        return
    for i in range(cells):
        offset = struct.unpack(">H", page[pointers + 2 * i : pointers + 2 * i + 2])[0]
        _read_cell(page, offset, usable, found, proven_only)


def _read_cell(page: bytes, offset: int, usable: int, found: Found, proven_only: bool) -> None:
    rowid: int | None = None
    try:
        size, pos = _varint(page, offset)
        rowid, pos = _varint(page, pos)
        rowid = _signed(rowid)
        if size > usable - 35 or pos + size > len(page):
            raise ValueError("spills to overflow pages or beyond the page")
        values = _record(page[pos : pos + size])
    except (ValueError, IndexError, struct.error):
        if not proven_only:
            if rowid is not None and rowid > 0:
                found.damaged.add(rowid)
            else:
                found.unreadable += 1
        return
    _classify(rowid, values, found, proven_only)


def _classify(rowid: int, values: list[object], found: Found, proven_only: bool) -> None:
    if len(values) == 2 and isinstance(values[0], bytes) and isinstance(values[1], int):
        if not proven_only:
            found.meta[values[0].decode("utf-8", "replace")] = values[1]
        return
    row = _sample_row(rowid, values)
    if row is None:
        if not proven_only and len(values) in (6, 7):
            found.damaged.add(rowid)
        return
    if row.crc is not None and intact(row):
        found.rows[rowid] = row
    elif row.crc is None and not proven_only:
        found.rows.setdefault(rowid, with_checksum(row))  # an old row: nothing to prove it by
    elif not proven_only:
        found.damage(row)


def _sample_row(rowid: int, values: list[object]) -> StoredRow | None:
    if len(values) not in (6, 7) or values[0] is not None:
        return None
    _, device, ts, vals, mono, boot, *rest = values
    crc = rest[0] if rest else None
    if not (isinstance(device, bytes) and isinstance(ts, int) and isinstance(vals, bytes)):
        return None
    if not (mono is None or isinstance(mono, int | float)) or not (
        boot is None or isinstance(boot, bytes)
    ):
        return None
    if crc is not None and not isinstance(crc, int):
        return None
    return StoredRow(rowid, device, ts, vals, None if mono is None else float(mono), boot, crc)


def _record(payload: bytes) -> list[object]:
    """The values of one record (text and blobs as bytes); ``ValueError`` when damaged."""
    header_size, pos = _varint(payload, 0)
    if not 0 < header_size <= len(payload):
        raise ValueError("bad record header")
    types = []
    while pos < header_size:
        kind, pos = _varint(payload, pos)
        types.append(kind)
    if pos != header_size:
        raise ValueError("bad record header")
    values: list[object] = []
    for kind in types:
        value, pos = _value(payload, pos, kind)
        values.append(value)
    if pos != len(payload):
        raise ValueError("record length mismatch")
    return values


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _value(payload: bytes, pos: int, kind: int) -> tuple[object, int]:
    if kind == 0:
        return None, pos
    if kind in _INT_SIZES:
        size = _INT_SIZES[kind]
        if pos + size > len(payload):
            raise ValueError("truncated")
        return int.from_bytes(payload[pos : pos + size], "big", signed=True), pos + size
    if kind == 7:
        if pos + 8 > len(payload):
            raise ValueError("truncated")
        return struct.unpack(">d", payload[pos : pos + 8])[0], pos + 8
    if kind in (8, 9):
        return kind - 8, pos
    if kind >= 12:
        size = (kind - 12) // 2 if kind % 2 == 0 else (kind - 13) // 2
        if pos + size > len(payload):
            raise ValueError("truncated")
        return payload[pos : pos + size], pos + size
    raise ValueError(f"reserved serial type {kind}")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """SQLite's variable-length integer at ``pos``: its value and the position after it."""
    value = 0
    for i in range(8):
        byte = data[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    return (value << 8) | data[pos + 8], pos + 9


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value
