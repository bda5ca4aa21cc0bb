"""The built-in device templates (drivers/modbus/templates/*.toml).

Each one loads, says where its register map comes from, plans into few requests, matches the
addresses transcribed here from its source, and reads back through a real pymodbus server on
127.0.0.1 with the values the simulator served.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from agent.config import BusConfig, DeviceConfig, TemplateConfig, load_config
from agent.config.loader import builtin_templates
from agent.model import Poll, Value
from agent.testkit import run
from agent.testkit.process import cli
from drivers.modbus import ModbusDriver
from drivers.modbus.codec import int_range
from drivers.modbus.plan import plan_requests
from drivers.modbus.schema import ModbusPoint, modbus_points
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

#: The Modbus driver's own templates (other drivers ship theirs, tested beside them).
TEMPLATES: dict[str, TemplateConfig] = {
    t.name: t for t in builtin_templates() if t.driver == "modbus"
}
NAMES = sorted(TEMPLATES)

#: Requests one poll makes with a default BusConfig (merge_gap 8, 125 registers): the README
#: table. A change here is a change in what a device costs on its bus.
REQUESTS = {
    "apogee-sp522": 1,
    "eastron-sdm120": 3,
    "eastron-sdm630": 3,
    "sensecap-one-weather": 1,
    "sensecap-soil-mtec-02": 1,
    "soil-3in1": 1,
    "sunspec-inverter": 1,
}
METERS = ("eastron-sdm120", "eastron-sdm630")

#: Register maps transcribed independently from each template's source (hex where the source
#: writes hex), so that an edit of a template that moves a point fails here.
SOURCE_ADDRESSES: dict[str, dict[str, tuple[str, int, str]]] = {
    # volkszaehler/mbmd meters/rs485/sdm120.go
    "eastron-sdm120": {
        "voltage": ("input", 0x0000, "float32"),
        "current": ("input", 0x0006, "float32"),
        "active_power": ("input", 0x000C, "float32"),
        "apparent_power": ("input", 0x0012, "float32"),
        "reactive_power": ("input", 0x0018, "float32"),
        "power_factor": ("input", 0x001E, "float32"),
        "frequency": ("input", 0x0046, "float32"),
        "import_energy": ("input", 0x0048, "float32"),
        "export_energy": ("input", 0x004A, "float32"),
        "total_energy": ("input", 0x0156, "float32"),
    },
    # volkszaehler/mbmd meters/rs485/sdm.go
    "eastron-sdm630": {
        "voltage_l1": ("input", 0x0000, "float32"),
        "voltage_l2": ("input", 0x0002, "float32"),
        "voltage_l3": ("input", 0x0004, "float32"),
        "current_l1": ("input", 0x0006, "float32"),
        "current_l2": ("input", 0x0008, "float32"),
        "current_l3": ("input", 0x000A, "float32"),
        "power_l1": ("input", 0x000C, "float32"),
        "power_l2": ("input", 0x000E, "float32"),
        "power_l3": ("input", 0x0010, "float32"),
        "total_power": ("input", 0x0034, "float32"),
        "total_apparent_power": ("input", 0x0038, "float32"),
        "total_reactive_power": ("input", 0x003C, "float32"),
        "power_factor": ("input", 0x003E, "float32"),
        "frequency": ("input", 0x0046, "float32"),
        "import_energy": ("input", 0x0048, "float32"),
        "export_energy": ("input", 0x004A, "float32"),
        "total_energy": ("input", 0x0156, "float32"),
    },
    # DFRobot wiki SEN0601
    "soil-3in1": {
        "moisture": ("holding", 0x0000, "uint16"),
        "temperature": ("holding", 0x0001, "int16"),
        "ec": ("holding", 0x0002, "uint16"),
    },
    # Seeed 101990667 §5.2
    "sensecap-soil-mtec-02": {
        "temperature": ("input", 0x0000, "int16"),
        "moisture": ("input", 0x0001, "uint16"),
        "ec": ("input", 0x0002, "uint16"),
        "salinity": ("input", 0x0003, "uint16"),
        "tds": ("input", 0x0004, "uint16"),
        "permittivity": ("input", 0x0005, "uint16"),
    },
    # Seeed 101990787 §4.1.2
    "sensecap-one-weather": {
        "air_temperature": ("input", 0x0000, "int32"),
        "air_humidity": ("input", 0x0002, "int32"),
        "air_pressure": ("input", 0x0004, "int32"),
        "light_intensity": ("input", 0x0006, "int32"),
        "wind_direction_min": ("input", 0x0008, "int32"),
        "wind_direction_max": ("input", 0x000A, "int32"),
        "wind_direction_avg": ("input", 0x000C, "int32"),
        "wind_speed_min": ("input", 0x000E, "int32"),
        "wind_speed_max": ("input", 0x0010, "int32"),
        "wind_speed_avg": ("input", 0x0012, "int32"),
    },
    # FIELD-NOTES (unverified against the SP-522 register table)
    "apogee-sp522": {"shortwave_radiation": ("holding", 0, "float32")},
}

#: SunSpec model 103 from its model id word (pysunspec2 model_103.json; FIELD-NOTES lists the
#: same offsets), with the SunSpec type of each point.
MODEL_103 = {
    "inverter_model_id": (0, "uint16"),
    "inverter_length": (1, "uint16"),
    "ac_current": (2, "uint16"),
    "ac_current_a": (3, "uint16"),
    "ac_current_b": (4, "uint16"),
    "ac_current_c": (5, "uint16"),
    "a_sf": (6, "sunssf"),
    "voltage_ab": (7, "uint16"),
    "voltage_bc": (8, "uint16"),
    "voltage_ca": (9, "uint16"),
    "voltage_an": (10, "uint16"),
    "voltage_bn": (11, "uint16"),
    "voltage_cn": (12, "uint16"),
    "v_sf": (13, "sunssf"),
    "ac_power": (14, "int16"),
    "w_sf": (15, "sunssf"),
    "frequency": (16, "uint16"),
    "hz_sf": (17, "sunssf"),
    "apparent_power": (18, "int16"),
    "va_sf": (19, "sunssf"),
    "reactive_power": (20, "int16"),
    "var_sf": (21, "sunssf"),
    "power_factor": (22, "int16"),
    "pf_sf": (23, "sunssf"),
    "energy": (24, "acc32"),
    "wh_sf": (26, "sunssf"),
    "dc_current": (27, "uint16"),
    "dca_sf": (28, "sunssf"),
    "dc_voltage": (29, "uint16"),
    "dcv_sf": (30, "sunssf"),
    "dc_power": (31, "int16"),
    "dcw_sf": (32, "sunssf"),
    "cabinet_temperature": (33, "int16"),
    "heatsink_temperature": (34, "int16"),
    "transformer_temperature": (35, "int16"),
    "other_temperature": (36, "int16"),
    "tmp_sf": (37, "sunssf"),
    "operating_state": (38, "enum16"),
    "vendor_state": (39, "enum16"),
    "events": (40, "bitfield32"),
}
#: How each SunSpec type is stored here, and its "not implemented" value (pysunspec2 mb.py).
SUNSPEC_TYPES = {
    "int16": ("int16", 0x8000),
    "sunssf": ("int16", 0x8000),
    "uint16": ("uint16", 0xFFFF),
    "enum16": ("uint16", 0xFFFF),
    "acc32": ("uint32", 0),
    "bitfield32": ("uint32", 0xFFFFFFFF),
}

UNITS = {"", "V", "A", "W", "VA", "var", "Hz", "kWh", "Wh", "°C", "%", "uS/cm", "mg/L", "W/m2"}
UNITS |= {"m/s", "°", "hPa", "Pa", "lx"}

#: Values that make a simulated device look like the real one where a generated value would not.
PLAUSIBLE: dict[str, dict[str, Value]] = {
    "sunspec-inverter": {
        "sunspec_marker": "SunS",
        "common_model_id": 1,
        "common_length": 65,
        "manufacturer": "Fronius",
        "model": "Symo 10.0-3-M",
        "version": "3.14.1-10",
        "serial_number": "34117152",
        "device_address": 1,
        "inverter_model_id": 103,
        "inverter_length": 50,
        "operating_state": 4,
        "vendor_state": 4,
        "events": 0,
    },
}
#: Scale factors the simulated SunSpec device reports, in turn (exercising negative, zero and
#: positive powers of ten).
EXPONENTS = (-2, -1, 0, 1, -3)

TIMEOUT = 1.0


def bus(port: int = 502) -> BusConfig:
    return BusConfig("field", "modbus-tcp", host="127.0.0.1", port=port, timeout=TIMEOUT)


def device_for(template: TemplateConfig, unit: int = 1) -> DeviceConfig:
    return DeviceConfig(
        template.name, "field", "modbus", 10.0, unit, template.name, template.points
    )


def header(template: TemplateConfig) -> str:
    """The comment lines at the top of the template's file."""
    lines = Path(template.source).read_text(encoding="utf-8").splitlines()
    block = []
    for line in lines:
        if not line.startswith("#"):
            break
        block.append(line)
    return "\n".join(block)


