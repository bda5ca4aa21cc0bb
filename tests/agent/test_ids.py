"""Ids never repeat, whatever the disk does: the reservation file and its fall-backs."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.store.ids import BLIND_JUMP, MIN_BLOCK, PER_MS, SLOT, IdLedger, IdRecord
from agent.testkit.faults import MountError, ReadOnlyMount, TinyFilesystem, damage_bytes

NOW_MS = 1_800_000_000_000


def ledger_at(path: Path) -> IdLedger:
    ledger = IdLedger(path / "buffer.ids")
    ledger.load()
    assert ledger.mark_unclean()
    return ledger


def take(ledger: IdLedger, count: int, trusted_ms: int | None = None) -> list[int]:
    ids = [ledger.take(trusted_ms) for _ in range(count)]
    assert None not in ids
    return [i for i in ids if i is not None]


def test_a_clean_stop_records_the_exact_next_id(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path)
    assert take(ledger, 3) == [1, 2, 3]
    assert ledger.close(stored=0)
    again = IdLedger(tmp_path / "buffer.ids")
    assert again.load().clean
    assert again.take(None) == 4  # no gap
    # and before it was handed out, the disk was told that ids from 4 on may be in use
    assert again.peek().next_id is None
    assert again.peek().reserved_until > 4


def test_after_a_crash_ids_resume_beyond_everything_reserved(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path)
    used = take(ledger, 5)
    again = ledger_at(tmp_path)  # no close: a crash
    assert again.take(None) == ledger.record.reserved_until > max(used)


def test_the_reservation_is_renewed_before_it_runs_out(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path)
    used = take(ledger, MIN_BLOCK + 10)
    assert used == list(range(1, MIN_BLOCK + 11))
    # every id handed out was covered by a reservation on disk when it was handed out
    on_disk = IdLedger(tmp_path / "buffer.ids").peek()
    assert on_disk.reserved_until > max(used)


@pytest.mark.parametrize("slot", [0, 1])
def test_a_damaged_slot_costs_a_jump_never_a_repeat(tmp_path: Path, slot: int) -> None:
    ledger = ledger_at(tmp_path)
    used = take(ledger, 3 * MIN_BLOCK)  # several reservations: both slots written
    path = tmp_path / "buffer.ids"
    damage_bytes(path, random.Random(slot), within=(slot * SLOT, slot * SLOT + 60))
    again = IdLedger(path)
    loaded = again.load()
    assert loaded.problems
    assert "damaged" in loaded.problems[0]
    assert again.mark_unclean()
    assert take(again, 1)[0] > max(used)


def test_a_destroyed_file_beside_stored_samples_skips_far_ahead(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path)
    used = take(ledger, 50)
    (tmp_path / "buffer.ids").write_bytes(os.urandom(2 * SLOT))
    again = IdLedger(tmp_path / "buffer.ids")
    loaded = again.load(floor=40)  # the buffer still holds samples up to id 39
    assert loaded.problems
    assert again.next_id == 40 + BLIND_JUMP > max(used)


def test_the_file_of_earlier_versions_is_read(tmp_path: Path) -> None:
    path = tmp_path / "buffer.ids"
    path.write_text('{"reserved_until": 700, "newest_ts": 5, "dropped": 3}')
    ledger = IdLedger(path)
    ledger.load()
    assert ledger.record.dropped == 3
    assert ledger.record.newest_ts == 5
    assert ledger.mark_unclean()
    assert ledger.take(None) == 700
    assert IdRecord.decode(path.read_bytes()[:SLOT]).reserved_until >= 700  # rewritten


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[ReadOnlyMount]:
    data = tmp_path / "data"
    data.mkdir()
    mount = ReadOnlyMount(data)
    try:
        mount.bind()
    except MountError as exc:
        pytest.skip(str(exc))
    yield mount
    mount.release()


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_read_only_disk_takes_ids_from_the_clock_and_they_never_repeat(
    read_only: ReadOnlyMount,
) -> None:
    clock = Monotonic()
    ledger = IdLedger(read_only.path / "buffer.ids", clock)
    ledger.load()
    assert ledger.mark_unclean()
    counted = take(ledger, MIN_BLOCK // 2 + 1)  # the next reservation is due, and refused
    read_only.read_only()
    while ledger.next_id < ledger.record.reserved_until:  # what was reserved is used up
        counted += take(ledger, 1)
    assert ledger.take(None) is None  # no record and no clock: nothing safe to hand out
    assert "Read-only file system" in ledger.refusal
    first_run = take(ledger, 5, NOW_MS)
    assert first_run == list(range(NOW_MS * PER_MS, NOW_MS * PER_MS + 5))
    assert ledger.from_clock
    # a second run on the same read-only disk, a moment later: above all of the first run's
    second = IdLedger(read_only.path / "buffer.ids", clock)
    second.load()
    assert not second.mark_unclean()
    second_run = take(second, 5, NOW_MS + 1)
    assert min(second_run) > max(first_run + counted)
    # the disk comes back: the reservation continues from the clock's ids, counted again
    read_only.writable()
    clock.now += 10  # the next try at the reservation
    third = take(second, 3, NOW_MS + 2)
    assert not second.from_clock
    assert min(third) > max(second_run)


def test_ids_from_the_clock_never_outrun_it(tmp_path: Path) -> None:
    blocked = tmp_path / "buffer.ids"
    blocked.mkdir()  # a directory where the file should be: it cannot be written
    ledger = IdLedger(blocked)
    ledger.load()
    assert take(ledger, PER_MS, NOW_MS)[-1] == NOW_MS * PER_MS + PER_MS - 1
    assert ledger.take(NOW_MS) is None  # 1000 in one millisecond: wait for the next
    assert ledger.take(NOW_MS + 1) == (NOW_MS + 1) * PER_MS


def test_a_full_file_system_still_takes_the_reservation(tmp_path: Path) -> None:
    tiny = TinyFilesystem(tmp_path / "tiny", size=1_000_000)
    try:
        tiny.mount()
    except MountError as exc:
        pytest.skip(str(exc))
    try:
        ledger = ledger_at(tiny.path)
        tiny.fill()
        used = take(ledger, 3 * MIN_BLOCK)  # reservations written in place, no new blocks
        assert not ledger.from_clock
        assert ledger.refusal == ""
        assert IdLedger(tiny.path / "buffer.ids").peek().reserved_until > max(used)
    finally:
        tiny.unmount()


@pytest.mark.parametrize("slot", [0, 1])
def test_a_clean_stop_survives_one_damaged_slot_without_a_gap(tmp_path: Path, slot: int) -> None:
    ledger = ledger_at(tmp_path)
    used = take(ledger, 2 * MIN_BLOCK)
    assert ledger.close(stored=0)
    path = tmp_path / "buffer.ids"
    damage_bytes(path, random.Random(slot), within=(slot * SLOT, slot * SLOT + 60))
    again = IdLedger(path)
    loaded = again.load()
    assert loaded.clean
    assert loaded.problems
    assert again.take(None) == max(used) + 1  # written to both slots: nothing to guess


@pytest.mark.parametrize("slot", [0, 1])
def test_a_start_undoes_the_clean_stop_in_both_slots(tmp_path: Path, slot: int) -> None:
    ledger = ledger_at(tmp_path)
    take(ledger, 5)
    assert ledger.close(stored=0)
    second = ledger_at(tmp_path)  # starts: both slots say its ids may be in use
    used = take(second, 5)
    path = tmp_path / "buffer.ids"  # it crashes; then a slot is damaged
    damage_bytes(path, random.Random(slot), within=(slot * SLOT, slot * SLOT + 60))
    third = IdLedger(path)
    assert not third.load().clean
    assert take(third, 1)[0] > max(used)
