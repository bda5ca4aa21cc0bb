"""The Sparkplug link's own rules, step by step, with a client that records what it is asked
to publish: a rebirth asked for between two DDATA of one batch (no real broker can place a
host's NCMD there at will), DCMD values read by their metric's birth, the bounds on commands,
a device a reload removed. Everything a host sees over a real broker is in
``test_sparkplug_link.py``."""

from __future__ import annotations

import asyncio
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.model import Sample
from agent.testkit import until
from agent.uplink.sparkplug.link import MAX_DDEATH_DELAY, MAX_WRITES_PENDING, SparkplugUplink

pytest.importorskip("google.protobuf")
from tests.uplink.test_sparkplug_codec import ReferencePayload


class RecordingBuffer:
    def __init__(self) -> None:
        self.acknowledged: list[int] = []
        self.discarded: list[int] = []
        self.released = 0

    def acknowledge(self, samples: list[Sample]) -> None:
        self.acknowledged += [s.id for s in samples]

    def discard(self, samples: list[Sample]) -> None:
        self.discarded += [s.id for s in samples]

    def release(self) -> None:
        self.released += 1


class Recorder:
    """A client that records each publish; ``on_publish`` runs after each one."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.on_publish: Any = None

    async def publish(self, topic: str, payload: bytes, qos: int = 0, **_: Any) -> None:
        self.sent.append((topic, payload))
        if self.on_publish is not None:
            self.on_publish(topic)

    async def unsubscribe(self, topic: str) -> None:
        pass

    def kinds(self) -> list[str]:
        return [
            t.split("/")[2] + ("/" + t.split("/")[4] if t.count("/") == 4 else "")
            for t, _ in self.sent
        ]


def linked(tmp_path: Path, devices: str = "pump", write: Any = None) -> SparkplugUplink:
    text = f"""
        [agent]
        id = "gw"
        data_dir = "{tmp_path}/data"
        [mqtt]
        url = "mqtt://127.0.0.1:1"
        [sparkplug]
        enabled = true
        group_id = "farm"
        edge_node_id = "gw-17"
        [[bus]]
        name = "plc"
        type = "modbus-tcp"
        host = "127.0.0.1"
        port = 1
    """
    for unit, name in enumerate(devices.split(), start=1):
        text += f"""
        [[device]]
        name = "{name}"
        bus = "plc"
        unit = {unit}
        interval = "1s"
          [[device.point]]
          name = "speed"
          table = "holding"
          address = 0
          type = "uint16"
          [[device.point]]
          name = "delta"
          table = "holding"
          address = 1
          type = "int16"
          writable = true
        """
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "site.toml"
    path.write_text(textwrap.dedent(text))
    config, _ = load_config(path, environ={})
    link = SparkplugUplink(config, RecordingBuffer(), write=write)  # type: ignore[arg-type]
    link._will()  # a connection: its node and bdSeq
    return link


def readings(count: int, device: str = "pump") -> list[Sample]:
    now = int(time.time() * 1000)
    return [Sample(i, device, now + i, {"speed": i}) for i in range(1, count + 1)]


def test_a_rebirth_asked_for_stops_ddata_at_once(tmp_path: Path) -> None:
    """Sparkplug 3.0 (rebirth-action-1): on a Rebirth request the node MUST stop sending DATA
    at once; the rest of the batch is sent again after the births, none acknowledged unsent."""

    async def scenario() -> tuple[list[str], RecordingBuffer]:
        link = linked(tmp_path)
        client = Recorder()
        await link._births(client)  # type: ignore[arg-type]
        rebirth = ReferencePayload()
        rebirth.metrics.add(name="Node Control/Rebirth", datatype=11, boolean_value=True)

        def host_asks(topic: str) -> None:
            if "DDATA" in topic:
                link._arrived("spBv1.0/farm/NCMD/gw-17", rebirth.SerializeToString())
                client.on_publish = None

        client.on_publish = host_asks
        await link._send(client, readings(20), backlog=False)  # type: ignore[arg-type]
        await link._between_rounds(client)  # type: ignore[arg-type]
        return client.kinds(), link.buffer  # type: ignore[return-value]

    kinds, buffer = asyncio.run(scenario())
    assert kinds == ["NBIRTH", "DBIRTH/pump", "DDATA/pump", "NBIRTH", "DBIRTH/pump"]
    assert buffer.acknowledged == [1]
    assert buffer.released == 1  # the 19 others go again, after the births


def refusing(asked: list[Any]) -> Any:
    """A write that records the value it is asked for, and refuses it."""

    async def write(device: str, point: str, value: Any, sent: int | None) -> dict[str, Any]:
        asked.append(value)
        return {"ok": False}

    return write


def dcmd(*metrics: dict[str, Any], timestamp: int | None = None) -> bytes:
    command = ReferencePayload()
    if timestamp is not None:
        command.timestamp = timestamp
    for metric in metrics:
        command.metrics.add(**metric)
    return bytes(command.SerializeToString())


@pytest.mark.parametrize(
    ("metric", "written"),
    [
        ({"name": "delta", "datatype": 2, "int_value": 2**32 - 5}, [-5]),
        ({"name": "delta", "int_value": 2**32 - 5}, [-5]),  # no datatype: the birth's
        ({"alias": 2, "int_value": 7}, [7]),
        ({"name": "delta", "datatype": 2, "int_value": 40000}, []),  # beyond Int16
        ({"name": "delta", "int_value": 40000}, []),
        ({"name": "delta", "datatype": 6, "int_value": 5}, []),  # UInt16: not its birth's
        ({"name": "delta", "datatype": 1, "int_value": 5}, []),  # Int8: neither
        ({"name": "nothing", "datatype": 2, "int_value": 5}, []),
        ({"alias": 99, "int_value": 5}, []),
        # a value in another field than its datatype's: never rounded or parsed into one
        ({"name": "delta", "datatype": 2, "double_value": 1.5}, []),
        ({"name": "delta", "datatype": 2, "float_value": 40000.0}, []),
        ({"name": "delta", "datatype": 2, "string_value": "7"}, []),
        ({"name": "delta", "datatype": 2, "boolean_value": True}, []),
        ({"name": "delta", "double_value": 3.0}, []),  # no datatype: still the birth's Int16
    ],
)
def test_a_dcmd_is_read_by_its_metrics_birth_and_never_as_another_number(
    tmp_path: Path, metric: dict[str, Any], written: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[Any] = []

    async def scenario() -> None:
        link = linked(tmp_path, write=refusing(asked))
        await link._births(Recorder())  # type: ignore[arg-type]
        link._arrived("spBv1.0/farm/DCMD/gw-17/pump", dcmd(metric))
        await asyncio.gather(*link._writes)

    asyncio.run(scenario())
    assert asked == written
    if not written:
        [line] = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
        assert "DCMD" in line
        assert "\n" not in line


@pytest.mark.parametrize(
    ("topic", "payload", "why"),
    [
        ("DCMD/gw-17/pump", b"\x12\x00" * 500_000, "more than 16384"),
        ("NCMD/gw-17", b"\x12\x00" * 500_000, "more than 16384"),
        ("DCMD/gw-17/pump", dcmd(*[{"name": "delta", "int_value": 1}] * 33), "33 metrics"),
        ("DCMD/gw-17/well", dcmd({"name": "delta", "int_value": 1}), "no such device"),
    ],
)
def test_a_command_beyond_the_bounds_is_refused_before_any_write(
    tmp_path: Path, topic: str, payload: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[Any] = []

    async def scenario() -> None:
        link = linked(tmp_path, write=refusing(asked))
        await link._births(Recorder())  # type: ignore[arg-type]
        link._arrived(f"spBv1.0/farm/{topic}", payload)
        await asyncio.gather(*link._writes)

    asyncio.run(scenario())
    assert asked == []
    [line] = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert why in line


def test_writes_in_flight_are_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """DCMDs faster than the bus answers: at most MAX_WRITES_PENDING writes wait; the next
    DCMD is refused whole, in one line, until they are answered."""

    async def scenario() -> int:
        answered = asyncio.Event()

        async def write(device: str, point: str, value: Any, sent: int | None) -> dict[str, Any]:
            await answered.wait()
            return {"ok": False}

        link = linked(tmp_path, write=write)
        await link._births(Recorder())  # type: ignore[arg-type]
        for _ in range(MAX_WRITES_PENDING // 32 + 1):
            link._arrived(
                "spBv1.0/farm/DCMD/gw-17/pump", dcmd(*[{"alias": 2, "int_value": 1}] * 32)
            )
        pending = len(link._writes)
        answered.set()
        await asyncio.gather(*link._writes)
        return pending

    assert asyncio.run(scenario()) == MAX_WRITES_PENDING
    assert sum("still being carried out" in r.getMessage() for r in caplog.records) == 1


def test_a_device_a_reload_removed_is_dead_for_the_host_and_its_readings_are_counted_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[list[str], RecordingBuffer]:
        link = linked(tmp_path, "pump well")
        client = Recorder()
        await link._births(client)  # type: ignore[arg-type]
        link.config = linked(tmp_path / "reloaded", "pump").config  # "well" removed
        await link._republish_meta()
        await link._between_rounds(client)  # type: ignore[arg-type]
        await link._send(client, readings(3, "well") + readings(1), backlog=True)  # type: ignore[arg-type]
        return client.kinds(), link.buffer  # type: ignore[return-value]

    kinds, buffer = asyncio.run(scenario())
    assert kinds == [
        "NBIRTH", "DBIRTH/pump", "DBIRTH/well",
        "DDEATH/well", "NBIRTH", "DBIRTH/pump",  # dead in the session that knew it, then gone
        "DDATA/pump",
    ]  # fmt: skip
    assert (buffer.discarded, buffer.acknowledged) == ([1, 2, 3], [1])
    assert sum("well is not in the configuration" in r.getMessage() for r in caplog.records) == 1


def test_a_dcmd_outside_a_session_or_to_a_device_not_born_is_refused(tmp_path: Path) -> None:
    asked: list[Any] = []

    async def scenario() -> None:
        link = linked(tmp_path, write=refusing(asked))
        command = dcmd({"alias": 2, "int_value": 1})
        link._arrived("spBv1.0/farm/DCMD/gw-17/pump", command)  # no birth yet
        link._unreachable = lambda: {"pump"}
        await link._births(Recorder())  # type: ignore[arg-type]
        link._arrived("spBv1.0/farm/DCMD/gw-17/pump", command)  # born: not the device
        await asyncio.gather(*link._writes)

    asyncio.run(scenario())
    assert asked == []


def test_retained_commands_are_dropped_and_a_retained_state_is_taken(tmp_path: Path) -> None:
    link = linked(tmp_path)
    assert not link._accepts("spBv1.0/farm/DCMD/gw-17/pump", retained=True)
    assert not link._accepts("spBv1.0/farm/NCMD/gw-17", retained=True)
    assert link._accepts("spBv1.0/farm/DCMD/gw-17/pump", retained=False)
    assert link._accepts("spBv1.0/STATE/scada", retained=True)
    assert not link._accepts("spBv1.0/farm/DCMD/STATE/pump", retained=True)  # a node "STATE"


def test_a_device_not_born_is_born_by_its_reading_and_killed_once_they_are_sent(
    tmp_path: Path,
) -> None:
    """A device that died during an outage: left out of the births, born for its readings
    (its DBIRTH carries its last values, stamped when they were read), killed (DDEATH) once
    its newest reading is sent, and not born again after: never an exception out of the
    sending, never a DBIRTH/DDEATH per batch."""
    history = readings(4)
    last = history[-1].ts

    async def scenario() -> tuple[list[str], list[Any]]:
        link = linked(tmp_path)
        link._current = lambda device: ({"speed": 4}, last)
        client = Recorder()
        link._unreachable = lambda: {"pump"}
        await link._births(client)  # type: ignore[arg-type]
        for batch in (history[:2], history[2:]):
            await link._send(client, batch, backlog=True)  # type: ignore[arg-type]
            await link._between_rounds(client)  # type: ignore[arg-type]
        await link._between_rounds(client)  # type: ignore[arg-type]
        return client.kinds(), client.sent

    kinds, sent = asyncio.run(scenario())
    assert kinds == [
        "NBIRTH", "DBIRTH/pump", "DDATA/pump", "DDATA/pump", "DDATA/pump", "DDATA/pump",
        "DDEATH/pump",
    ]  # fmt: skip
    birth = ReferencePayload.FromString(sent[1][1])
    assert {m.timestamp for m in birth.metrics} == {last}  # when its values were read


def test_the_ddeath_of_a_device_whose_last_reading_never_goes_waits_a_bounded_time(
    tmp_path: Path,
) -> None:
    async def scenario() -> list[str]:
        link = linked(tmp_path)
        link._current = lambda device: ({"speed": 4}, int(time.time() * 1000))  # never sent
        client = Recorder()
        await link._births(client)  # type: ignore[arg-type]
        link._unreachable = lambda: {"pump"}
        await link._between_rounds(client)  # type: ignore[arg-type]  # waits for it
        link._dying_since["pump"] -= MAX_DDEATH_DELAY
        await link._between_rounds(client)  # type: ignore[arg-type]
        return client.kinds()

    assert asyncio.run(scenario()) == ["NBIRTH", "DBIRTH/pump", "DDEATH/pump"]


def test_live_readings_are_not_starved_behind_a_backlog_that_is_held_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backlog goes first, but a backlog batch the disk cannot re-stamp (full) is held
    back: what is live in memory still goes."""
    import sqlite3

    import agent.store.buffer as buffer_module
    from agent.store.buffer import Buffer

    async def scenario() -> list[str]:
        link = linked(tmp_path)
        buffer = Buffer(tmp_path / "buffer.sqlite", 10_000_000, 60.0).open()
        link.buffer = buffer
        now = int(time.time() * 1000)
        for i in range(3):  # read before the clock could be trusted: re-stamped when sent
            buffer.add("pump", now - 10_000 + i, {"speed": i}, mono=1.0 + i, boot="old-boot")
        buffer.flush(force=True)  # on disk: the backlog
        for i in range(3):
            buffer.add("pump", now + i, {"speed": 100 + i})  # live, in memory

        def full(*_: Any) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(buffer_module, "_write_forms", full)
        client = Recorder()
        await link._births(client)  # type: ignore[arg-type]
        task = asyncio.create_task(link._send_until_stopped(client))  # type: ignore[arg-type]
        try:
            await until(lambda: client.kinds().count("DDATA/pump") >= 3, 30, "the live three")
        finally:
            link._stopping.set()
            link._wake.set()
            await asyncio.wait_for(task, 30)
            buffer.close()
        return client.kinds()

    assert asyncio.run(scenario()).count("DDATA/pump") == 3


def test_the_spread_wait_after_the_host_went_ends_at_new_settings_or_a_stop(
    tmp_path: Path,
) -> None:
    """After the primary host's offline the next connection waits a random time within
    ``reconnect_window`` (a whole site left at once); a reload's [mqtt] or a stop ends it."""

    async def spread(end: str) -> None:
        link = linked(tmp_path)
        link.mqtt = replace(link.mqtt, reconnect_window=3600.0)
        link._leave("as the primary host went offline", spread=True)
        waiting = asyncio.create_task(link._spread_if_asked())
        await asyncio.sleep(0)
        assert not waiting.done()
        if end == "reload":
            new = replace(link.config, mqtt=replace(link.config.mqtt, keepalive=7.0))
            await link.reconfigure(new)
        else:
            await link.stop()
        await asyncio.wait_for(waiting, 5)

    asyncio.run(spread("reload"))
    asyncio.run(spread("stop"))
