"""A device that lacks some registers inside a block it otherwise serves (reserved registers,
an option not fitted): the refused read is cut down until the lacking registers are isolated,
the points around them are read from the first poll on, what was learned survives reconnects
and restarts and is asked again after a while, and the device is ``degraded``, not failing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from agent.api import DeviceConfig, DeviceError, DriverContext, Poll
from agent.clock import Clock
from agent.testkit import run
from agent.testkit.modbus import ModbusBus
from agent.testkit.runner import AgentRunner
from drivers.modbus import ModbusDriver
from drivers.modbus.plan import RELEARN_AFTER
from drivers.modbus.schema import ModbusPoint, Table, modbus_bus
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave, UndefinedAddressError

UNIT = 3


def points(*addresses: int) -> tuple[ModbusPoint, ...]:
    return tuple(ModbusPoint(f"r{a}", table="holding", address=a) for a in addresses)


def device(*addresses: int) -> DeviceConfig:
    return DeviceConfig("meter", "field", "modbus", 1.0, UNIT, points=points(*addresses))


class SteppedClock(Clock):
    """The clocks a test moves: both by the same steps, unless it says otherwise."""

    def __init__(self) -> None:
        self.now = time.time()
        self.mono = 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono


def polls(
    served: tuple[ModbusPoint, ...],
    asked: DeviceConfig,
    count: int,
    context: Callable[[], DriverContext] = DriverContext,
    between: Callable[[], None] = lambda: None,
    *,
    restart: bool = False,
) -> tuple[list[Poll], list[int]]:
    """``count`` polls of ``asked`` from a slave that has only ``served`` (each by a driver of
    its own with ``restart``, as after a restart of the agent); the slave's requests per poll."""
    slave = SimulatedSlave(UNIT, served)
    results: list[Poll] = []
    requests: list[int] = []

    async def body() -> None:
        async with ModbusSimulator([slave]) as sim:
            bus = modbus_bus("field", "modbus-tcp", host="127.0.0.1", port=sim.port)
            driver = ModbusDriver(bus, context())
            for _ in range(count):
                before = slave.requests
                async with driver:
                    results.append(await driver.read(asked))
                requests.append(slave.requests - before)
                between()
                if restart:
                    driver = ModbusDriver(bus, context())

    run(body(), timeout=30)
    return results, requests


def test_a_register_missing_at_the_end_of_a_block_costs_only_its_point() -> None:
    (first, second), requests = polls(points(148, 149), device(148, 149, 150), 2)
    assert dict(first.values) == {"r148": 0, "r149": 0}
    assert (first.missing, first.errors) == (("r150",), ())
    assert dict(second.values) == {"r148": 0, "r149": 0}
    assert second.missing == ("r150",)
    assert requests[0] > 1  # the refused read, then its parts
    assert requests[1] == 1  # learned: one read of 148-149, nothing refused


def test_two_registers_missing_inside_a_block_of_56_are_isolated() -> None:
    addresses = range(100, 156)
    served = points(*(a for a in addresses if a not in (120, 141)))
    (poll,), _ = polls(served, device(*addresses), 1)
    assert set(poll.values) == {f"r{a}" for a in addresses} - {"r120", "r141"}
    assert sorted(poll.missing) == ["r120", "r141"]
    assert poll.errors == ()


def test_what_was_learned_survives_a_restart_in_the_state_dir(tmp_path: Path) -> None:
    def context() -> DriverContext:
        return DriverContext(state_dir=tmp_path / "state")

    served, asked = points(148, 149), device(148, 149, 150)
    results, requests = polls(served, asked, 3, context, restart=True)
    assert [r.missing for r in results] == [("r150",)] * 3
    assert requests[1:] == [1, 1]  # after the restarts, only the read of 148-149
    assert (tmp_path / "state" / "meter.modbus-plan.json").is_file()


def test_a_changed_configuration_is_learned_again(tmp_path: Path) -> None:
    def context() -> DriverContext:
        return DriverContext(state_dir=tmp_path / "state")

    polls(points(148, 149), device(148, 149, 150), 1, context, restart=True)
    # a point added, and the device fitted with the option: nothing old is believed
    (poll,), requests = polls(points(148, 149, 150, 151), device(148, 149, 150, 151), 1, context)
    assert poll.missing == ()
    assert set(poll.values) == {"r148", "r149", "r150", "r151"}
    assert requests == [1]


def test_what_the_device_refused_is_asked_again_after_a_while(tmp_path: Path) -> None:
    clock = SteppedClock()

    def context() -> DriverContext:
        return DriverContext(state_dir=tmp_path / "state", clock=clock)

    def later() -> None:
        clock.now += RELEARN_AFTER + 1
        clock.mono += RELEARN_AFTER + 1

    _, requests = polls(points(148, 149), device(148, 149, 150), 2, context, later, restart=True)
    assert requests[1] == requests[0] > 1  # the whole learning again, the device unchanged
    _, running = polls(points(148, 149), device(148, 149, 150), 2, context, later)
    assert running[1] == running[0] > 1  # and so does a driver that kept running


