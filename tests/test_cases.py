"""Golden cases: every directory under tests/cases/ is one configuration and what it must give.

A case holds ``config.toml`` and either

* ``error.txt``: the exact lines ``edge-agent check -c config.toml`` prints to stderr (exit 2),
  with ``{dir}`` standing for the case's directory; or
* ``simulate.json`` (``{"device": {"point": value}}``, set through ``SimulatedSlave.set_value``,
  in file order) and ``expected.json`` (``{"device": {"point": value}}``: the values one poll of
  each device reads, nothing more, with JSON's int/float distinction kept). The config names its
  one bus's port as ``{port}``; the test serves the simulated devices on a free port of
  127.0.0.1 with a real pymodbus server and fills it in.

To add a case, make a directory named after what it pins and write those files; to see what
a config gives, run ``edge-agent check -c config.toml`` or the test with ``-k NAME``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, load_config
from agent.model import Poll, Value
from agent.testkit import run
from agent.testkit.process import cli
from drivers.modbus import ModbusDriver
from drivers.modbus.simulator import ModbusSimulator, slaves_for_bus

CASES = Path(__file__).parent / "cases"
ALL = sorted(path for path in CASES.iterdir() if path.is_dir())


def test_there_are_cases_of_both_kinds() -> None:
    kinds = {(case / "error.txt").exists() for case in ALL}
    assert kinds == {True, False}


@pytest.mark.parametrize("case", ALL, ids=[case.name for case in ALL])
def test_case(case: Path, tmp_path: Path) -> None:
    files = {path.name for path in case.iterdir()}
    if "error.txt" in files:
        assert files == {"config.toml", "error.txt"}, f"{case.name}: unexpected files"
        refused(case)
    else:
        assert files == {"config.toml", "simulate.json", "expected.json"}, f"{case.name}: files"
        reads(case, tmp_path)


def refused(case: Path) -> None:
    config = case / "config.toml"
    result = cli("check", "-c", str(config), timeout=30)
    expected = (case / "error.txt").read_text(encoding="utf-8").replace("{dir}", str(case))
    assert result.stderr.splitlines() == expected.splitlines()
    assert (result.returncode, result.stdout) == (2, "")


def reads(case: Path, tmp_path: Path) -> None:
    text = (case / "config.toml").read_text(encoding="utf-8")
    assert text.count("{port}") == 1, "a value case has one bus, on port {port}"
    simulate: dict[str, dict[str, Any]] = load_json(case / "simulate.json")
    expected: dict[str, dict[str, Any]] = load_json(case / "expected.json")

    def configured(port: int) -> Config:
        path = tmp_path / "config.toml"
        path.write_text(text.replace("{port}", str(port)), encoding="utf-8")
        config, warnings = load_config(path)
        assert warnings == []
        return config

    # The devices' points do not depend on the port: build the slaves, then serve them on a
    # free port and load the configuration again with it.
    devices = configured(502).devices
    assert set(simulate) == set(expected) == {d.name for d in devices}
    slaves = slaves_for_bus(devices)
    for device, slave in zip(devices, slaves, strict=True):
        for point, value in simulate[device.name].items():
            slave.set_value(point, value)

    async def poll_all() -> dict[str, Poll]:
        async with ModbusSimulator(slaves, host="127.0.0.1", port=0) as sim:
            config = configured(sim.port)
            (bus,) = config.buses
            async with ModbusDriver(bus) as driver:
                return {d.name: await driver.read(d) for d in config.devices}

    polls = run(poll_all(), timeout=20)
    for name, poll in polls.items():
        assert poll.errors == (), name
        assert typed(poll.values) == typed(expected[name]), name


def load_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as file:
        return json.load(file)


def typed(values: Any) -> dict[str, tuple[str, Value]]:
    """Values with their JSON kind, so that 1, 1.0 and true are three different readings."""
    kinds = {bool: "bool", int: "int", float: "float", str: "str"}
    return {name: (kinds[type(value)], value) for name, value in dict(values).items()}
