"""Pipelining on Modbus TCP (``pipeline = N`` on a bus): several requests under way on one
connection, sent in one write, each answer matched to its request by transaction id.

Against a server of the test's own (answers in any order, or some never) and against the
simulator's real pymodbus slaves; the scheduler's side (polls of the devices due together) is in
tests/agent/test_scheduler.py, and the agent's with slave faults in test_modbus_slave_faults.py.
What must hold: each request gets its own answer or its own timeout, whatever the others get;
nothing of one device is filed under another; a bus that cannot pipeline refuses the key.
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.api import DeviceConfig, DeviceError, Poll
from agent.config import load_config
from agent.errors import ConfigError
from agent.testkit import run
from drivers.modbus import ModbusDriver
from drivers.modbus.mbap import Garbled, MbapClient, NoAnswer, read_request
from drivers.modbus.schema import ModbusPoint, modbus_bus
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

LEVEL = ModbusPoint("level", table="holding", address=0, type="uint16")
TIMEOUT = 0.5  # seconds: a healthy slave answers well within it, under load too
NOT_ANSWERED = rf"no response within {TIMEOUT:g} s|an answer carried transaction id \d+ instead"
REQUEST_SIZE = 12  # an MBAP read request: 7 bytes of header, 5 of PDU

#: Answers a batch of request frames (all that came in one read): the bytes to send back.
Batch = Callable[[list[bytes]], bytes]


@asynccontextmanager
async def server(answer: Batch) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server on 127.0.0.1 answering each read's requests at once; its port, and how
    many requests each read brought."""
    reads: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                frames = [data[i : i + REQUEST_SIZE] for i in range(0, len(data), REQUEST_SIZE)]
                reads.append(len(frames))
                writer.write(answer(frames))
        except ConnectionError:
            pass
        writer.close()

    listening = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield listening.sockets[0].getsockname()[1], reads
    finally:
        listening.close()


def echo_address(frame: bytes) -> bytes:
    """The answer to a read of one register: the register holds the address that was read."""
    return frame[:4] + b"\x00\x05" + frame[6:7] + b"\x03\x02" + frame[8:10]


async def read_at(modbus: MbapClient, address: int, timeout: float = TIMEOUT) -> int:
    answer = await modbus.transact(1, read_request(3, address, 1), timeout)
    assert answer is not None
    return int(answer.registers[0])


def test_requests_asked_together_go_out_in_one_write_and_take_their_own_answers() -> None:
    """The server answers the batch backwards: each request still gets its own answer."""

    async def body() -> None:
        async with server(lambda frames: b"".join(map(echo_address, reversed(frames)))) as (
            port,
            reads,
        ):
            modbus = MbapClient(lambda sending, data: data, lambda up: None, window=4)
            await modbus.connect("127.0.0.1", port, 1.0)
            try:
                for _ in range(3):
                    got = await asyncio.gather(*(read_at(modbus, a) for a in (10, 20, 30, 40)))
                    assert got == [10, 20, 30, 40]
            finally:
                modbus.close()
            assert reads == [4, 4, 4]

    run(body(), timeout=10)


def test_the_longest_answers_of_a_whole_window_can_come_in_one_read() -> None:
    """Ten reads of 125 registers answered in one write: 2.6 kB, no flood."""

    def answer(frames: list[bytes]) -> bytes:
        return b"".join(f[:4] + b"\x00\xfd" + f[6:7] + b"\x03\xfa" + f[8:10] * 125 for f in frames)

    async def body() -> None:
        async with server(answer) as (port, _):
            modbus = MbapClient(lambda sending, data: data, lambda up: None, window=10)
            await modbus.connect("127.0.0.1", port, 1.0)
            try:
                requests = (read_request(3, a, 125) for a in range(10))
                got = await asyncio.gather(*(modbus.transact(1, r, TIMEOUT) for r in requests))
            finally:
                modbus.close()
        assert [list(a.registers) if a else None for a in got] == [[a] * 125 for a in range(10)]

    run(body(), timeout=10)


def test_an_unanswered_request_times_out_alone_and_the_next_batch_is_whole() -> None:
    """The server never answers address 20 (and answers the rest late, past its turn): that
    request times out at its own deadline, the others are answered, the connection stays."""

    def answer(frames: list[bytes]) -> bytes:
        return b"".join(echo_address(f) for f in frames if f[8:10] != b"\x00\x14")

    async def body() -> None:
        async with server(answer) as (port, _):
            modbus = MbapClient(lambda sending, data: data, lambda up: None, window=3)
            await modbus.connect("127.0.0.1", port, 1.0)
            try:
                for _ in range(3):
                    got = await asyncio.gather(
                        read_at(modbus, 10),
                        read_at(modbus, 20, 0.1),
                        read_at(modbus, 30),
                        return_exceptions=True,
                    )
                    assert (got[0], got[2]) == (10, 30), got
                    assert isinstance(got[1], NoAnswer), got
                assert modbus.connected
            finally:
                modbus.close()

    run(body(), timeout=10)