def poll(slaves: list[SimulatedSlave], device: DeviceConfig) -> Poll:
    """One poll of ``device`` through ModbusDriver from a ModbusSimulator serving ``slaves``."""

    async def body() -> Poll:
        async with (
            ModbusSimulator(slaves, host="127.0.0.1", port=0) as sim,
            ModbusDriver(bus(sim.port)) as driver,
        ):
            return await driver.read(device)

    return run(body(), timeout=10)


# --- loading and documentation -----------------------------------------------------------------


def test_builtin_templates_load_with_unique_names() -> None:
    assert len({t.name for t in builtin_templates()}) == len(builtin_templates())
    templates = [t for t in builtin_templates() if t.driver == "modbus"]
    names = [t.name for t in templates]
    assert len(names) == len(set(names))
    assert {
        "eastron-sdm120",
        "eastron-sdm630",
        "soil-3in1",
        "sunspec-inverter",
    } <= set(names)
    assert any(n in names for n in ("sensecap-one-weather", "apogee-sp522"))
    assert set(names) == set(REQUESTS), "a new template needs its row in REQUESTS (and the README)"
    assert {Path(t.source).parent for t in templates} == {ModbusDriver.templates_dir}


@pytest.mark.parametrize("name", NAMES)
def test_template_has_a_description_and_names_its_source(name: str) -> None:
    template = TEMPLATES[name]
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name)
    assert template.description.strip()
    top = header(template)
    assert f"# {name} — source: " in top, f"{template.source} must name the source of {name}"
    assert "Bus defaults:" in top


