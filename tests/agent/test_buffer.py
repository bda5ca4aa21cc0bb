"""The buffer: persistent increasing ids, nothing leaves before it is acknowledged."""

from __future__ import annotations

from pathlib import Path

from agent.buffer import Buffer


def test_ids_increase_and_continue_after_a_clean_restart(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    with Buffer(path) as buffer:
        ids = [buffer.add("meter", 1000 + i, {"v": i}).id for i in range(3)]
        assert ids == [1, 2, 3]
        buffer.acknowledge(buffer.take(10))
    with Buffer(path) as buffer:
        assert buffer.add("meter", 2000, {"v": 9}).id == 4  # no gap after a clean stop


def test_ids_never_repeat_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    buffer = Buffer(path).open()
    for i in range(3):
        buffer.add("meter", i, {"v": i})
    buffer.flush()
    handed_out = [buffer.add("meter", 10 + i, {"v": i}).id for i in range(2)]  # never committed
    assert buffer._db is not None
    buffer._db.close()  # the process dies: no close(), no commit
    with Buffer(path) as again:
        assert again.depth == 3  # what was committed survives
        new_id = again.add("meter", 99, {"v": 0}).id
        assert new_id > max(handed_out)  # a gap, never a repeated id


def test_samples_leave_only_when_acknowledged(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.sqlite") as buffer:
        for i in range(5):
            buffer.add("soil", i, {"m": i * 1.5, "ok": True, "s": "x"})
        first = buffer.take(2)
        assert [s.id for s in first] == [1, 2]
        assert first[0].values == {"m": 0.0, "ok": True, "s": "x"}
        assert [s.id for s in buffer.take(2)] == [3, 4]  # in flight ones are not handed out again
        buffer.acknowledge(first)
        assert buffer.depth == 3
        buffer.release()  # the link dropped before 3 and 4 were acknowledged
        assert [s.id for s in buffer.take(10)] == [3, 4, 5]


def test_unacknowledged_samples_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    with Buffer(path) as buffer:
        buffer.add("soil", 1, {"m": 1})
        buffer.take(10)  # sent, never acknowledged
    with Buffer(path) as buffer:
        assert [s.values for s in buffer.take(10)] == [{"m": 1}]