def test_a_whole_pipeline_unanswered_is_one_silence_and_the_fifth_closes_the_connection() -> None:
    """A server that stalls leaves every request under way unanswered: that counts as one
    request without an answer (not four), so a half-open link still closes at the fifth."""

    async def body() -> None:
        async with server(lambda frames: b"") as (port, _):
            modbus = MbapClient(lambda sending, data: data, lambda up: None, window=4)
            await modbus.connect("127.0.0.1", port, 1.0)
            try:
                for batch in range(1, 6):
                    got = await asyncio.gather(
                        *(read_at(modbus, a, 0.05) for a in range(4)), return_exceptions=True
                    )
                    assert all(isinstance(g, NoAnswer) for g in got), got
                    assert modbus.connected == (batch < 5), batch
            finally:
                modbus.close()

    run(body(), timeout=10)


def test_answers_of_other_units_or_stale_ids_are_not_taken_for_a_request_under_way() -> None:
    """Before each real answer: the same transaction id from another unit, and a stale id."""

    def answer(frames: list[bytes]) -> bytes:
        out = b""
        for frame in frames:
            stale = (int.from_bytes(frame[:2], "big") + 100).to_bytes(2, "big")
            wrong_unit = frame[:6] + b"\x09" + frame[7:]
            out += echo_address(wrong_unit) + echo_address(stale + frame[2:]) + echo_address(frame)
        return out

    async def body() -> None:
        async with server(answer) as (port, _):
            modbus = MbapClient(lambda sending, data: data, lambda up: None, window=3)
            await modbus.connect("127.0.0.1", port, 1.0)
            try:
                got = await asyncio.gather(*(read_at(modbus, a) for a in (1, 2, 3)))
                assert got == [1, 2, 3]
            finally:
                modbus.close()

    run(body(), timeout=10)


def answer_of(frame: bytes, value: int = 7, tid: bytes | None = None) -> bytes:
    """The answer ``value`` to a read of one register in ``frame``, carrying ``tid``."""
    head = frame[:2] if tid is None else tid
    return head + b"\x00\x00\x00\x05" + frame[6:7] + b"\x03\x02" + value.to_bytes(2, "big")


def unit_of(frame: bytes) -> int:
    return frame[6]


async def ask_units(answer: Batch, *units: int) -> list[Any]:
    """One read of register 0 from each of ``units`` at once, answered by ``answer``."""
    async with server(answer) as (port, _):
        modbus = MbapClient(lambda sending, data: data, lambda up: None, window=len(units))
        await modbus.connect("127.0.0.1", port, 1.0)
        try:
            requests = (modbus.transact(u, read_request(3, 0, 1), TIMEOUT) for u in units)
            return await asyncio.gather(*requests, return_exceptions=True)
        finally:
            modbus.close()


def test_an_exception_whose_length_leaves_out_its_code_is_taken_with_an_answer_behind_it() -> None:
    """pymodbus's leniency for a length of 2 (unit, function) holds when the next answer
    follows in the same read."""

    def answer(frames: list[bytes]) -> bytes:
        short = b"\x00\x00\x00\x02" + frames[0][6:7] + b"\x83\x02"
        return frames[0][:2] + short + answer_of(frames[1])

    got = run(ask_units(answer, 1, 2), timeout=10)
    assert [(a.function_code, a.exception_code) for a in got[:1]] == [(0x83, 2)], got
    assert list(got[1].registers) == [7], got


def test_an_answer_shorter_than_it_says_takes_nothing_of_the_next_answer() -> None:
    """Unit 1's answer lacks its last byte: it must not take unit 2's first byte as its own
    (a wrong value, published) nor cost unit 2 its answer."""

    def answer(frames: list[bytes]) -> bytes:
        return b"".join(
            answer_of(f, 0x1234)[:-1] if unit_of(f) == 1 else answer_of(f) for f in frames
        )

    got = run(ask_units(answer, 1, 2), timeout=10)
    assert isinstance(got[0], (NoAnswer, Garbled)), got
    assert list(got[1].registers) == [7], got