@pytest.mark.parametrize("name", NAMES)
def test_template_points_are_consistent(name: str) -> None:
    points = modbus_points(TEMPLATES[name].points)
    by_name = {p.name: p for p in points}
    assert len(by_name) == len(points)
    owner: dict[tuple[str, int], ModbusPoint] = {}
    for point in points:
        assert point.unit in UNITS, f"{point.name}: unit {point.unit!r}"
        assert not point.writable, "built-in templates only read"
        for address in range(point.address, point.address + point.count):
            other = owner.setdefault((point.table, address), point)
            # only single bits may share a register
            assert other is point or (other.bit is not None and point.bit is not None), (
                f"{point.name} overlaps {other.name} at {point.table} {address}"
            )
        if point.scale_exponent is not None:
            exponent = by_name[point.scale_exponent]
            assert exponent.type == "int16"
            assert exponent.scale == 1
            assert exponent.offset == 0
        if point.type in ("int16", "uint16", "int32", "uint32"):
            low, high = int_range(point.type)
            for limit in (point.min, point.max):
                if limit is not None:  # the simulator must be able to serve it
                    assert low <= (limit - point.offset) / point.scale <= high, point.name


@pytest.mark.parametrize("name", NAMES)
def test_template_merges_its_points_into_few_requests(name: str) -> None:
    points = modbus_points(TEMPLATES[name].points)
    requests = plan_requests(points, BusConfig("field", "modbus-tcp"))
    assert len(requests) == REQUESTS[name]
    assert sorted(p.name for r in requests for p in r.points) == sorted(p.name for p in points)
    if name in METERS:
        assert len(requests) < len(points)


