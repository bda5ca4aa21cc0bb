"""The buffer: memory first, disk for what stays unacknowledged, bounded, ids that never repeat."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.model import Sample
from agent.store.buffer import Buffer, Complaints

MB = 1_000_000
FLUSH = 1.0  # flush_interval: samples unacknowledged for 0.75 s are committed


def buffer_at(path: Path, max_size: int = 10 * MB) -> Buffer:
    return Buffer(path / "buffer.sqlite", max_size, FLUSH)


def rows_on_disk(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path / "buffer.sqlite")) as db:
        return int(db.execute("SELECT count(*) FROM samples").fetchone()[0])


def id_of(sample: Sample | None) -> int:
    """The id of a sample just added: one is handed out at once (the data dir is writable)."""
    assert sample is not None
    return sample.id


def crash(buffer: Buffer) -> None:
    """The process dies: no close(), nothing more committed."""
    # no public way to drop the connection without a clean stop: what a crash is
    assert buffer._db is not None  # noqa: SLF001
    buffer._db.close()  # noqa: SLF001


def test_ids_increase_and_continue_after_a_clean_restart(tmp_path: Path) -> None:
    with buffer_at(tmp_path) as buffer:
        ids = [id_of(buffer.add("meter", 1000 + i, {"v": i}, now=0)) for i in range(3)]
        assert ids == [1, 2, 3]
        buffer.acknowledge(buffer.take_live(10))
    with buffer_at(tmp_path) as buffer:
        assert id_of(buffer.add("meter", 2000, {"v": 9})) == 4  # no gap after a clean stop


def test_ids_never_repeat_after_a_crash(tmp_path: Path) -> None:
    buffer = buffer_at(tmp_path).open()
    handed_out = [id_of(buffer.add("meter", i, {"v": i}, now=0)) for i in range(5)]
    buffer.flush(now=10)  # committed
    # not yet committed:
    handed_out += [id_of(buffer.add("meter", 10 + i, {"v": i}, now=10)) for i in range(2)]
    crash(buffer)
    with buffer_at(tmp_path) as again:
        assert again.depth == 5  # what was committed survives
        assert id_of(again.add("meter", 99, {"v": 0})) > max(handed_out)  # a gap, never a repeat


def test_samples_acknowledged_in_time_never_touch_the_disk(tmp_path: Path) -> None:
    with buffer_at(tmp_path) as buffer:
        opened = buffer.stats().bytes  # the schema and what a start records
        for i in range(100):
            buffer.add("soil", i, {"m": i}, now=0.0)
        buffer.acknowledge(buffer.take_live(1000))
        buffer.flush(now=0.5)
        assert buffer.stats().on_disk == 0
        assert rows_on_disk(tmp_path) == 0
        # and nothing was written for them
        assert buffer.stats().bytes == opened


def test_unacknowledged_samples_are_committed_at_the_flush_and_survive_a_crash(
    tmp_path: Path,
) -> None:
    buffer = buffer_at(tmp_path).open()
    buffer.add("soil", 1, {"m": 1}, now=0.0)
    buffer.add("soil", 2, {"m": 2}, now=0.5)
    buffer.take_live(10)  # sent, never acknowledged
    buffer.flush(now=0.8)  # the first is 0.8 s old: committed; the second waits
    assert rows_on_disk(tmp_path) == 1
    buffer.flush(now=1.3)
    assert rows_on_disk(tmp_path) == 2
    crash(buffer)
    with buffer_at(tmp_path) as again:
        assert [s.values for s in again.take_backlog(10)] == [{"m": 1}, {"m": 2}]


def test_deletes_after_acknowledgement_are_batched(tmp_path: Path) -> None:
    with buffer_at(tmp_path) as buffer:
        for i in range(5):
            buffer.add("soil", i, {"m": i}, now=0.0)
        buffer.flush(now=1.0)
        backlog = buffer.take_backlog(10)
        assert [s.id for s in backlog] == [1, 2, 3, 4, 5]
        buffer.acknowledge(backlog)
        assert rows_on_disk(tmp_path) == 5  # not yet: one delete batch at the next flush
        buffer.flush(now=1.25)
        assert rows_on_disk(tmp_path) == 0
        assert buffer.depth == 0


def test_live_and_backlog_are_handed_out_apart_and_again_after_a_failure(tmp_path: Path) -> None:
    with buffer_at(tmp_path) as buffer:
        for i in range(3):
            buffer.add("old", i, {"v": i}, now=0.0)
        buffer.flush(now=1.0)  # an outage: these went to disk
        buffer.add("new", 9, {"v": 9}, now=1.0)
        assert [s.device for s in buffer.take_live(10)] == ["new"]
        assert [s.id for s in buffer.take_backlog(2)] == [1, 2]
        assert [s.id for s in buffer.take_backlog(2)] == [3]  # in flight ones are not repeated
        assert buffer.take_live(10) == []
        buffer.release()  # the link dropped before anything was acknowledged
        assert [s.id for s in buffer.take_live(10)] == [4]
        assert [s.id for s in buffer.take_backlog(10)] == [1, 2, 3]


def test_the_bound_drops_the_oldest_whole_samples_and_counts_them(tmp_path: Path) -> None:
    bound = 100 * 1024
    with buffer_at(tmp_path, max_size=bound) as buffer:
        for i in range(8_000):
            buffer.add("meter", i, {"voltage": 230.0 + i % 7, "current": i % 13}, now=0.0)
            if i % 500 == 499:
                buffer.flush(now=1.0 + i)
        buffer.flush(now=1e6)
        stats = buffer.stats()
        assert stats.dropped > 0
        assert stats.on_disk + stats.dropped == 8_000
        assert stats.bytes <= bound
        oldest = buffer.take_backlog(1)[0]
        assert oldest.id == stats.dropped + 1  # the oldest went first, whole
    assert sum(f.stat().st_size for f in tmp_path.glob("buffer.sqlite*")) <= bound


def test_a_corrupt_buffer_file_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with buffer_at(tmp_path) as buffer:
        last = id_of(buffer.add("meter", 1, {"v": 1}))
    (tmp_path / "buffer.sqlite").write_bytes(b"this is not a database" * 100)
    (tmp_path / "buffer.sqlite-wal").unlink(missing_ok=True)
    with buffer_at(tmp_path) as buffer:
        assert id_of(buffer.add("meter", 2, {"v": 2})) > last
        buffer.flush(now=1e9)
        assert rows_on_disk(tmp_path) == 1
    aside = list(tmp_path.glob("buffer.sqlite.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not")
    assert any("is damaged" in r.getMessage() for r in caplog.records)


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 512 kB tmpfs: a really full file system (needs root)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the page-limit test covers the bound")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_file_system_drops_the_oldest_and_keeps_going(
    tiny_filesystem: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # our bound is far above what the file system can hold
    with Buffer(tiny_filesystem / "buffer.sqlite", 100 * MB, FLUSH) as buffer:
        for i in range(8_000):
            buffer.add("meter", i, {"voltage": 230.5, "text": "x" * 60}, now=0.0)
            if i % 500 == 499:
                buffer.flush(now=1.0 + i)
        buffer.flush(now=1e6)
        stats = buffer.stats()
        assert stats.dropped > 0
        assert stats.in_memory + stats.on_disk + stats.dropped == 8_000
        newest = buffer.add("meter", 99, {"voltage": 1.0}, now=2e6)
        assert newest is not None
        assert buffer.take_live(1)[0].id <= newest.id  # still taking samples
    # the line blames what really limited it: the file system, not the 100 MB bound
    drops = [r.getMessage() for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert drops
    assert "the file system holding it is full" in drops[0]
    assert all("max_size" not in d for d in drops)


def test_storage_trouble_held_back_by_the_minute_is_said_when_it_is_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    complaints = Complaints(lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="agent.store.buffer"):
        complaints.say("dropped", "dropped 5, 5 in all")
        now[0] = 10.0
        complaints.say("dropped", "dropped 3, 8 in all")
        complaints.say("dropped", "dropped 2, 10 in all")
        complaints.tick()  # the minute is not over: nothing yet
        assert [r.getMessage() for r in caplog.records] == ["dropped 5, 5 in all"]
        now[0] = 61.0
        complaints.tick()  # no new trouble came: the last word is said all the same
    assert [r.getMessage() for r in caplog.records] == [
        "dropped 5, 5 in all",
        "dropped 2, 10 in all (this happened 2 times more in the last minute)",
    ]
