"""Sequences an adversarial review found against the buffer's promises (no id repeated for other
content, no committed sample lost uncounted), each pinned: a journal left by an older run, a
lost ids file, a mark the disk refused, a WAL met while the disk refused, a page that left no
trace, a form that could not be stored."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pytest

from agent.clock import Clock
from agent.store import salvage
from agent.store.buffer import Buffer

MB = 1_000_000


def buffer_at(path: Path, journal: Path | None = None) -> Buffer:
    return Buffer(path, 100 * MB, 60.0, journal_dir=journal, boot="B").open()


def test_a_journal_left_by_an_older_run_does_not_bring_its_ids_back(tmp_path: Path) -> None:
    db = tmp_path / "data" / "buffer.sqlite"
    shm, run = tmp_path / "shm", tmp_path / "run"
    shm.mkdir()
    run.mkdir()
    first = buffer_at(db, shm)
    [first.add("dev", 1, {"v": i}) for i in range(3)]
    first._close_db()  # kill -9: its journal stays in shm
    second = buffer_at(db, run)  # another runtime dir (systemd's): it sees no journal
    sent = [second.add("dev", 2, {"v": "second"}) for _ in range(3)]
    second.acknowledge([s for s in sent if s is not None])
    second.close()
    third = buffer_at(db, shm)  # by hand again: the old journal is there
    taken = {third.add("dev", 3, {"v": "third"}).id for _ in range(20)}  # type: ignore[union-attr]
    assert not taken & {s.id for s in sent if s is not None}
    third.close()


def test_a_lost_ids_file_beside_the_database_costs_a_jump_twice_over(tmp_path: Path) -> None:
    db = tmp_path / "buffer.sqlite"
    seen: set[int] = set()
    for _ in range(3):  # every sample acknowledged: the database holds none of their ids
        buffer = buffer_at(db)
        samples = [buffer.add("dev", 1, {"v": 0}) for _ in range(3)]
        ids = {s.id for s in samples if s is not None}
        assert not ids & seen
        seen |= ids
        buffer.acknowledge([s for s in samples if s is not None])
        buffer.close()
        db.with_suffix(".ids").unlink()


def test_a_mark_the_disk_refused_is_not_outvoted_by_the_clean_stop_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "buffer.sqlite"
    ids_file = db.with_suffix(".ids")
    buffer = buffer_at(db)
    done = [buffer.add("dev", 1, {"v": 0}) for _ in range(3)]
    buffer.acknowledge([s for s in done if s is not None])
    buffer.close()
    real_open, refusing = os.open, [True]

    def flaky(path: object, *args: object, **kwargs: object) -> int:
        if refusing[0] and str(path) == str(ids_file):
            raise OSError(errno.EIO, "I/O error")
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", flaky)  # the os.open the ids file is written through
    second = buffer_at(db)  # the start's mark is refused
    refusing[0] = False  # the disk answers again: the reservation goes into both slots
    sent = [second.add("dev", 2, {"v": "second"}) for _ in range(3)]
    sent_ids = {s.id for s in sent if s is not None}
    assert len(sent_ids) == 3
    raw = bytearray(ids_file.read_bytes())  # a power cut, then the newer slot is damaged
    raw[(second._ledger.record.seq % 2) * 512 + 10] ^= 0x20
    ids_file.write_bytes(bytes(raw))
    second._close_db()  # (the power cut: the process is gone)
    third = buffer_at(db)
    assert not {third.add("dev", 3, {"v": 0}).id for _ in range(3)} & sent_ids  # type: ignore[union-attr]
    third.close()


def test_a_damaged_log_met_while_the_disk_refused_is_read_back_once_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "run"
    buffer = buffer_at(source / "buffer.sqlite")
    for batch in range(3):
        for i in range(20):
            buffer.add("dev", i, {"v": batch})
        buffer.flush(force=True)  # three committed transactions, still in the WAL
    after = tmp_path / "after"  # the files as a power cut leaves them
    shutil.copytree(source, after)
    buffer._close_db()
    wal = after / "buffer.sqlite-wal"
    raw = bytearray(wal.read_bytes())
    raw[32 + 2 * (24 + salvage.scan_wal(wal).page_size) + 100] ^= 0xFF  # the third frame
    wal.write_bytes(bytes(raw))
    real, calls = Buffer._create_private, [0]

    def refuse_once(self: Buffer, path: Path) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise OSError(errno.EROFS, "Read-only file system")
        real(self, path)

    monkeypatch.setattr(Buffer, "_create_private", refuse_once)
    again = buffer_at(after / "buffer.sqlite")  # read-only at start
    again.flush(force=True)  # the disk is back: the log is read back before SQLite cuts it
    assert again.stats().on_disk == 60
    assert again.lost == 0
    again.close()


def test_a_page_lost_without_a_trace_after_a_power_cut_is_counted(tmp_path: Path) -> None:
    db = tmp_path / "buffer.sqlite"
    buffer = buffer_at(db)
    for i in range(300):
        buffer.add("dev", i, {"v": "x" * 40})
    buffer.flush(force=True)
    buffer._checkpoint()
    buffer._close_db()  # the power goes: no clean stop recorded
    raw = bytearray(db.read_bytes())
    page = 4096
    leaves = [n for n in range(2, len(raw) // page + 1) if raw[(n - 1) * page] == 0x0D]

    def cells(n: int) -> int:
        return int.from_bytes(raw[(n - 1) * page + 3 : (n - 1) * page + 5], "big")

    victim = max(leaves, key=cells)
    held = cells(victim)
    raw[(victim - 1) * page : (victim - 1) * page + 512] = bytes(512)  # its first sector zeroed
    db.write_bytes(bytes(raw))
    again = buffer_at(db)
    assert again.stats().on_disk == 300 - held
    assert again.lost == held  # the database's own count says how many are gone
    again.close()


def test_a_form_the_disk_would_not_store_is_not_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = buffer_at(tmp_path / "buffer.sqlite")
    buffer.add("dev", 0, {"v": 1}, mono=100.0, boot=Clock().boot_id())
    buffer.flush(force=True)  # in the backlog, its time still to be settled
    [sample] = buffer.take_backlog(10)
    buffer._close_db()  # the disk refuses
    with caplog.at_level(logging.ERROR):
        assert buffer.settle([sample]) == {sample.id}
    assert sample.id not in buffer._in_flight  # handed out again later, settled then