@pytest.mark.parametrize("name", sorted(SOURCE_ADDRESSES))
def test_template_matches_its_source_register_map(name: str) -> None:
    points = {p.name: (p.table, p.address, p.type) for p in modbus_points(TEMPLATES[name].points)}
    assert points == SOURCE_ADDRESSES[name]


def test_sunspec_inverter_follows_models_1_and_103() -> None:
    points = {p.name: p for p in modbus_points(TEMPLATES["sunspec-inverter"].points)}
    assert all(p.table == "holding" for p in points.values())
    marker = points["sunspec_marker"]
    assert (marker.address, marker.type, marker.length) == (40000, "string", 4)
    # model 1: id and length, then Mn (16 registers), Md (16), Opt (8), Vr (8), SN (16), DA
    model_1 = [
        ("common_model_id", 40002, 1),
        ("common_length", 40003, 1),
        ("manufacturer", 40004, 16),
        ("model", 40020, 16),
        ("options", 40036, 8),
        ("version", 40044, 8),
        ("serial_number", 40052, 16),
        ("device_address", 40068, 1),
    ]
    assert [(n, points[n].address, points[n].count) for n, _, _ in model_1] == model_1
    base = 40002 + 2 + 65  # model 1's id and length words, then its 65 registers
    for name, (offset, sunspec_type) in MODEL_103.items():
        point = points[name]
        stored, unimplemented = SUNSPEC_TYPES[sunspec_type]
        assert (point.address, point.type) == (base + offset, stored), name
        if name not in ("inverter_model_id", "inverter_length"):
            assert point.not_available == (unimplemented,), name
        if sunspec_type == "sunssf":
            assert (point.min, point.max) == (-10, 10)
    # every measurement is scaled by the sunssf point right after its group
    scaled = {n: p.scale_exponent for n, p in points.items() if p.scale_exponent}
    assert scaled["ac_power"] == "w_sf"
    assert scaled["energy"] == "wh_sf"
    assert scaled["voltage_an"] == "v_sf"
    assert scaled["dc_power"] == "dcw_sf"
    assert all(MODEL_103[sf][1] == "sunssf" for sf in scaled.values())
    assert len(scaled) == 23
    assert set(points) == {n for n, _, _ in model_1} | set(MODEL_103) | {"sunspec_marker"}


# --- read back through the simulator -----------------------------------------------------------


def plausible_values(template: TemplateConfig) -> tuple[dict[str, Value], dict[str, Value]]:
    """What to serve on every point (through ``set_value``, raw for scale_exponent points) and
    what a poll must then read: distinct values within each point's min/max."""
    points = modbus_points(template.points)
    exponents = {p.scale_exponent for p in points if p.scale_exponent}
    overrides = PLAUSIBLE.get(template.name, {})
    served: dict[str, Value] = {}
    for index, point in enumerate(points):
        if point.name in overrides:
            served[point.name] = overrides[point.name]
        elif point.name in exponents:
            served[point.name] = EXPONENTS[len([n for n in served if n in exponents]) % 5]
        elif point.type == "string":
            served[point.name] = f"{point.name[:4].upper()}{index}"[: point.length]
        elif point.type == "bool":
            served[point.name] = index % 2 == 0
        else:
            served[point.name] = _number(point, index, len(points))
    expected = dict(served)
    for point in points:
        if point.scale_exponent is not None:
            raw, exponent = served[point.name], served[point.scale_exponent]
            assert isinstance(raw, int)
            assert isinstance(exponent, int)
            expected[point.name] = raw * 10.0**exponent
    return served, expected


