"""ModbusDriver against a real pymodbus server (ModbusSimulator) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest

from agent.api import BusConfig, DeviceConfig, PointConfig
from agent.errors import BusError, DeviceError
from agent.registry import load_driver
from drivers.modbus import ModbusDriver
from drivers.modbus.plan import Request, plan_requests
from drivers.modbus.schema import MAX_REGISTERS, ModbusPoint, modbus_bus
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

TIMEOUT = 0.5  # the bus timeout: short, since several tests wait for it once

POINTS = (
    ModbusPoint("voltage", table="holding", address=0, type="float32"),
    ModbusPoint("current", table="holding", address=2, type="float32"),
    ModbusPoint("serial", table="holding", address=10, type="string", length=8),
    ModbusPoint("energy", table="input", address=0, type="uint32", order="CDAB"),
    ModbusPoint("temperature", table="input", address=2, type="int16", scale=0.1),
    ModbusPoint("relay", table="coil", address=0, type="bool", writable=True),
    ModbusPoint("alarm", table="coil", address=1, type="bool"),
    ModbusPoint("door", table="discrete", address=5, type="bool"),
)
VALUES = {
    "voltage": 230.5,
    "current": 1.25,
    "serial": "SN-0042",
    "energy": 123456,
    "temperature": -12.5,
    "relay": True,
    "alarm": False,
    "door": True,
}


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async test body; a hang fails after 20 s instead of blocking the suite."""
    asyncio.run(asyncio.wait_for(body(), timeout=20))


def device(
    unit: int = 1, points: tuple[PointConfig, ...] = POINTS, name: str = "meter"
) -> DeviceConfig:
    return DeviceConfig(
        name=name, bus="field", driver="modbus", interval=1.0, unit=unit, points=points
    )


def bus(port: int, timeout: float = TIMEOUT, host: str = "127.0.0.1") -> BusConfig:
    # no merging across holes here: tests/drivers/test_modbus_plan.py covers that
    return modbus_bus(
        name="field", type="modbus-tcp", host=host, port=port, timeout=timeout, merge_gap=0
    )


def slave(
    unit: int = 1, points: tuple[ModbusPoint, ...] = POINTS, **values: object
) -> SimulatedSlave:
    simulated = SimulatedSlave(unit, points)
    for name, value in {**VALUES, **values}.items():
        if name in simulated.points:
            simulated.set_value(name, value)  # type: ignore[arg-type]
    return simulated


# --- planning ----------------------------------------------------------------------------------


def test_plan_merges_touching_points_per_table() -> None:
    plan = plan_requests(POINTS)
    assert [(r.table, r.address, r.count, [p.name for p in r.points]) for r in plan] == [
        ("holding", 0, 4, ["voltage", "current"]),
        ("holding", 10, 4, ["serial"]),  # a gap is never bridged
        ("input", 0, 3, ["energy", "temperature"]),
        ("coil", 0, 2, ["relay", "alarm"]),
        ("discrete", 5, 1, ["door"]),
    ]


def test_plan_merges_overlapping_points() -> None:
    word = ModbusPoint("status", table="holding", address=7, type="uint16")
    flag = ModbusPoint("running", table="holding", address=7, type="bool")
    pair = ModbusPoint("total", table="holding", address=6, type="uint32")
    assert plan_requests([word, flag, pair]) == [Request("holding", 6, 2, (pair, flag, word))]


def test_plan_respects_the_protocol_maximum() -> None:
    first = ModbusPoint("first", table="holding", address=0, type="float32")
    last = ModbusPoint(
        "last", table="holding", address=MAX_REGISTERS - 2, type="float32"
    )  # ends exactly at 125
    beyond = ModbusPoint("beyond", table="holding", address=MAX_REGISTERS, type="uint16")
    between = [
        ModbusPoint(f"r{a}", table="holding", address=a, type="uint16")
        for a in range(2, MAX_REGISTERS - 2)
    ]
    plan = plan_requests([first, last, beyond, *between])
    assert [(r.address, r.count) for r in plan] == [(0, MAX_REGISTERS), (MAX_REGISTERS, 1)]
    bits = [ModbusPoint(f"c{a}", table="coil", address=a, type="bool") for a in range(2001)]
    assert [(r.address, r.count) for r in plan_requests(bits)] == [(0, 2000), (2000, 1)]