def test_an_answer_whose_length_field_lies_costs_only_its_own_request() -> None:
    """Unit 1's length field says two bytes more than its PDU: pipelined, the PDU says where
    it ends, the request is refused as garbled, the next answer is read whole."""

    def answer(frames: list[bytes]) -> bytes:
        lying = answer_of(frames[0])
        lying = lying[:4] + b"\x00\x07" + lying[6:]
        return lying + answer_of(frames[1])

    got = run(ask_units(answer, 1, 2), timeout=10)
    assert isinstance(got[0], Garbled), got
    assert list(got[1].registers) == [7], got


def test_a_request_that_cannot_be_framed_leaves_nothing_under_way() -> None:
    async def body() -> None:
        async with server(lambda frames: b"") as (port, _):
            modbus = MbapClient(lambda sending, data: data, lambda up: None, window=2)
            await modbus.connect("127.0.0.1", port, 1.0)
            try:
                with pytest.raises(struct.error):
                    await modbus.transact(256, read_request(3, 0, 1), TIMEOUT)
                assert not modbus._pending  # noqa: SLF001 - what a failed send leaves
            finally:
                modbus.close()

    run(body(), timeout=10)


# --- the driver, against the simulator's slaves


def level_slaves(count: int) -> list[SimulatedSlave]:
    slaves = [SimulatedSlave(unit, (LEVEL,)) for unit in range(1, count + 1)]
    for slave in slaves:
        slave.set_value("level", 100 + slave.unit)
    return slaves


def devices(count: int) -> list[DeviceConfig]:
    return [
        DeviceConfig(f"unit{u}", "field", "modbus", 1.0, unit=u, points=(LEVEL,))
        for u in range(1, count + 1)
    ]


async def read_all(driver: ModbusDriver, wanted: list[DeviceConfig]) -> list[Poll | BaseException]:
    return await asyncio.gather(*(driver.read(d) for d in wanted), return_exceptions=True)


@pytest.mark.parametrize("fault", ["dead", "slow"])
def test_a_faulty_unit_in_the_pipeline_costs_only_its_own_poll(fault: str) -> None:
    """Five units read at once, unit 3 dead or answering past the timeout (its late answer
    lands in the next batch): the other four read every time; unit 3's frames are its own."""

    async def body() -> None:
        slaves = level_slaves(5)
        if fault == "dead":
            slaves[2].dead = True
        else:
            slaves[2].slow = 1.5 * TIMEOUT
        async with ModbusSimulator(slaves) as sim:
            bus = modbus_bus(
                "field", "modbus-tcp", host="127.0.0.1", port=sim.port, timeout=TIMEOUT, pipeline=5
            )
            async with ModbusDriver(bus) as driver:
                assert driver.polls_at_once == 5
                for _ in range(3):
                    polls = await read_all(driver, devices(5))
                    for unit, poll in enumerate(polls, start=1):
                        if unit == 3:  # a late answer, in the next batch: not taken either
                            assert isinstance(poll, DeviceError), poll
                            assert re.search(NOT_ANSWERED, str(poll)), poll
                        else:
                            assert isinstance(poll, Poll), (unit, poll)
                            assert poll.values == {"level": 100 + unit}
                frames = driver.frames("unit3")
            assert sum(driver.counters["unit3"].values()) == 3
            assert set(driver.counters["unit3"]) <= {"timeout", "out_of_step"}
            assert all(driver.counters[f"unit{u}"] == {"ok": 3} for u in (1, 2, 4, 5))
            sent = [line for line in frames if line.startswith("sent")]
            assert len(sent) == 3
            assert all(line.split()[7] == "03" for line in sent), frames  # unit 3's requests

    run(body(), timeout=20)


def test_two_devices_of_one_unit_never_take_each_others_answers() -> None:
    """One meter read as two devices (the configuration takes it), answering with the previous
    request's transaction id: pipelined, the requests to one unit go one at a time, so the
    slow device's answer is never taken as the fast one's (both fail, as one at a time)."""
    power = ModbusPoint("power", table="holding", address=0, type="uint16")
    energy = ModbusPoint("energy", table="holding", address=100, type="uint16")

    async def body() -> None:
        slave = SimulatedSlave(1, (power, energy))
        slave.set_value("power", 11)
        slave.set_value("energy", 22)
        slave.wrong_tid = True
        fast = DeviceConfig("fast", "field", "modbus", 1.0, unit=1, points=(power,))
        slow = DeviceConfig("slow", "field", "modbus", 10.0, unit=1, points=(energy,))
        async with ModbusSimulator([slave]) as sim:
            bus = modbus_bus(
                "field", "modbus-tcp", host="127.0.0.1", port=sim.port, timeout=0.2, pipeline=2
            )
            async with ModbusDriver(bus) as driver:
                for _ in range(2):
                    polls = await read_all(driver, [fast, slow])
                    assert all(isinstance(p, DeviceError) for p in polls), polls

    run(body(), timeout=20)


