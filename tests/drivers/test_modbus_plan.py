"""Request planning: holes bridged within merge_gap, bus maxima, refused merges split for good."""

from __future__ import annotations

import logging

import pytest

from agent.config import BusConfig, DeviceConfig
from agent.testkit import run
from drivers.modbus import ModbusDriver
from drivers.modbus.plan import DevicePlan, plan_requests
from drivers.modbus.schema import ModbusPoint, modbus_bus
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

A = ModbusPoint("a", table="holding", address=0, type="uint16")
B = ModbusPoint("b", table="holding", address=5, type="float32")
C = ModbusPoint("c", table="holding", address=40, type="uint16")
FLAG = ModbusPoint("flag", table="coil", address=3, type="bool")


def bus(**changes: object) -> BusConfig:
    return modbus_bus("field", "modbus-tcp", host="127.0.0.1", **changes)


def spans(requests: list) -> list[tuple[str, int, int]]:  # type: ignore[type-arg]
    return [(r.table, r.address, r.count) for r in requests]


def test_points_within_the_gap_share_a_read() -> None:
    assert spans(plan_requests([A, B, C, FLAG], bus())) == [
        ("holding", 0, 7),
        ("holding", 40, 1),
        ("coil", 3, 1),
    ]
    assert spans(plan_requests([A, B, C], bus(merge_gap=40))) == [("holding", 0, 41)]
    assert spans(plan_requests([A, B, C], bus(merge_gap=0))) == [
        ("holding", 0, 1),
        ("holding", 5, 2),
        ("holding", 40, 1),
    ]


def test_a_fussy_bus_gets_smaller_reads() -> None:
    points = [
        ModbusPoint(f"r{i}", table="holding", address=i * 2, type="float32") for i in range(60)
    ]  # 120 registers
    assert [r.count for r in plan_requests(points, bus())] == [120]
    assert [r.count for r in plan_requests(points, bus(max_registers=80))] == [80, 40]


def test_a_refused_merge_is_split_at_once_and_stays_split(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="drivers.modbus.plan")
    device = DeviceConfig("meter", "field", "modbus", 1.0, unit=1, points=(A, B))
    slave = SimulatedSlave(1, (A, B))  # registers 1-4 do not exist: a merged read is refused
    slave.set_value("a", 7)
    slave.set_value("b", 2.5)

    async def body() -> None:
        async with ModbusSimulator([slave]) as sim:
            driver = ModbusDriver(bus(port=sim.port, timeout=0.5))
            async with driver:
                assert driver.describe(device) == ["holding 0-6 (7 registers): a, b"]
                first = await driver.read(device)
                requests_first = slave.requests
                second = await driver.read(device)
                requests_second = slave.requests - requests_first
                assert first.values == second.values == {"a": 7, "b": 2.5}
                assert not first.errors
                assert not second.errors
                assert requests_first == 3  # the refused merge, then the two parts
                assert requests_second == 2  # the split is remembered
                assert driver.describe(device) == [
                    "holding 0 (1 register): a",
                    "holding 5-6 (2 registers): b",
                ]

    run(body())
    splits = [r for r in caplog.records if "refused holding 0-6" in r.getMessage()]
    assert len(splits) == 1


def test_a_plan_without_holes_is_never_split() -> None:
    plan = DevicePlan(DeviceConfig("m", "field", "modbus", 1.0, points=(A,)), bus())
    assert not plan.requests[0].has_holes
