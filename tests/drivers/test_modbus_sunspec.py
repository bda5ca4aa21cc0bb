"""SunSpec found by discovery: the marker at a usual base, the chain of models walked by id and
length, whatever the common model's length (66 today, 65 on older devices) and the order of the
models; the model definitions shipped as SunSpec's own JSON."""

from __future__ import annotations

import pytest
from pymodbus.client import AsyncModbusTcpClient

from agent.testkit import run
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave
from drivers.modbus.sunspec import (
    MARKER,
    ModelBlock,
    NotSunSpec,
    discover,
    known_models,
    model_points,
)

UNIT = 1


def chain_registers(base: int, models: list[tuple[int, int]]) -> dict[int, int]:
    """The registers of a SunSpec map at ``base``: the marker, each (id, length) model with
    zeros for its content, and the end marker."""
    registers = {base: MARKER[0], base + 1: MARKER[1]}
    address = base + 2
    for model_id, length in models:
        registers[address], registers[address + 1] = model_id, length
        registers.update(dict.fromkeys(range(address + 2, address + 2 + length), 0))
        address += 2 + length
    registers[address], registers[address + 1] = 0xFFFF, 0
    return registers


def slave_with(registers: dict[int, int]) -> SimulatedSlave:
    points = [ModbusPoint(f"r{a}", table="holding", address=a) for a in sorted(registers)]
    slave = SimulatedSlave(UNIT, points)
    for address, value in registers.items():
        slave.set_value(f"r{address}", value)
    return slave


def discovered(registers: dict[int, int]) -> list[ModelBlock]:
    async def body() -> list[ModelBlock]:
        async with ModbusSimulator([slave_with(registers)]) as sim:
            client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2)
            await client.connect()
            try:

                async def read(address: int, count: int) -> list[int] | None:
                    answer = await client.read_holding_registers(
                        address, count=count, device_id=UNIT
                    )
                    return None if answer.isError() else list(answer.registers)

                return await discover(read)
            finally:
                client.close()

    return run(body(), timeout=30)


def test_a_66_long_common_model_and_another_order_are_walked_as_they_are() -> None:
    models = [(1, 66), (160, 28), (103, 50), (120, 26)]
    found = discovered(chain_registers(40000, models))
    assert [(m.model_id, m.length) for m in found] == models
    assert found[0].address == 40002
    assert found[1].address == 40002 + 2 + 66  # not the fixed template's 40069: one further


def test_an_older_65_long_common_model_and_the_second_base_are_found() -> None:
    found = discovered(chain_registers(50000, [(1, 65), (101, 50)]))
    assert [(m.model_id, m.address) for m in found] == [(1, 50002), (101, 50069)]


def test_no_marker_is_said_naming_where_it_was_looked_for() -> None:
    with pytest.raises(NotSunSpec, match=r'no SunSpec marker \("SunS"\) at 40000, 50000, 0'):
        discovered({40000: 1, 40001: 2})


def test_the_shipped_definitions_hold_the_models_the_agent_reads() -> None:
    assert known_models() == [
        1,
        101,
        102,
        103,
        111,
        112,
        113,
        *range(120, 125),
        160,
        *range(201, 205),
    ]
    assert sum(p.size for p in model_points(1)) - 2 == 66  # the pad register included
    watts = next(p for p in model_points(103) if p.name == "W")
    assert (watts.type, watts.scale_factor) == ("int16", "W_SF")
    offsets = [p.offset for p in model_points(103)]
    assert offsets == sorted(offsets)
    assert offsets[:2] == [0, 1]  # ID and L