def test_a_dead_unit_beside_a_gateway_answering_with_id_0_is_silent_not_blamed() -> None:
    """Unit 2 answers with transaction id 0 (some gateways do), unit 1 is dead: unit 1 is a
    timeout, and unit 2's answer is in unit 2's frames, not in unit 1's."""

    def answer(frames: list[bytes]) -> bytes:
        return b"".join(answer_of(f, tid=b"\x00\x00") for f in frames if unit_of(f) == 2)

    async def body() -> None:
        async with server(answer) as (port, _):
            bus = modbus_bus(
                "field", "modbus-tcp", host="127.0.0.1", port=port, timeout=0.2, pipeline=2
            )
            async with ModbusDriver(bus) as driver:
                polls = await read_all(driver, devices(2))
                assert isinstance(polls[0], DeviceError), polls
                assert isinstance(polls[1], Poll), polls
                assert driver.counters["unit1"] == {"timeout": 1}
                assert not [f for f in driver.frames("unit1") if f.startswith("received")]
                assert [f for f in driver.frames("unit2") if f.startswith("received")]

    run(body(), timeout=10)


def test_a_pipelined_poll_of_several_requests_per_device_reads_them_all() -> None:
    """Devices whose points need two reads each (a gap too wide to merge): the requests of a
    device go one after the other, the devices' at once."""
    far = ModbusPoint("far", table="holding", address=500, type="uint16")

    async def body() -> None:
        slaves = [SimulatedSlave(unit, (LEVEL, far)) for unit in (1, 2, 3)]
        for slave in slaves:
            slave.set_value("level", slave.unit)
            slave.set_value("far", 10 * slave.unit)
        wanted = [
            DeviceConfig(f"unit{u}", "field", "modbus", 1.0, unit=u, points=(LEVEL, far))
            for u in (1, 2, 3)
        ]
        async with ModbusSimulator(slaves) as sim:
            bus = modbus_bus(
                "field", "modbus-tcp", host="127.0.0.1", port=sim.port, timeout=TIMEOUT, pipeline=3
            )
            async with ModbusDriver(bus) as driver:
                polls = await read_all(driver, wanted)
        assert [p.values for p in polls if isinstance(p, Poll)] == [
            {"level": u, "far": 10 * u} for u in (1, 2, 3)
        ]

    run(body(), timeout=20)


# --- the configuration


HEAD = """
[agent]
id = "gw"
data_dir = "data"
"""


def load(tmp_path: Path, bus: str) -> list[str]:
    path = tmp_path / "config.toml"
    path.write_text(
        HEAD
        + f"""
[[bus]]
name = "field"
{bus}
[[device]]
name = "meter"
bus = "field"
unit = 1
interval = "1s"
  [[device.point]]
  name = "level"
  address = 0
""",
        encoding="utf-8",
    )
    try:
        load_config(path, {})
    except ConfigError as exc:
        return [f"{p.path}: {p.message}" for p in exc.problems if not p.warning]
    return []


def test_pipeline_is_taken_on_modbus_tcp_and_refused_where_it_cannot_be_kept(
    tmp_path: Path,
) -> None:
    assert load(tmp_path, 'type = "modbus-tcp"\nhost = "10.0.0.5"\npipeline = 8') == []
    rtu = load(tmp_path, 'type = "modbus-rtu"\nport = "/dev/ttyUSB0"\npipeline = 2')
    assert rtu == [
        "bus.field.pipeline: needs Modbus TCP's transaction ids: a modbus-rtu bus takes one "
        "request at a time (remove it)"
    ]
    over_tcp = load(tmp_path, 'type = "modbus-rtu-over-tcp"\nhost = "10.0.0.5"\npipeline = 2')
    assert over_tcp == [rtu[0].replace("modbus-rtu", "modbus-rtu-over-tcp")]
    gap = load(
        tmp_path, 'type = "modbus-tcp"\nhost = "10.0.0.5"\npipeline = 2\nrequest_gap = "5ms"'
    )
    assert gap == [
        "bus.field.pipeline: keeps requests under way at once: request_gap cannot be kept with it"
    ]
    too_many = load(tmp_path, 'type = "modbus-tcp"\nhost = "10.0.0.5"\npipeline = 33')
    assert too_many[0] == "bus.field.pipeline: 33 is out of range 1..32", too_many
    assert load(tmp_path, 'type = "modbus-rtu"\nport = "/dev/ttyUSB0"\npipeline = 1') == []
