"""ModbusDriver against slaves whose answers go wrong on the wire: a stale transaction id, garbage,
noise, an answer dripping in a byte at a time. Real pymodbus slaves (``drivers.modbus.simulator``)
over Modbus TCP, RTU over TCP and RTU on a pseudo-terminal; a healthy slave on the same bus.

What must hold: the fault costs the faulty device its poll (a ``DeviceError``, counted), never the
connection, never the healthy device's next poll, and nothing reaches asyncio's exception handler
(which would log a traceback with a message no rate limit can group).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pymodbus.framer import FramerRTU

from agent.api import BusConfig, DeviceConfig
from agent.errors import DeviceError
from agent.testkit import run
from agent.testkit.modbus import BusKind
from agent.testkit.serial import SerialProxy
from drivers.modbus import ModbusDriver
from drivers.modbus.frames import skip_stale_bytes, skip_to_rtu_frame
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

TIMEOUT = 0.5  # seconds: not cut fine, as a healthy slave must answer within it under load
LEVEL = ModbusPoint("level", table="holding", address=0, type="uint16")
GOOD, BAD = 1, 2
KINDS: tuple[BusKind, ...] = ("tcp", "rtu-over-tcp", "rtu")


def device(unit: int) -> DeviceConfig:
    name = "good" if unit == GOOD else "bad"
    return DeviceConfig(name, "field", "modbus", 1.0, unit=unit, points=(LEVEL,))


def slaves() -> tuple[SimulatedSlave, SimulatedSlave]:
    good, bad = SimulatedSlave(GOOD, (LEVEL,)), SimulatedSlave(BAD, (LEVEL,))
    good.set_value("level", 11)
    bad.set_value("level", 22)
    return good, bad


@asynccontextmanager
async def field_bus(
    kind: BusKind, tmp_path: Path, *served: SimulatedSlave
) -> AsyncIterator[BusConfig]:
    """The slaves on a bus of ``kind``; the bus configuration that reaches them."""
    if kind == "rtu":
        async with (
            SerialProxy(tmp_path) as proxy,
            ModbusSimulator(served, serial_port=proxy.device_path),
        ):
            yield BusConfig(
                "field", "modbus-rtu", serial_port=str(proxy.agent_path), timeout=TIMEOUT
            )
        return
    async with ModbusSimulator(served, rtu=kind == "rtu-over-tcp") as sim:
        bus_type = "modbus-tcp" if kind == "tcp" else "modbus-rtu-over-tcp"
        yield BusConfig("field", bus_type, host="127.0.0.1", port=sim.port, timeout=TIMEOUT)


@pytest.fixture
def asyncio_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What reaches asyncio's logger (its exception handler's tracebacks), live."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    return caplog.records


def test_a_stale_transaction_id_costs_its_device_a_poll_not_the_connection(tmp_path: Path) -> None:
    async def body() -> None:
        good, bad = slaves()
        bad.wrong_tid = True
        async with field_bus("tcp", tmp_path, good, bad) as bus, ModbusDriver(bus) as driver:
            for _ in range(3):  # the first answers tid 1 with 65535: never 0, taken for any
                with pytest.raises(DeviceError, match=r"transaction id \d+ instead of \d+"):
                    await driver.read(device(BAD))
                assert (await driver.read(device(GOOD))).values == {"level": 11}
            bad.wrong_tid = False
            assert (await driver.read(device(BAD))).values == {"level": 22}
        assert driver.counters["bad"] == {"out_of_step": 3, "ok": 1}
        assert driver.counters["good"] == {"ok": 3}

    run(body(), timeout=10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["garbage", "noise"])
def test_garbage_is_dropped_and_the_next_device_answers(
    kind: BusKind, fault: str, tmp_path: Path, asyncio_errors: list[logging.LogRecord]
) -> None:
    async def body() -> None:
        good, bad = slaves()
        bad.random = random.Random(2024)
        setattr(bad, fault, True)
        async with field_bus(kind, tmp_path, good, bad) as bus, ModbusDriver(bus) as driver:
            for _ in range(3):  # three different garbles, the same at every run
                with pytest.raises(DeviceError):
                    await driver.read(device(BAD))
                assert (await driver.read(device(GOOD))).values == {"level": 11}
            setattr(bad, fault, False)
            assert (await driver.read(device(BAD))).values == {"level": 22}
        assert driver.counters["good"] == {"ok": 3}
        assert driver.counters["bad"]["ok"] == 1
        assert "bus" not in driver.counters["bad"]  # the connection held

    run(body(), timeout=20)
    assert not asyncio_errors, [r.getMessage() for r in asyncio_errors]


@pytest.mark.parametrize("kind", KINDS)
def test_a_well_framed_answer_that_does_not_parse_is_garbled(
    kind: BusKind, tmp_path: Path, asyncio_errors: list[logging.LogRecord]
) -> None:
    """pymodbus raises such a frame out of its receive callback: asyncio would log a traceback
    and close the connection."""

    async def body() -> None:
        good, bad = slaves()
        bad.garbage = True
        bad.random = random.Random(2)  # function code 0x73: one pymodbus does not know
        async with field_bus(kind, tmp_path, good, bad) as bus, ModbusDriver(bus) as driver:
            with pytest.raises(DeviceError) as caught:
                await driver.read(device(BAD))
            assert (await driver.read(device(GOOD))).values == {"level": 11}
        assert driver.counters["bad"] == {"garbled": 1}, caught.value

    run(body(), timeout=10)
    assert not asyncio_errors, [r.getMessage() for r in asyncio_errors]


@pytest.mark.parametrize("kind", KINDS)
def test_the_tail_of_a_late_dripping_answer_does_not_cost_the_next_device(
    kind: BusKind, tmp_path: Path
) -> None:
    async def body() -> None:
        good, bad = slaves()
        bad.drip = TIMEOUT / 4  # 7 to 11 bytes: 1.5 to 2.5 timeouts
        good.slow = TIMEOUT / 2.5  # so that some of the tail (a byte a quarter apart) comes first
        async with field_bus(kind, tmp_path, good, bad) as bus, ModbusDriver(bus) as driver:
            with pytest.raises(DeviceError, match="truncated answer"):
                await driver.read(device(BAD))
            assert (await driver.read(device(GOOD))).values == {"level": 11}
        assert driver.counters["bad"] == {"garbled": 1}
        assert driver.counters["good"] == {"ok": 1}

    run(body(), timeout=10)


@pytest.mark.parametrize("kind", KINDS)
def test_an_answer_dripping_in_within_the_timeout_is_taken(kind: BusKind, tmp_path: Path) -> None:
    async def body() -> None:
        good, bad = slaves()
        bad.drip = 0.008  # at most 11 bytes: 80 ms
        async with field_bus(kind, tmp_path, good, bad) as bus, ModbusDriver(bus) as driver:
            assert (await driver.read(device(BAD))).values == {"level": 22}

    run(body(), timeout=10)


# --- what pymodbus is given to read -------------------------------------------------------------


def mbap(tid: int, unit: int = 1, pdu: bytes = b"\x03\x02\x00\x0b") -> bytes:
    return (
        tid.to_bytes(2, "big")
        + b"\x00\x00"
        + (len(pdu) + 1).to_bytes(2, "big")
        + bytes([unit])
        + pdu
    )


def rtu(unit: int, pdu: bytes = b"\x03\x02\x00\x0b") -> bytes:
    body = bytes([unit]) + pdu
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


def test_stale_bytes_in_front_of_a_tcp_answer_are_skipped() -> None:
    ours, stale = mbap(7), mbap(6)
    assert skip_stale_bytes(ours, (7,)) == ours
    assert skip_stale_bytes(ours[:1], (7,)) == ours[:1]  # too short to tell: left to pymodbus
    assert skip_stale_bytes(stale[5:] + ours, (7,)) == ours  # the tail of a late answer
    assert skip_stale_bytes(stale[5:] + ours[:4], (7,)) == ours[:4]  # ours starts
    assert (
        skip_stale_bytes(stale + ours[:3], (7,)) == stale + ours[:3]
    )  # pymodbus skips a whole one
    assert skip_stale_bytes(stale[5:], (7,)) == stale[5:]  # nothing of ours: pymodbus says why
    # Pipelined: to the first answer of any request under way, whichever it is.
    other = mbap(8)
    assert skip_stale_bytes(stale[5:] + other + ours, (7, 8)) == other + ours
    assert skip_stale_bytes(other + ours, (7, 8)) == other + ours


def test_an_rtu_buffer_is_read_from_the_first_whole_frame_of_the_unit() -> None:
    ours, other = rtu(1), rtu(2)
    assert skip_to_rtu_frame(ours, 1) == ours
    assert skip_to_rtu_frame(other + ours, 1) == ours  # a late answer of another unit first
    assert skip_to_rtu_frame(other[3:] + ours + b"\x00", 1) == ours + b"\x00"  # a tail first
    assert skip_to_rtu_frame(other + ours[:4], 1) == b""  # wait for the rest of ours
    assert skip_to_rtu_frame(rtu(1, b"\x83\x02"), 1) == rtu(1, b"\x83\x02")  # an exception
    spoilt = ours[:-1] + bytes([ours[-1] ^ 0xFF])
    assert skip_to_rtu_frame(spoilt, 1) == b""  # a bad CRC: never handed on, the request times out
    assert skip_to_rtu_frame(other, 0) == other  # a broadcast is nobody's answer
