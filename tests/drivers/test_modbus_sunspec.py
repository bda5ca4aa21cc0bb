"""SunSpec found by discovery: the marker at a usual base, the chain of models walked by id and
length, whatever the common model's length (66 today, 65 on older devices) and the order of the
models; the model definitions shipped as SunSpec's own JSON."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import NoSuchIdException

from agent.api import DeviceConfig, DeviceError, DriverContext, PointConfig, Poll
from agent.config.loader import builtin_templates
from agent.testkit import run
from agent.testkit.modbus import ModbusBus
from agent.testkit.runner import AgentRunner
from agent.testkit.telemetry import Telemetry
from drivers.modbus import ModbusDriver
from drivers.modbus.schema import ModbusPoint, Table, modbus_bus, modbus_points
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave
from drivers.modbus.sunspec import (
    MARKER,
    ModelBlock,
    NotSunSpec,
    definition,
    discover,
    known_models,
    model_points,
)
from drivers.modbus.sunspec_points import KINDS, config_point, parse_ref, place, simulated_map

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


# --- points placed by discovery, read from maps built here from the specification -------------

#: Model 103 from its model id word, transcribed from the specification's table (not from the
#: shipped JSON): A +2, A_SF +6, PhVphA +10, V_SF +13, W +14, W_SF +15, Hz +16, Hz_SF +17, WH
#: (acc32) +24, WH_SF +26, DCW +31, DCW_SF +32, St +38.
M103 = {"A": 2, "A_SF": 6, "PhVphA": 10, "PhVphB": 11, "V_SF": 13, "W": 14, "W_SF": 15}
M103 |= {"Hz": 16, "Hz_SF": 17, "WH": 24, "WH_SF": 26, "DCW": 31, "DCW_SF": 32, "St": 38}
#: Model 113 (float): every measurement two registers, no scale factors: A +2 … W +22, Hz +24.
M113 = {"A": 2, "PhVphA": 16, "W": 22, "Hz": 24}
INVERTER_POINTS = {
    "current": "inverter.A",
    "voltage": "inverter.PhVphA",
    "voltage_b": "inverter.PhVphB",
    "power": "inverter.W",
    "frequency": "inverter.Hz",
    "energy": "inverter.WH",
    "state": "inverter.St",
    "maker": "common.Mn",
}


def sunspec_device(
    points: Mapping[str, str | tuple[str, PointConfig]], unit: int = UNIT, **options: int
) -> DeviceConfig:
    """A device of SunSpec points: ``{name: ref}``, or ``{name: (ref, PointConfig)}`` for a
    point with more keys."""
    built = []
    for name, given in points.items():
        ref, common = given if isinstance(given, tuple) else (given, PointConfig(name))
        built.append(config_point(common, ref))
    return DeviceConfig(
        "inverter", "solar", "modbus", 10.0, unit, points=tuple(built), options=options
    )


def with_values(
    registers: dict[int, int], model_address: int, values: dict[int, int | list[int]]
) -> dict[int, int]:
    """``registers`` with the model whose id is at ``model_address`` holding ``values`` (by
    offset from the id register; a list for several registers, a negative int as int16)."""
    for offset, value in values.items():
        words = value if isinstance(value, list) else [value & 0xFFFF]
        for index, word in enumerate(words):
            registers[model_address + offset + index] = word
    return registers


def text(value: str, registers: int) -> list[int]:
    data = value.encode().ljust(registers * 2, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def poll_of(
    registers: dict[int, int] | SimulatedSlave,
    device: DeviceConfig,
    state_dir: Path | None = None,
) -> Poll:
    result = polls_of(registers, device, state_dir=state_dir)[0]
    assert isinstance(result, Poll)
    return result


def polls_of(
    registers: dict[int, int] | SimulatedSlave,
    device: DeviceConfig,
    between: Callable[[], None] = lambda: None,
    count: int = 1,
    state_dir: Path | None = None,
) -> list[Poll | DeviceError]:
    """``count`` polls of ``device`` by one driver, ``between()`` called after each."""
    slave = registers if isinstance(registers, SimulatedSlave) else slave_with(registers)

    async def body() -> list[Poll | DeviceError]:
        results: list[Poll | DeviceError] = []
        async with ModbusSimulator([slave]) as sim:
            bus = modbus_bus("solar", "modbus-tcp", host="127.0.0.1", port=sim.port, timeout=0.5)
            context = DriverContext(state_dir=state_dir)
            async with ModbusDriver(bus, context) as driver:
                for _ in range(count):
                    try:
                        results.append(await driver.read(device))
                    except DeviceError as exc:
                        if count == 1:
                            raise
                        results.append(exc)
                    between()
        return results

    return run(body(), timeout=30)


def three_phase(common_length: int = 66, base: int = 40000) -> tuple[dict[int, int], int]:
    """A map with the common model, an MPPT model (160, two inputs) and then model 103."""
    registers = chain_registers(base, [(1, common_length), (160, 48), (103, 50)])
    model_103 = base + 2 + (2 + common_length) + (2 + 48)
    with_values(registers, base + 2, {2: text("Fronius", 16)})
    with_values(
        registers,
        model_103,
        {
            M103["A"]: 1453, M103["A_SF"]: -2, M103["PhVphA"]: 2310, M103["PhVphB"]: 0xFFFF,
            M103["V_SF"]: -1, M103["W"]: -100, M103["W_SF"]: 0, M103["Hz"]: 5002,
            M103["Hz_SF"]: -2, M103["WH"]: [0x075B, 0xCD15], M103["WH_SF"]: 2, M103["St"]: 4,
        },
    )  # fmt: skip
    return registers, model_103


def test_points_are_placed_on_the_chain_the_unit_has_and_scaled_by_its_factors() -> None:
    registers, _ = three_phase()
    result = poll_of(registers, sunspec_device(INVERTER_POINTS))
    assert result.errors == ()
    assert result.missing == ()
    assert result.values == {
        "current": 14.53,
        "voltage": 231.0,
        # voltage_b holds uint16 0xFFFF, "not implemented": no reading, and not missing either
        "power": -100.0,
        "frequency": 50.02,
        "energy": 12_345_678_900.0,  # 123456789 x 10^2
        "state": 4,
        "maker": "Fronius",
    }


def test_an_older_65_long_common_model_at_50000_reads_the_same() -> None:
    registers, _ = three_phase(common_length=65, base=50000)
    result = poll_of(registers, sunspec_device(INVERTER_POINTS))
    assert result.values["power"] == -100.0
    assert result.values["energy"] == 12_345_678_900.0


def test_a_float_inverter_is_an_inverter_too() -> None:
    registers = chain_registers(40000, [(1, 66), (113, 60)])
    model_113 = 40000 + 2 + 68
    nan = [0x7FC0, 0x0000]
    with_values(registers, model_113, {M113["W"]: [0x4520, 0x8000], M113["Hz"]: nan})
    device = sunspec_device({"power": "inverter.W", "frequency": "inverter.Hz"})
    result = poll_of(registers, device)
    assert result.values == {"power": 2568.0}  # 0x45208000; the frequency is NaN: not implemented


def test_a_point_whose_model_the_unit_lacks_is_missing_and_the_others_read() -> None:
    registers, _ = three_phase()
    device = sunspec_device({"power": "inverter.W", "grid": "meter.W", "pv3": "mppt.module[3].DCW"})
    result = poll_of(registers, device)
    assert result.values == {"power": -100.0}
    assert result.missing == ("grid", "pv3")  # no meter model; model 160 has two inputs
    assert result.errors == ()


def test_a_scale_factor_holding_not_implemented_leaves_its_points_out() -> None:
    registers, model_103 = three_phase()
    registers[model_103 + M103["V_SF"]] = 0x8000
    result = poll_of(registers, sunspec_device(INVERTER_POINTS))
    assert "voltage" not in result.values
    assert result.values["current"] == 14.53
    assert result.errors == ()


def test_a_unit_without_a_sunspec_map_is_one_line_saying_where_it_looked() -> None:
    device = sunspec_device({"power": "inverter.W"})
    with pytest.raises(DeviceError) as raised:
        poll_of({40000: 1, 40001: 2, 0: 0, 1: 0}, device)
    assert str(raised.value) == (
        'device inverter (unit 1): no SunSpec marker ("SunS") at 40000, 50000, 0'
    )


def test_a_unit_whose_models_lack_every_point_says_so() -> None:
    registers = chain_registers(40000, [(1, 66), (103, 50)])
    with pytest.raises(DeviceError, match=r"the SunSpec models of unit 1 lack every point"):
        poll_of(registers, sunspec_device({"grid": "meter.W"}))


def test_check_plan_shows_where_the_agent_found_the_points(tmp_path: Path) -> None:
    registers, model_103 = three_phase()
    device = sunspec_device({"power": "inverter.W", "grid": "meter.W"})
    poll_of(registers, device, state_dir=tmp_path)
    # a driver that never connected, as `check --plan` builds it, reads what discovery kept
    lines = ModbusDriver(
        modbus_bus("solar", "modbus-tcp"), DriverContext(state_dir=tmp_path)
    ).describe(device)
    w, w_sf = model_103 + M103["W"], model_103 + M103["W_SF"]
    assert lines == [
        f"holding {w}-{w_sf} (2 registers): power, sunspec:{model_103}.W_SF",
        "lacks grid (not in the unit's SunSpec models)",
    ]


def test_the_template_points_name_points_every_inverter_model_defines() -> None:
    template = next(t for t in builtin_templates() if t.name == "sunspec-inverter")
    for model_id in KINDS["inverter"]:
        length = definition(model_id).fixed_size - 2
        chain = [ModelBlock(1, 40002, 66), ModelBlock(model_id, 40070, length)]
        layout = place(modbus_points(template.points), chain)
        # the float models have no vendor events; every other point is defined by every model
        allowed = {"events"} if model_id in (111, 112, 113) else set()
        assert set(layout.missing) <= allowed, model_id


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("inverter.Wx", '"inverter.Wx": model 103 (inverter_three_phase) has no point Wx'),
        ("invertr.W", '"invertr" is not a SunSpec model id or kind (did you mean "inverter"?)'),
        ("999.W", "SunSpec model 999 is not one edge-agent reads"),
        ("mppt.module[0].DCW", '"mppt.module[0].DCW": a module is counted from 1'),
        ("mppt.modul[1].DCW", "model 160 has no group modul (its group is module)"),
        ("W", '"W" is not MODEL.POINT or MODEL.GROUP[N].POINT'),
        ("common.Pad", "model 1 (common) has no point Pad"),
    ],
)
def test_a_reference_naming_nothing_is_one_line(ref: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_ref(ref)


def test_the_simulated_unit_has_todays_common_model_and_another_order() -> None:
    device = sunspec_device({"power": "inverter.W", "pv1": "mppt.module[1].DCW"})
    served = simulated_map(device)
    assert [(b.model_id, b.length) for b in served.chain] == [
        (1, 66),
        (120, 26),
        (160, 48),
        (103, 50),
    ]


def test_the_agent_reads_a_sunspec_unit_and_says_what_it_lacks(
    modbus_bus: Callable[..., ModbusBus], edge_agent: AgentRunner
) -> None:
    bus = modbus_bus("tcp")
    inverter = bus.add(UNIT, template="sunspec-inverter")  # a unit without a meter model
    inverter.set("ac_power", 4321)
    inverter.set("manufacturer", "SolarEdge")
    site = """