def test_describe_lists_the_requests() -> None:
    driver = ModbusDriver(bus(502))
    assert driver.describe(device()) == [
        "holding 0-3 (4 registers): voltage, current",
        "holding 10-13 (4 registers): serial",
        "input 0-2 (3 registers): energy, temperature",
        "coil 0-1 (2 bits): relay, alarm",
        "discrete 5 (1 bit): door",
    ]


# --- reading -----------------------------------------------------------------------------------


def test_reads_all_four_tables_with_merged_requests() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(bus(sim.port)) as driver:
            poll = await driver.read(device())
        assert poll.errors == ()
        assert poll.values == VALUES
        assert isinstance(poll.values["energy"], int)
        assert simulated.requests == 5  # one per planned request: the merging really happened

    run(body)


def test_an_undefined_address_costs_only_its_point() -> None:
    async def body() -> None:
        without_serial = tuple(p for p in POINTS if p.name != "serial")
        simulated = slave(points=without_serial)
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(bus(sim.port)) as driver:
            poll = await driver.read(device())
        assert poll.values == {k: v for k, v in VALUES.items() if k != "serial"}
        assert poll.missing == ("serial",)  # the device lacks it: not an error
        assert poll.errors == ()

    run(body)


def test_nothing_read_raises_device_error_with_every_reason() -> None:
    async def body() -> None:
        elsewhere = (ModbusPoint("other", table="holding", address=500, type="uint16"),)
        simulated = SimulatedSlave(1, elsewhere)
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(bus(sim.port)) as driver:
            with pytest.raises(DeviceError) as caught:
                await driver.read(device())
        message = str(caught.value)
        assert message.startswith("device meter: unit 1 refuses every point asked for (")
        for name in {p.name for p in POINTS}:
            assert name in message
        assert message.endswith("check the unit id and the register map")

    run(body)


def test_a_dead_unit_raises_device_error_within_the_timeout() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(bus(sim.port)) as driver:
            simulated.dead = True
            started = time.monotonic()
            with pytest.raises(DeviceError) as caught:
                await driver.read(device())
            # One timeout, not one per request: the rest of the poll is skipped.
            assert time.monotonic() - started < 2 * TIMEOUT
            assert str(caught.value) == (
                "bus field, device meter (unit 1): holding 0-3: no response within 0.5 s; "
                "device meter: 4 more request(s) not sent"
            )
            simulated.dead = False
            assert (await driver.read(device())).values == VALUES  # the connection survived

    run(body)


def test_the_connection_is_dropped_after_four_unanswered_requests() -> None:
    async def body() -> None:
        lone = (ModbusPoint("status", table="holding", address=0, type="uint16"),)
        simulated = slave(points=lone)
        simulated.dead = True
        async with ModbusSimulator([simulated]) as sim:
            driver = ModbusDriver(bus(sim.port, timeout=0.1))  # five timeouts to sit through
            async with driver:
                for _ in range(4):
                    with pytest.raises(DeviceError):
                        await driver.read(device(points=lone))
                with pytest.raises(BusError, match="lost: no response while reading device meter"):
                    await driver.read(device(points=lone))

    run(body)


def test_no_response_midway_keeps_what_was_read() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(bus(sim.port)) as driver:
            # Kill the slave while it answers its first request: the rest of the poll times out.
            original = simulated.registers

            def die_after_first(*args: Any) -> Any:
                simulated.dead = True
                return original(*args)

            simulated.registers = die_after_first  # type: ignore[method-assign, assignment]
            poll = await driver.read(device())
        assert poll.values == {"voltage": 230.5, "current": 1.25}
        assert poll.errors == (
            "bus field, device meter (unit 1): holding 10-13: no response within 0.5 s",
            "device meter: 3 more request(s) not sent",
        )

    run(body)


def test_a_request_pymodbus_cannot_send_costs_only_itself() -> None:
    async def body() -> None:
        # validate() reports such a point; a poll must survive it all the same.
        huge = ModbusPoint(
            "label", table="holding", address=100, type="string", length=2 * MAX_REGISTERS + 2
        )
        async with ModbusSimulator([slave()]) as sim, ModbusDriver(bus(sim.port)) as driver:
            poll = await driver.read(device(points=(*POINTS, huge)))
        assert poll.values == VALUES
        (error,) = poll.errors
        assert error.startswith(
            "bus field, device meter (unit 1): holding 100-225: cannot be sent: "
        )

    run(body)