def _number(point: ModbusPoint, index: int, count: int) -> int | float:
    """A value between the point's min and max (or a plausible raw value when it has none)."""
    fraction = (index + 1) / (count + 1)
    if point.scale_exponent is not None or point.min is None or point.max is None:
        raw = 100 + 37 * index  # a raw register value, then
        if point.type.startswith("int") and index % 2:
            raw = -raw
        value: float = raw * point.scale + point.offset
    else:
        value = point.min + (point.max - point.min) * fraction
    if point.type in ("float32", "float64"):
        return round(value, 1)
    raw = round((value - point.offset) / point.scale)
    while raw in point.not_available:
        raw += 1
    if point.scale == 1 and point.offset == 0:
        return raw
    return round(raw * point.scale + point.offset, 9)


def assert_read_back(values: dict[str, Value], expected: dict[str, Value]) -> None:
    assert set(values) == set(expected)
    for name, want in expected.items():
        got = values[name]
        if isinstance(want, bool | str):
            assert got == want, name
            assert type(got) is type(want), name
        else:
            assert not isinstance(got, bool | str), name
            assert got == pytest.approx(want, rel=1e-6), name


@pytest.mark.parametrize("name", NAMES)
def test_template_reads_back_what_the_simulator_serves(name: str) -> None:
    template = TEMPLATES[name]
    points = modbus_points(template.points)
    served, expected = plausible_values(template)
    # generated values differ from point to point, so that a mix-up of two points shows
    fixed = {p.scale_exponent for p in points} | set(PLAUSIBLE.get(name, {}))
    generated = [v for n, v in expected.items() if n not in fixed and not isinstance(v, bool)]
    assert generated
    assert len(set(generated)) == len(generated)
    slave = SimulatedSlave(7, points)
    for point_name, value in served.items():
        slave.set_value(point_name, value)
    result = poll([slave], device_for(template, unit=7))
    assert result.errors == ()
    assert_read_back(dict(result.values), expected)
    for point in points:
        if point.min is not None and point.max is not None and point.scale_exponent is None:
            value = result.values[point.name]
            assert isinstance(value, int | float)
            assert point.min <= value <= point.max, point.name


def test_sdm120_float_registers_are_big_endian_words() -> None:
    """230.5 V is 0x43668000 on the wire: high word at the lower address (mbmd RTUIeee754)."""
    template = TEMPLATES["eastron-sdm120"]
    slave = SimulatedSlave(1, modbus_points(template.points))
    slave.set_registers("input", 0x0000, [0x4366, 0x8000])
    assert slave.value("voltage") == 230.5
    result = poll([slave], device_for(template))
    assert result.values["voltage"] == 230.5


def sunspec_slave(**raw: int) -> tuple[SimulatedSlave, dict[str, Value]]:
    template = TEMPLATES["sunspec-inverter"]
    served, expected = plausible_values(template)
    slave = SimulatedSlave(1, modbus_points(template.points))
    for point_name, value in served.items():
        slave.set_value(point_name, value)
    points = {p.name: p for p in modbus_points(template.points)}
    for name, registers in raw.items():
        point = points[name]
        words = [registers >> 16 & 0xFFFF, registers & 0xFFFF] if point.count == 2 else [registers]
        slave.set_registers("holding", point.address, words)
    return slave, expected


@pytest.mark.parametrize(
    ("point", "raw"),
    [
        ("ac_power", 0x8000),  # int16
        ("frequency", 0xFFFF),  # uint16
        ("energy", 0),  # acc32
        ("operating_state", 0xFFFF),  # enum16
        ("events", 0xFFFFFFFF),  # bitfield32
    ],
)
def test_sunspec_point_holding_not_implemented_is_absent(point: str, raw: int) -> None:
    slave, expected = sunspec_slave(**{point: raw})
    result = poll([slave], device_for(TEMPLATES["sunspec-inverter"]))
    assert point not in result.values
    assert result.errors == ()
    del expected[point]
    assert_read_back(dict(result.values), expected)


