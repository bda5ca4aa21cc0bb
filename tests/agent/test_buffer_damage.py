"""The buffer against a disk that damages, fills, refuses and a process that is killed: every
committed sample survives or is counted, loudly; the agent never stops for it."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.store.buffer import Buffer
from agent.store.inspect import stored_samples, stored_stats
from agent.testkit.faults import damage_bytes

MB = 1_000_000
FLUSH = 1.0
NOW_MS = 1_800_000_000_000


def buffer_at(directory: Path, journal: Path | None = None) -> Buffer:
    return Buffer(directory / "buffer.sqlite", 10 * MB, FLUSH, journal_dir=journal, boot="boot-1")


def die(buffer: Buffer) -> None:
    """The process dies: the buffer's connection goes without ``close()`` (no clean stop
    recorded, nothing more committed)."""
    buffer._close_db()  # noqa: SLF001 (a kill -9 has no public API)


def killed(buffer: Buffer, into: Path) -> Path:
    """What a ``kill -9`` leaves on disk: the files as they are this moment, WAL and all (the
    buffer itself is then closed, as if it had never been)."""
    into.mkdir()
    for file in buffer.path.parent.iterdir():
        if file.is_file():
            shutil.copy2(file, into / file.name)
    with contextlib.suppress(Exception):
        die(buffer)
    return into


def fill(buffer: Buffer, transactions: int, per: int = 4) -> list[int]:
    """Samples committed in ``transactions`` flushes of ``per`` each; their ids."""
    ids = []
    for t in range(transactions):
        for i in range(per):
            sample = buffer.add(
                "meter", NOW_MS + t * 100 + i, {"v": t * 100 + i, "s": "x" * 40}, now=t
            )
            assert sample is not None
            ids.append(sample.id)
        buffer.flush(now=t + 1)
    return ids


def drain(buffer: Buffer) -> list[int]:
    ids = []
    while batch := buffer.take_backlog(100):
        ids += [s.id for s in batch]
        buffer.acknowledge(batch)
    return ids


def plain_sqlite_count(directory: Path) -> int:
    """What SQLite alone makes of the files (in a copy: opening may rewrite them)."""
    copy = directory.parent / f"{directory.name}-plain"
    shutil.copytree(directory, copy)
    try:
        with contextlib.closing(sqlite3.connect(copy / "buffer.sqlite")) as db:
            return int(db.execute("SELECT count(*) FROM samples").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_one_flipped_byte_in_a_sample_is_quarantined_and_the_rest_drain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with buffer_at(tmp_path) as buffer:
        ids = fill(buffer, 1, per=30)
    db = tmp_path / "buffer.sqlite"
    data = bytearray(db.read_bytes())
    at = data.index(b'"v":17,')
    data[at + 5] = ord("8")  # still JSON, another number: only the checksum can tell
    db.write_bytes(bytes(data))
    with buffer_at(tmp_path) as buffer:
        drained = drain(buffer)
        assert drained == [i for i in ids if i != ids[17]]
        assert buffer.lost == 1
    said = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert f"sample id {ids[17]} is damaged (checksum mismatch)" in said
    assert f"1 committed sample(s) lost to the damage (ids {ids[17]})" in said
    with contextlib.closing(sqlite3.connect(db)) as check:
        assert check.execute("SELECT id FROM quarantine").fetchall() == [(ids[17],)]
    assert stored_stats(db).lost == 1  # and it stays counted


def test_a_byte_that_is_not_utf8_does_not_hold_back_the_intact_samples(tmp_path: Path) -> None:
    with buffer_at(tmp_path) as buffer:
        ids = fill(buffer, 1, per=31)
    db = tmp_path / "buffer.sqlite"
    data = bytearray(db.read_bytes())
    data[data.index(b'"v":3,') + 2] = 0xFF
    db.write_bytes(bytes(data))
    exported: list[str] = []
    assert [s.id for s in stored_samples(db, damaged=exported.append)] == ids[:3] + ids[4:]
    assert exported == [f"sample id {ids[3]} is damaged (checksum mismatch): left out"]
    with buffer_at(tmp_path) as buffer:
        assert drain(buffer) == ids[:3] + ids[4:]
        assert buffer.lost == 1


@pytest.mark.parametrize("where", [0.1, 0.3, 0.6, 0.9])
def test_a_damaged_write_ahead_log_after_a_kill_loses_nothing_intact(
    tmp_path: Path, where: float, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = buffer_at(tmp_path / "run").open()
    ids = fill(buffer, 8)  # eight transactions, still in the WAL
    after = killed(buffer, tmp_path / "after")
    wal = after / "buffer.sqlite-wal"
    size = wal.stat().st_size
    damage_bytes(wal, random.Random(7), within=(int(size * where), int(size * where) + 1))
    assert plain_sqlite_count(after) < len(ids)  # SQLite alone would drop committed samples
    with buffer_at(after) as again:
        drained = drain(again)
        # every committed sample came back but those of which no intact copy survived, and
        # those are counted and named
        assert set(drained) | set(range(again.lost and 1)) <= set(ids)
        assert len(drained) + again.lost >= len(ids)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "the write-ahead log is damaged" in said
    assert "read back" in said
    assert list(after.glob("buffer.sqlite.damaged-*-wal"))  # kept for a person to look at


@pytest.mark.parametrize("seed", range(12))
def test_random_damage_to_the_database_loses_only_what_it_hit(tmp_path: Path, seed: int) -> None:
    with buffer_at(tmp_path) as buffer:
        ids = fill(buffer, 3, per=100)
    rng = random.Random(seed)
    damage_bytes(tmp_path / "buffer.sqlite", rng, count=rng.choice([1, 3, 10]))
    with buffer_at(tmp_path) as again:  # never raises, whatever was hit
        drained = drain(again)
        lost = again.lost
    assert set(drained) <= set(ids)
    assert len(ids) - len(drained) <= lost, "a committed sample vanished without being counted"
    assert len(set(drained)) == len(drained)


def test_a_database_overwritten_whole_is_counted_lost(tmp_path: Path) -> None:
    with buffer_at(tmp_path) as buffer:
        ids = fill(buffer, 1, per=25)
    (tmp_path / "buffer.sqlite").write_bytes(os.urandom(40_000))
    with buffer_at(tmp_path) as again:
        assert drain(again) == []
        assert again.lost == len(ids)  # the last clean stop said how many it left
        assert again.add("meter", NOW_MS, {"v": 1}).id > max(ids)  # type: ignore[union-attr]
    assert list(tmp_path.glob("buffer.sqlite.corrupt-*"))


def test_the_dropped_count_survives_a_kill(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "run" / "buffer.sqlite", 200_000, FLUSH).open()
    for i in range(3000):
        buffer.add("meter", NOW_MS + i, {"voltage": 230.5, "text": "x" * 60}, now=0.0)
        if i % 200 == 199:
            buffer.flush(now=1.0 + i)
    dropped = buffer.dropped
    assert dropped > 0
    assert stored_stats(buffer.path).dropped == dropped  # beside the running buffer, at once
    after = killed(buffer, tmp_path / "after")
    assert stored_stats(after / "buffer.sqlite").dropped == dropped
    with Buffer(after / "buffer.sqlite", 200_000, FLUSH) as again:
        assert again.dropped == dropped


def test_samples_in_memory_at_a_kill_come_back_from_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "runtime"
    journal.mkdir()
    buffer = buffer_at(tmp_path, journal).open()
    committed = fill(buffer, 2)
    in_memory = [buffer.add("meter", NOW_MS + i, {"v": i}, now=5.0).id for i in range(6)]  # type: ignore[union-attr]
    live = buffer.take_live(2)
    buffer.acknowledge(live)  # two reached the broker: they must not come back
    die(buffer)  # the process dies: memory is gone, the journal in RAM stays
    with buffer_at(tmp_path, journal) as again:
        assert drain_all(again) == committed + in_memory[2:]
        assert again.add("meter", NOW_MS, {"v": 0}).id == in_memory[-1] + 1  # type: ignore[union-attr]


def drain_all(buffer: Buffer) -> list[int]:
    """What the buffer holds, backlog and memory, by id."""
    ids = [s.id for s in buffer.take_live(10_000)]
    return sorted(ids + drain(buffer))


def test_a_journal_of_another_boot_is_not_taken(tmp_path: Path) -> None:
    journal = tmp_path / "runtime"
    journal.mkdir()
    buffer = buffer_at(tmp_path, journal).open()
    buffer.add("meter", NOW_MS, {"v": 1}, now=0.0)
    with contextlib.suppress(Exception):
        die(buffer)
    other = Buffer(tmp_path / "buffer.sqlite", 10 * MB, FLUSH, journal_dir=journal, boot="boot-2")
    with other:
        assert other.depth == 0


def test_files_holding_readings_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with Buffer(tmp_path / "data" / "buffer.sqlite", MB, FLUSH) as buffer:
            buffer.add("meter", NOW_MS, {"v": 1}, now=0.0)
            buffer.flush(now=5.0)
            files = list((tmp_path / "data").iterdir())
            assert {f.name for f in files} >= {"buffer.sqlite", "buffer.sqlite-wal", "buffer.ids"}
            for file in files:
                assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_a_data_dir_that_cannot_be_written_takes_ids_from_the_clock(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")
    buffer = Buffer(blocker / "buffer.sqlite", MB, FLUSH, trusted_ms=lambda: NOW_MS).open()
    sample = buffer.add("meter", 1, {"v": 1}, now=0.0)
    assert sample is not None
    assert sample.id >= NOW_MS * 1000
    buffer.flush(now=5.0)  # nothing to write to: no crash
    assert buffer.take_live(10) == [sample]
    buffer.close()


def test_without_a_record_or_a_clock_samples_wait_for_an_id_in_order(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")
    clock: list[int | None] = [None]
    buffer = Buffer(blocker / "buffer.sqlite", MB, FLUSH, trusted_ms=lambda: clock[0]).open()
    assert buffer.add("meter", 1, {"v": 1}, now=0.0) is None
    assert buffer.add("meter", 2, {"v": 2}, now=0.0) is None
    assert buffer.depth == 2
    assert buffer.stats().waiting_for_id == 2
    clock[0] = NOW_MS  # NTP answered
    buffer.flush(now=1.0)
    taken = buffer.take_live(10)
    assert [s.ts for s in taken] == [1, 2]
    assert taken[0].id < taken[1].id
    buffer.close()


def test_a_commit_the_card_lost_as_it_failed_comes_back_from_the_journal(tmp_path: Path) -> None:
    """An SD card that fails into read-only (ext4 ``errors=remount-ro``) at the moment of a
    commit can lose it although SQLite reported it done: its samples stay in the crash journal
    until a later write to the card succeeds."""
    journal, card = tmp_path / "runtime", tmp_path / "card"
    journal.mkdir()
    card.mkdir()
    buffer = buffer_at(card, journal).open()
    earlier = fill(buffer, 1)
    buffer.flush(now=10.0, force=True)  # nothing due: the earlier commit stays unconfirmed
    before = killed(buffer, tmp_path / "before")  # the card as it will be found after repair
    buffer = buffer_at(card, journal).open()
    last = [buffer.add("meter", NOW_MS + i, {"v": i}, now=20.0).id for i in range(5)]  # type: ignore[union-attr]
    buffer.flush(now=30.0)  # "committed": then the card fails and loses this commit
    die(buffer)  # and the agent is killed
    shutil.rmtree(card)
    shutil.copytree(before, card)
    with buffer_at(card, journal) as again:
        assert drain_all(again) == earlier + last


def test_a_commit_leaves_the_journal_once_a_later_write_confirms_it(tmp_path: Path) -> None:
    journal = tmp_path / "runtime"
    journal.mkdir()
    buffer = buffer_at(tmp_path, journal).open()
    first = fill(buffer, 1)
    assert set(stored_journal(buffer)) == set(first)  # committed, not yet confirmed
    assert stored_stats(buffer.path, boot="boot-1").depth == len(first)  # counted once
    second = fill(buffer, 1)
    assert set(stored_journal(buffer)) == set(second)  # the second commit confirmed the first
    buffer.close()  # the ids file written after the last commit confirms it
    assert not list(journal.iterdir())


def stored_journal(buffer: Buffer) -> list[int]:
    # the crash journal's own view: what it would give back after a kill
    assert buffer._journal is not None  # noqa: SLF001
    return sorted(buffer._journal.recover().samples)  # noqa: SLF001


def test_a_count_whose_transaction_failed_is_written_by_the_next(tmp_path: Path) -> None:
    buffer = buffer_at(tmp_path).open()
    sample = buffer.add("meter", NOW_MS, {"v": 1}, now=0.0)
    assert sample is not None
    # the card fails for one transaction: its connection swapped for one that refuses
    card, buffer._db = buffer._db, FailingCard()  # type: ignore[assignment]  # noqa: SLF001
    buffer.discard([sample])  # dropped, and its count cannot go to the card now
    buffer._db = card  # noqa: SLF001
    buffer.flush(now=1.0)  # nothing else to write: the count alone
    die(buffer)  # a kill: only what reached the card counts
    assert stored_stats(buffer.path, boot="boot-1").dropped == 1


class FailingCard:
    """A database connection on a card that has just failed: each statement runs, and the
    commit is an I/O error."""

    rowcount = 0

    def __enter__(self) -> FailingCard:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            raise sqlite3.OperationalError("disk I/O error")

    def execute(self, *_: object) -> FailingCard:
        return self

    executemany = execute

    def rollback(self) -> None:
        pass
