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
from drivers.modbus.schema import ModbusPoint, modbus_point, modbus_points
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

#: The Modbus driver's own templates (other drivers ship theirs, tested beside them).
TEMPLATES: dict[str, TemplateConfig] = {
    t.name: t for t in builtin_templates() if t.driver == "modbus"
}
NAMES = sorted(TEMPLATES)
#: Templates whose points SunSpec discovery places (tests/drivers/test_modbus_sunspec.py).
DISCOVERED = sorted(
    name for name, t in TEMPLATES.items() if any(modbus_point(p).sunspec for p in t.points)
)
#: Templates of points at fixed addresses.
FIXED = sorted(set(NAMES) - set(DISCOVERED))

#: Requests one poll makes with a default BusConfig (merge_gap 8, 125 registers): the README
#: table. A change here is a change in what a device costs on its bus.
REQUESTS = {
    "apogee-sp522": 1,
    "eastron-sdm120": 3,
    "eastron-sdm630": 3,
    "sensecap-one-weather": 1,
    "sensecap-soil-mtec-02": 1,
    "soil-3in1": 1,
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

UNITS = {"", "V", "A", "W", "VA", "var", "Hz", "kWh", "Wh", "°C", "%", "uS/cm", "mg/L", "W/m2"}
UNITS |= {"m/s", "°", "hPa", "Pa", "lx"}

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
    assert set(FIXED) == set(REQUESTS), "a new template needs its row in REQUESTS (and the README)"
    assert DISCOVERED == ["sunspec-inverter", "sunspec-meter", "sunspec-mppt"]
    assert {Path(t.source).parent for t in templates} == {ModbusDriver.templates_dir}


@pytest.mark.parametrize("name", NAMES)
def test_template_has_a_description_and_names_its_source(name: str) -> None:
    template = TEMPLATES[name]
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name)
    assert template.description.strip()
    top = header(template)
    assert f"# {name} — source: " in top, f"{template.source} must name the source of {name}"
    assert "Bus defaults:" in top


@pytest.mark.parametrize("name", FIXED)
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


@pytest.mark.parametrize("name", FIXED)
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


# --- read back through the simulator -----------------------------------------------------------


def plausible_values(template: TemplateConfig) -> tuple[dict[str, Value], dict[str, Value]]:
    """What to serve on every point (through ``set_value``) and what a poll must then read:
    distinct values within each point's min/max."""
    points = modbus_points(template.points)
    served: dict[str, Value] = {}
    for index, point in enumerate(points):
        if point.type == "string":
            served[point.name] = f"{point.name[:4].upper()}{index}"[: point.length]
        elif point.type == "bool":
            served[point.name] = index % 2 == 0
        else:
            served[point.name] = _number(point, index, len(points))
    return served, dict(served)


def _number(point: ModbusPoint, index: int, count: int) -> int | float:
    """A value between the point's min and max (or a plausible raw value when it has none)."""
    fraction = (index + 1) / (count + 1)
    if point.min is None or point.max is None:
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


@pytest.mark.parametrize("name", FIXED)
def test_template_reads_back_what_the_simulator_serves(name: str) -> None:
    template = TEMPLATES[name]
    points = modbus_points(template.points)
    served, expected = plausible_values(template)
    # generated values differ from point to point, so that a mix-up of two points shows
    generated = [v for v in expected.values() if not isinstance(v, bool)]
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
    assert lines[0] == f"{config}: ok (1 bus(es), 2 device(s), 42 point(s), 0 warning(s))"
    assert lines[1] == "device meter (bus field, unit 1, every 10s): 3 request(s) for 10 point(s)"
    assert lines[2].startswith("  input 0-31 (32 registers): voltage, current, active_power,")
    assert lines[3] == "  input 70-75 (6 registers): frequency, import_energy, export_energy"
    assert lines[4] == "  input 342-343 (2 registers): total_energy"
    # where a SunSpec unit's points are is known once the agent has polled it
    assert lines[5] == (
        "device inverter (bus field, unit 126, every 10s): 0 request(s) for 32 point(s)"
    )
    assert lines[6] == "  note: the SunSpec points are placed by discovery at the unit's first poll"
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
    assert rows["ac_power"] == ["sunspec", "inverter.W", "W"]
    assert rows["energy"] == ["sunspec", "inverter.WH", "Wh"]


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


@pytest.mark.parametrize("name", FIXED)
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