def test_sunspec_points_whose_scale_factor_is_not_implemented_are_absent() -> None:
    slave, expected = sunspec_slave(v_sf=0x8000)
    result = poll([slave], device_for(TEMPLATES["sunspec-inverter"]))
    voltages = {"voltage_ab", "voltage_bc", "voltage_ca", "voltage_an", "voltage_bn", "voltage_cn"}
    assert not voltages & set(result.values)
    assert "v_sf" not in result.values
    for name in (*voltages, "v_sf"):
        del expected[name]
    assert_read_back(dict(result.values), expected)


def test_sunspec_scale_factors_scale_by_powers_of_ten() -> None:
    slave, _ = sunspec_slave(
        ac_power=4321, w_sf=0xFFFF, energy=123_456_789, wh_sf=2, frequency=5002, hz_sf=0xFFFE
    )
    result = poll([slave], device_for(TEMPLATES["sunspec-inverter"]))
    assert result.values["ac_power"] == pytest.approx(432.1)
    assert result.values["energy"] == pytest.approx(12_345_678_900)
    assert result.values["frequency"] == pytest.approx(50.02)
    assert result.values["sunspec_marker"] == "SunS"
    assert result.values["inverter_model_id"] == 103


def test_sunspec_negative_power_reads_negative() -> None:
    slave, _ = sunspec_slave(ac_power=0xFF9C, w_sf=0)  # -100 W: drawing from the grid
    result = poll([slave], device_for(TEMPLATES["sunspec-inverter"]))
    assert result.values["ac_power"] == -100


def test_two_templates_on_one_bus_read_independently() -> None:
    meter, soil = TEMPLATES["eastron-sdm120"], TEMPLATES["soil-3in1"]
    meter_slave, soil_slave = (
        SimulatedSlave(1, modbus_points(meter.points)),
        SimulatedSlave(2, modbus_points(soil.points)),
    )
    meter_slave.set_value("voltage", 231.4)
    soil_slave.set_value("temperature", -3.2)
    soil_slave.set_value("moisture", 41.7)

    async def body() -> tuple[Poll, Poll]:
        async with (
            ModbusSimulator([meter_slave, soil_slave], port=0) as sim,
            ModbusDriver(bus(sim.port)) as driver,
        ):
            return await driver.read(device_for(meter, 1)), await driver.read(device_for(soil, 2))

    meter_poll, soil_poll = run(body(), timeout=10)
    assert meter_poll.values["voltage"] == 231.4
    assert soil_poll.values["temperature"] == -3.2
    assert soil_poll.values["moisture"] == 41.7


# --- configuration and command line -------------------------------------------------------------


def site_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        textwrap.dedent(
            """
            [agent]
            id = "gw"
            data_dir = "data"
            [[bus]]
            name = "field"
            type = "modbus-tcp"
            host = "127.0.0.1"
            port = 5020
            [[device]]
            name = "meter"
            bus = "field"
            unit = 1
            template = "eastron-sdm120"
            [[device]]
            name = "inverter"
            bus = "field"
            unit = 126
            template = "sunspec-inverter"
            """
        )
        + textwrap.dedent(extra),
        encoding="utf-8",
    )
    return path


def test_check_plan_lists_the_requests_of_template_devices(tmp_path: Path) -> None:
    config = site_config(tmp_path)
    result = cli("check", "--plan", "-c", str(config), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"{config}: ok (1 bus(es), 2 device(s), 59 point(s), 0 warning(s))"
    assert lines[1] == "device meter (bus field, unit 1, every 10s): 3 request(s) for 10 point(s)"
    assert lines[2].startswith("  input 0-31 (32 registers): voltage, current, active_power,")
    assert lines[3] == "  input 70-75 (6 registers): frequency, import_energy, export_energy"
    assert lines[4] == "  input 342-343 (2 registers): total_energy"
    assert lines[5] == (
        "device inverter (bus field, unit 126, every 10s): 1 request(s) for 49 point(s)"
    )
    assert lines[6].startswith("  holding 40000-40110 (111 registers): sunspec_marker, ")
    assert len(lines) == 7


def test_templates_lists_every_builtin_template(tmp_path: Path) -> None:
    result = cli("templates", "-c", str(tmp_path / "none.toml"), timeout=30)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.split()[0] in TEMPLATES]
    assert [line.split()[0] for line in lines] == NAMES
    for line in lines:
        name = line.split()[0]
        assert f"{len(TEMPLATES[name].points)} points" in line
        assert TEMPLATES[name].description in line