def test_the_device_is_degraded_not_failing_and_says_what_it_lacks(
    modbus_bus: Callable[..., ModbusBus], edge_agent: AgentRunner
) -> None:
    bus = modbus_bus("tcp")
    meter = bus.add(4, points=points(0, 1))
    meter.set("r0", 7)
    site = """
[agent]
id = "kit"
[mqtt]
topic_prefix = "t"
batch_interval = "100ms"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "192.0.2.1"
timeout = "300ms"
[[device]]
name = "meter"
bus = "plc"
unit = 4
interval = "200ms"
  [[device.point]]
  name = "r0"
  address = 0
  [[device.point]]
  name = "r1"
  address = 1
  [[device.point]]
  name = "r2"
  address = 2
"""
    edge_agent.start(site, buses={"plc": bus})
    edge_agent.wait_sample("meter", "r0", 7)
    meter.set("r0", 8)
    edge_agent.wait_sample("meter", "r0", 8)  # a later poll, with the plan learned
    state = edge_agent.status()["devices"]["meter"]
    assert state["state"] == "degraded", state
    assert state["missing"] == ["r2"], state
    assert state["errors"] == 0, state


class BlockedAt100(SimulatedSlave):
    """A unit with every register, that refuses a read across its block boundary at 100 (as
    meters and inverters do between their register blocks)."""

    def _check_defined(self, table: Table, address: int, count: int) -> None:
        super()._check_defined(table, address, count)
        if address < 100 < address + count:
            raise UndefinedAddressError("the read crosses the block boundary at 100")


def test_a_read_across_a_block_boundary_is_cut_there_for_good(tmp_path: Path) -> None:
    def context() -> DriverContext:
        return DriverContext(state_dir=tmp_path / "state")

    addresses = range(90, 110)
    slave = BlockedAt100(UNIT, points(*addresses))
    results: list[Poll] = []
    requests: list[int] = []

    async def body() -> None:
        async with ModbusSimulator([slave]) as sim:
            bus = modbus_bus("field", "modbus-tcp", host="127.0.0.1", port=sim.port)
            async with ModbusDriver(bus, context()) as driver:
                for _ in range(4):
                    before = slave.requests
                    results.append(await driver.read(device(*addresses)))
                    requests.append(slave.requests - before)

    run(body(), timeout=30)
    assert all(len(r.values) == 20 and not r.missing for r in results)
    assert requests == [3, 2, 2, 2]  # never joined back into the read it refuses


def test_bits_of_one_register_are_read_together_again() -> None:
    bits = tuple(
        ModbusPoint(f"b{n}", table="holding", address=5, type="bool", bit=n) for n in range(4)
    )
    lacking = ModbusPoint("x", table="holding", address=6)
    asked = DeviceConfig("meter", "field", "modbus", 1.0, UNIT, points=(*bits, lacking))
    slave = SimulatedSlave(UNIT, bits)
    _, requests = polls_of(slave, asked, 3)
    assert requests[1:] == [1, 1]


def test_a_point_scaled_by_a_lacking_exponent_is_missing_too() -> None:
    watts = ModbusPoint("W", table="holding", address=0, type="int16", scale_exponent="W_SF")
    exponent = ModbusPoint("W_SF", table="holding", address=1, type="int16")
    volts = ModbusPoint("V", table="holding", address=2)
    asked = DeviceConfig("meter", "field", "modbus", 1.0, UNIT, points=(watts, exponent, volts))
    slave = SimulatedSlave(UNIT, (watts, volts))
    (poll,), _ = polls_of(slave, asked, 1)
    assert dict(poll.values) == {"V": 0}
    assert sorted(poll.missing) == ["W", "W_SF"]
    assert poll.errors == ()


def test_a_damaged_or_foreign_state_file_is_learned_over(tmp_path: Path) -> None:
    def context() -> DriverContext:
        return DriverContext(state_dir=tmp_path / "state")

    polls(points(148, 149), device(148, 149, 150), 1, context, restart=True)
    state = tmp_path / "state" / "meter.modbus-plan.json"
    learned = json.loads(state.read_text())
    learned["requests"].append([])  # a read of nothing: written by no version of this
    state.write_text(json.dumps(learned))
    (poll,), requests = polls(points(148, 149), device(148, 149, 150), 1, context, restart=True)
    assert dict(poll.values) == {"r148": 0, "r149": 0}  # learned again, not crashed
    assert requests[0] > 1


def test_a_unit_id_fixed_in_the_configuration_is_not_held_to_the_old_ones_refusals(
    tmp_path: Path,
) -> None:
    def context() -> DriverContext:
        return DriverContext(state_dir=tmp_path / "state")

    wrong = DeviceConfig("meter", "field", "modbus", 1.0, UNIT + 1, points=points(0, 1))
    slave = SimulatedSlave(UNIT + 1, ())  # the unit at the wrong id has nothing
    polls_of(slave, wrong, 1, context, expect_failure=True)
    right = SimulatedSlave(UNIT, points(0, 1))
    (poll,), _ = polls_of(right, device(0, 1), 1, context)
    assert dict(poll.values) == {"r0": 0, "r1": 0}


def polls_of(
    slave: SimulatedSlave,
    asked: DeviceConfig,
    count: int,
    context: Callable[[], DriverContext] = DriverContext,
    *,
    expect_failure: bool = False,
) -> tuple[list[Poll], list[int]]:
    """``count`` polls of ``asked`` from ``slave`` by one driver; requests per poll."""
    results: list[Poll] = []
    requests: list[int] = []

    async def body() -> None:
        async with ModbusSimulator([slave]) as sim:
            bus = modbus_bus("field", "modbus-tcp", host="127.0.0.1", port=sim.port)
            async with ModbusDriver(bus, context()) as driver:
                for _ in range(count):
                    before = slave.requests
                    try:
                        results.append(await driver.read(asked))
                    except DeviceError:
                        assert expect_failure
                    requests.append(slave.requests - before)

    run(body(), timeout=30)
    return results, requests
