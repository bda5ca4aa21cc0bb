"""A dead unit among live ones on one real bus: the live ones keep their schedule."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from agent.aio import cancel_and_wait
from agent.config import BusConfig, DeviceConfig
from agent.model import Value
from agent.poll.scheduler import BusPoller
from agent.testkit import run
from drivers.modbus import ModbusDriver
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

POINTS = (ModbusPoint("level", table="holding", address=0, type="uint16"),)
INTERVAL = 0.5
#: Seconds: three quarters of the interval (a dead unit's poll costs the others at most a
#: slot), and not cut fine: a live unit must answer within it while three suites share two cores.
TIMEOUT = 0.375


def meter(unit: int) -> DeviceConfig:
    return DeviceConfig(f"unit{unit}", "field", "modbus", INTERVAL, unit=unit, points=POINTS)


def test_live_units_keep_their_schedule_beside_a_dead_one() -> None:
    slaves = [SimulatedSlave(unit, POINTS) for unit in (1, 2, 3)]
    slaves[1].dead = True
    samples: dict[str, int] = {}
    enough = asyncio.Event()

    def sink(device: str, ts: int, mono: float, values: Mapping[str, Value]) -> None:
        samples[device] = samples.get(device, 0) + 1
        if samples.get("unit1", 0) >= 12 and samples.get("unit3", 0) >= 12:
            enough.set()

    async def body() -> None:
        async with ModbusSimulator(slaves) as sim:
            bus = BusConfig("field", "modbus-tcp", host="127.0.0.1", port=sim.port, timeout=TIMEOUT)
            poller = BusPoller(bus, [meter(1), meter(2), meter(3)], ModbusDriver, sink)
            task = asyncio.create_task(poller.run())
            try:
                await enough.wait()
            finally:
                await cancel_and_wait(task)
        # 12 polls each took about 12 slots: the dead unit's timeouts did not push them out
        for live in ("unit1", "unit3"):
            assert poller.health[live].overruns <= 3, poller.health[live]
            assert poller.health[live].errors == 0
        dead = poller.health["unit2"]
        assert dead.failing
        assert dead.backoff > 0
        assert "unit2" not in samples
        assert slaves[1].requests == 0  # silent, as on a real bus

    run(body(), timeout=30)