def test_templates_shows_the_points_of_one(tmp_path: Path) -> None:
    result = cli("templates", "sunspec-inverter", "-c", str(tmp_path / "none.toml"), timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("template sunspec-inverter: SunSpec inverter")
    assert lines[1] == f"source: {ModbusDriver.templates_dir / 'sunspec.toml'}"
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == {p.name for p in TEMPLATES["sunspec-inverter"].points}
    assert rows["ac_power"] == ["holding", "40083", "int16", "W", "x10^w_sf"]
    assert rows["energy"] == ["holding", "40093", "uint32", "Wh", "ABCD", "x10^wh_sf"]


@pytest.mark.parametrize(
    ("asked", "hint"),
    [
        ("nope", ""),
        ("sunspec-invertor", ' (did you mean "sunspec-inverter"?)'),
    ],
)
def test_templates_refuses_an_unknown_name_in_one_line(
    tmp_path: Path, asked: str, hint: str
) -> None:
    result = cli("templates", asked, "-c", str(tmp_path / "none.toml"), timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f'edge-agent templates: no template named "{asked}"{hint}; run `edge-agent templates`'
    ]


def test_user_template_named_like_a_builtin_replaces_it(tmp_path: Path) -> None:
    config = site_config(
        tmp_path,
        """
        [[template]]
        name = "eastron-sdm120"
        description = "our meters run at a different map"
          [[template.point]]
          name = "voltage"
          table = "holding"
          address = 100
          type = "float32"
          unit = "V"
        """,
    )
    loaded, warnings = load_config(config)
    assert warnings == []
    meter = loaded.device("meter")
    assert meter.points == (
        ModbusPoint("voltage", table="holding", address=100, type="float32", unit="V"),
    )
    # the other built-in templates stay available, and the replacement is listed once
    assert loaded.device("inverter").points == TEMPLATES["sunspec-inverter"].points
    names = [t.name for t in loaded.templates]
    assert sorted(names) == NAMES
    user = next(t for t in loaded.templates if t.name == "eastron-sdm120")
    assert user.source == str(config)
    assert user.description.startswith("our meters")
    # …for that configuration only: the built-in one is untouched
    assert TEMPLATES["eastron-sdm120"] == next(
        t for t in builtin_templates() if t.name == "eastron-sdm120"
    )
    assert len(TEMPLATES["eastron-sdm120"].points) == 10


def test_device_points_add_to_a_builtin_template(tmp_path: Path) -> None:
    config = site_config(tmp_path)
    text = config.read_text(encoding="utf-8").replace(
        'template = "eastron-sdm120"\n',
        'template = "eastron-sdm120"\n'
        '  [[device.point]]\n  name = "relay"\n  table = "coil"\n  address = 0\n',
        1,
    )
    config.write_text(text, encoding="utf-8")
    meter = load_config(config)[0].device("meter")
    assert [p.name for p in meter.points][-2:] == ["total_energy", "relay"]
    assert meter.points[-1] == ModbusPoint("relay", table="coil", address=0, type="bool")


@pytest.mark.parametrize("name", NAMES)
def test_generated_values_are_readings_not_sentinels(name: str) -> None:
    """The value generator itself: a value for every point, never a "not available" one."""
    template = TEMPLATES[name]
    served, expected = plausible_values(template)
    assert served.keys() == expected.keys() == {p.name for p in template.points}
    slave = SimulatedSlave(1, modbus_points(template.points))
    for point_name, value in served.items():
        slave.set_value(point_name, value)
    for point in template.points:
        slave.value(point.name)  # raises NotAvailable on a sentinel
