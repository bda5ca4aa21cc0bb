"""Technician tools against a real simulated slave: read, check --plan."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from agent.testkit import run
from agent.testkit.process import cli, cli_async
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

POINTS = (
    ModbusPoint("voltage", table="input", address=0, type="float32", unit="V"),
    ModbusPoint("alarm", table="holding", address=4, type="bool", bit=3),
    ModbusPoint("flags", table="holding", address=4, type="uint16"),
    ModbusPoint("pump", table="coil", address=2, type="bool"),
)


def config_for(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [agent]
            id = "gw"
            data_dir = "data"
            [[bus]]
            name = "plc"
            type = "modbus-tcp"
            host = "127.0.0.1"
            port = {port}
            timeout = "300ms"
            [[device]]
            name = "meter"
            bus = "plc"
              [[device.point]]
              name = "voltage"
              table = "input"
              address = 0
              type = "float32"
              unit = "V"
              [[device.point]]
              name = "alarm"
              address = 4
              bit = 3
              [[device.point]]
              name = "flags"
              address = 4
              [[device.point]]
              name = "pump"
              table = "coil"
              address = 2
            """
        )
    )
    return path


def slave() -> SimulatedSlave:
    meter = SimulatedSlave(1, POINTS)
    meter.set_value("voltage", 231.5)
    meter.set_value("flags", 0b1010)
    meter.set_value("pump", True)
    return meter


def test_read_prints_values_units_and_raw_registers(tmp_path: Path) -> None:
    async def body() -> None:
        async with ModbusSimulator([slave()]) as sim:
            code, out, err = await cli_async(
                "read", "-c", str(config_for(tmp_path, sim.port)), "meter"
            )
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["point", "value", "unit", "raw"]
        assert lines[1].split() == ["voltage", "231.5", "V", "0x4367", "0x8000"]
        assert lines[2].split() == ["alarm", "True", "0x000A"]
        assert lines[3].split() == ["flags", "10", "0x000A"]
        assert lines[4].split() == ["pump", "True", "1"]

    run(body())


def test_read_json_and_chosen_points(tmp_path: Path) -> None:
    async def body() -> None:
        async with ModbusSimulator([slave()]) as sim:
            config = str(config_for(tmp_path, sim.port))
            code, out, err = await cli_async("read", "-c", config, "meter", "alarm", "--json")
        assert code == 0, err
        payload = json.loads(out)
        assert payload["values"] == {"alarm": True}
        assert payload["raw"] == {"alarm": [10]}
        assert payload["errors"] == []

    run(body())


def test_read_a_dead_device_exits_1_with_one_line(tmp_path: Path) -> None:
    async def body() -> None:
        meter = slave()
        meter.dead = True
        async with ModbusSimulator([meter]) as sim:
            code, _, err = await cli_async(
                "read", "-c", str(config_for(tmp_path, sim.port)), "meter"
            )
        assert code == 1
        assert err.splitlines() == [
            "edge-agent read: bus plc, device meter (unit 1): holding 4: no response within 0.3 s; "
            "device meter: 2 more request(s) not sent",
            # and nothing came back, as the frame's note says
            "  frame: sent 00 01 00 00 00 06 01 03 00 04 00 01  <- holding 4: no response within 0.3 s",
        ]

    run(body())


def test_read_unknown_device_or_point_suggests_the_name(tmp_path: Path) -> None:
    config = str(config_for(tmp_path, 1))
    result = cli("read", "-c", config, "metre")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == 'edge-agent read: no device named "metre" (did you mean "meter"?); devices: meter'
    )
    result = cli("read", "-c", config, "meter", "volts")
    assert result.returncode == 2
    assert 'no point "volts" (did you mean "voltage"?)' in result.stderr


def test_check_plan_shows_the_requests(tmp_path: Path) -> None:
    result = cli("check", "--plan", "-c", str(config_for(tmp_path, 502)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "device meter (bus plc, unit 1, every 10s): 3 request(s) for 4 point(s)",
        "  holding 4 (1 register): alarm, flags",
        "  input 0-1 (2 registers): voltage",
        "  coil 2 (1 bit): pump",
    ]