[agent]
id = "kit"
[mqtt]
topic_prefix = "t"
batch_interval = "100ms"
health_interval = "200ms"
[[bus]]
name = "solar"
type = "modbus-tcp"
host = "192.0.2.1"
timeout = "500ms"
[[device]]
name = "inverter"
bus = "solar"
unit = 1
interval = "200ms"
template = "sunspec-inverter"
  [[device.point]]
  name = "grid_power"
  sunspec = "meter.W"
"""
    edge_agent.start(site, buses={"solar": bus})
    sample = edge_agent.wait_sample("inverter", "ac_power", 4321.0)
    assert sample["values"]["manufacturer"] == "SolarEdge"
    assert "grid_power" not in sample["values"]
    assert "frequency" not in sample["values"]  # not set: the unit says "not implemented"
    state = edge_agent.status()["devices"]["inverter"]
    assert state["state"] == "degraded", state
    assert state["missing"] == ["grid_power"], state
    assert state["errors"] == 0, state

    def meta_says_missing(telemetry: Telemetry) -> bool:
        metas = telemetry.payloads("meta")
        return bool(metas) and metas[-1]["devices"]["inverter"].get("missing") == ["grid_power"]

    edge_agent.telemetry.wait_for(meta_says_missing, timeout=20)


class SilentAt(SimulatedSlave):
    """A unit that does not answer reads starting at some addresses (as RTU units do on
    registers they lack), and answers the rest."""

    def __init__(self, registers: dict[int, int], silent: set[int]) -> None:
        template = slave_with(registers)
        super().__init__(UNIT, list(template.points.values()))
        for address, value in registers.items():
            self.set_value(f"r{address}", value)
        self.silent = silent

    def registers(self, table: Table, address: int, count: int) -> list[int] | list[bool]:
        if address in self.silent:
            raise NoSuchIdException(f"unit {self.unit} is silent at {address}")
        return super().registers(table, address, count)


def test_a_unit_silent_where_it_has_no_map_is_found_at_the_next_base() -> None:
    registers, _ = three_phase(base=50000)
    result = poll_of(SilentAt(registers, {40000}), sunspec_device(INVERTER_POINTS))
    assert result.values["power"] == -100.0


def test_a_unit_silent_at_every_base_is_one_line_saying_so() -> None:
    registers, _ = three_phase(base=50000)
    with pytest.raises(DeviceError) as raised:
        poll_of(SilentAt(registers, {40000, 50000, 0}), sunspec_device(INVERTER_POINTS))
    assert str(raised.value) == (
        "device inverter (unit 1): no answer at 40000, 50000, 0, where a SunSpec map starts: "
        "is the unit there?"
    )


def test_an_end_model_without_its_length_register_ends_the_chain() -> None:
    registers, _ = three_phase()
    del registers[max(registers)]  # the end model's length: some units have none
    assert registers[max(registers)] == 0xFFFF
    result = poll_of(registers, sunspec_device(INVERTER_POINTS))
    assert result.values["frequency"] == 50.02


def test_a_busy_unit_is_said_busy_not_without_a_map() -> None:
    registers, _ = three_phase()
    slave = slave_with(registers)
    slave.exception = 6
    with pytest.raises(DeviceError, match="device busy"):
        poll_of(slave, sunspec_device(INVERTER_POINTS))


def test_scale_and_offset_apply_after_the_scale_factor() -> None:
    registers, model_103 = three_phase()
    with_values(registers, model_103, {33: 452, 37: -1})  # TmpCab 45.2 °C (Tmp_SF -1)
    kelvin = PointConfig("cabinet", unit="K", offset=273.15)
    kilowatts = PointConfig("kilowatts", unit="kW", scale=0.001)
    device = sunspec_device(
        {"cabinet": ("inverter.TmpCab", kelvin), "kilowatts": ("inverter.W", kilowatts)}
    )
    result = poll_of(registers, device)
    assert result.values == {"cabinet": 318.35, "kilowatts": -0.1}


def solaredge_chain() -> dict[int, int]:
    """One unit serving an inverter and two meters, each a logical device with its own common
    model, as SolarEdge inverters serve the meters behind them."""
    models = [(1, 66), (103, 50), (1, 65), (203, 105), (1, 65), (203, 105)]
    registers = chain_registers(40000, models)
    addresses = [40002]
    for _, length in models[:-1]:
        addresses.append(addresses[-1] + 2 + length)
    inverter, _, meter1, m203a, meter2, m203b = addresses
    for address, maker in ((inverter, "SolarEdge"), (meter1, "WattNode"), (meter2, "Carlo")):
        with_values(registers, address, {2: text(maker, 16)})
    # meter W at +18, W_SF at +22 (model 203 from its id word)
    with_values(registers, m203a, {18: 1500, 22: 0})
    with_values(registers, m203b, {18: 700, 22: 0})
    return registers


@pytest.mark.parametrize(
    ("points", "options", "expected"),
    [
        ({"maker": "common.Mn", "power": "meter.W"}, {}, {"maker": "WattNode", "power": 1500.0}),
        (
            {"maker": "common.Mn", "power": "meter.W"},
            {"sunspec_device": 3},
            {"maker": "Carlo", "power": 700.0},
        ),
        ({"power": "meter[2].W"}, {}, {"power": 700.0}),
        ({"maker": "common.Mn"}, {}, {"maker": "SolarEdge"}),
        ({"maker": "common[2].Mn"}, {}, {"maker": "WattNode"}),
    ],
)
def test_a_unit_of_several_logical_devices_reads_each_with_its_own_common_model(
    points: dict[str, str | tuple[str, PointConfig]],
    options: dict[str, int],
    expected: dict[str, object],
) -> None:
    result = poll_of(solaredge_chain(), sunspec_device(points, **options))
    assert result.values == expected


def test_a_map_that_moved_is_found_again_not_read_one_model_off() -> None:
    before, model_103 = three_phase()
    # after a firmware update: a vendor model (id 64110, 8 long) ahead of model 103
    after = chain_registers(40000, [(1, 66), (160, 48), (64110, 8), (103, 50)])
    with_values(
        after, model_103 + 10, {M103["W"]: 555, M103["W_SF"]: 0, M103["A"]: 1, M103["A_SF"]: 0}
    )
    slave = slave_with(dict.fromkeys(set(before) | set(after), 0))
    for address, value in before.items():
        slave.set_value(f"r{address}", value)

    def update() -> None:
        for address in slave.points:
            slave.set_value(address, after.get(int(address[1:]), 0))

    device = sunspec_device({"current": "inverter.A", "power": "inverter.W"})
    first, moved, again = polls_of(slave, device, between=update, count=3)
    assert isinstance(first, Poll)
    assert first.values == {"current": 14.53, "power": -100.0}
    assert isinstance(moved, DeviceError)
    assert "SunSpec model 103 is no longer at" in str(moved)
    assert isinstance(again, Poll)
    assert again.values == {"current": 1.0, "power": 555.0}


def test_a_unit_taking_fewer_registers_per_read_is_read_in_parts() -> None:
    """Exception 3 (illegal data value) for a read longer than it takes: cut, like a hole."""
    registers, _ = three_phase()
    slave = slave_with(registers)
    slave.max_read = 40
    template = next(t for t in builtin_templates() if t.name == "sunspec-inverter")
    device = replace(sunspec_device({}), points=template.points)
    first, second = polls_of(slave, device, count=2)
    for result in (first, second):
        assert isinstance(result, Poll)
        assert result.errors == ()
        assert result.values["ac_power"] == -100.0
        assert result.values["manufacturer"] == "Fronius"