def test_unit_ids_are_honoured() -> None:
    async def body() -> None:
        one, two = slave(1, voltage=230.0), slave(2, voltage=115.0)
        async with ModbusSimulator([one, two]) as sim, ModbusDriver(bus(sim.port)) as driver:
            first = await driver.read(device(1))
            second = await driver.read(device(2, name="other"))
        assert (first.values["voltage"], second.values["voltage"]) == (230.0, 115.0)
        assert one.requests == two.requests == 5

    run(body)


def test_a_stopped_server_raises_bus_error() -> None:
    async def body() -> None:
        async with ModbusSimulator([slave()]) as sim, ModbusDriver(bus(sim.port)) as driver:
            assert (await driver.read(device())).values == VALUES
            await sim.__aexit__(None, None, None)  # stopping twice is harmless
            # Whether or not the client has noticed the close yet, the answer is BusError.
            with pytest.raises(BusError, match=r"bus field: connection to 127\.0\.0\.1:\d+ lost"):
                await driver.read(device())

    run(body)


def test_connecting_to_nothing_raises_bus_error() -> None:
    async def body() -> None:
        async with ModbusSimulator([]) as sim:
            port = sim.port  # free again once the simulator has stopped
        with pytest.raises(BusError, match=f"bus field: cannot connect to 127.0.0.1:{port}"):
            async with ModbusDriver(bus(port)):
                pass

    run(body)


def test_reading_before_connecting_raises_bus_error() -> None:
    async def body() -> None:
        with pytest.raises(BusError, match="not connected"):
            await ModbusDriver(bus(502)).read(device())

    run(body)


def test_cancellation_is_never_swallowed() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim:
            driver = ModbusDriver(bus(sim.port, timeout=5.0))  # a timeout the test never waits for
            async with driver:
                simulated.dead = True
                # wait_for cancels the read; had the driver swallowed the CancelledError, the
                # DeviceError or Poll it produced instead would come out here.
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(driver.read(device()), timeout=0.1)
                simulated.dead = False
                assert (await driver.read(device())).values == VALUES

    run(body)


def test_exit_never_raises() -> None:
    async def body() -> None:
        driver = ModbusDriver(bus(502))
        await driver.__aexit__(None, None, None)  # never entered
        async with ModbusSimulator([slave()]) as sim:
            async with ModbusDriver(bus(sim.port)) as driver:
                pass
            await driver.__aexit__(None, None, None)  # twice

    run(body)


# --- validation and registration ---------------------------------------------------------------


def test_validate_accepts_a_good_configuration() -> None:
    assert ModbusDriver.validate(bus(502), [device(), device(247, name="last")]) == []


def test_validate_reports_what_the_loader_cannot_know() -> None:
    problems = ModbusDriver.validate(replace(bus(502), host=""), [device(248, name="m")])
    assert problems == [
        ("bus.field.host", "is required for a modbus-tcp bus"),
        ("device.m.unit", "248 is out of range 0..247"),
    ]


def test_the_entry_point_finds_the_driver() -> None:
    assert load_driver("modbus") is ModbusDriver


def test_a_connection_dropped_during_a_request_raises_bus_error_at_once() -> None:
    async def body() -> None:
        simulated = slave()
        simulated.dead = True
        async with ModbusSimulator([simulated]) as sim:
            driver = ModbusDriver(bus(sim.port, timeout=5.0))  # a timeout the test never waits for
            async with driver:
                reading = asyncio.create_task(driver.read(device()))
                await asyncio.wait_for(sim.received.wait(), 5)
                await sim.__aexit__(None, None, None)
                with pytest.raises(BusError) as caught:
                    await asyncio.wait_for(reading, 2.0)
        assert str(caught.value) == (
            f"bus field: connection to 127.0.0.1:{sim.port} lost: the link dropped while reading "
            "device meter (unit 1): holding 0-3"
        )
        assert driver.counters["meter"] == {"bus": 1}

    run(body)
