"""Golden cases: every directory under ``drivers/<name>/cases/`` is one configuration and what
it must give, run through the driver registry the same way for every driver.

A case holds ``config.toml`` and either

* ``error.txt``: the exact lines ``edge-agent check -c config.toml`` prints to stderr (exit 2),
  with ``{dir}`` standing for the case's directory; or
* ``simulate.json`` (``{"device": {"point": value}}``: what the simulated devices hold) and
  ``expected.json`` (``{"device": {"point": value}}``: the values one poll of each device reads,
  nothing more, with JSON's int/float distinction kept). Each bus is served by its driver's
  ``Simulates`` ability, on a free port of 127.0.0.1 for a network bus (the config writes its
  port as ``{port}``) or on a pseudo-terminal for a serial one, and polled by its driver.

To add a case, make a directory named after what it pins in the driver's ``cases/`` and write
those files; to see what a config gives, run ``edge-agent check -c config.toml`` or the test
with ``-k NAME``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent import registry
from agent.api import Poll, SimulateAt, Simulates, Value
from agent.config import Config, load_config
from agent.testkit import run
from agent.testkit.process import cli

DRIVERS = Path(__file__).parent.parent / "drivers"
ALL = sorted(path for path in DRIVERS.glob("*/cases/*") if path.is_dir())
#: A port for loading a case before its buses are served (``{port}`` is then the served one).
SOME_PORT = "502"


def case_id(case: Path) -> str:
    return f"{case.parent.parent.name}/{case.name}"


def test_there_are_cases_of_both_kinds() -> None:
    kinds = {(case / "error.txt").exists() for case in ALL}
    assert kinds == {True, False}


def test_cases_come_from_more_than_one_driver() -> None:
    assert len({case.parent.parent.name for case in ALL}) > 1


@pytest.mark.parametrize("case", ALL, ids=[case_id(case) for case in ALL])
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
    path = tmp_path / "config.toml"
    path.write_text(text.replace("{port}", SOME_PORT), encoding="utf-8")
    config, warnings = load_config(path)
    assert warnings == []
    simulate: dict[str, dict[str, Any]] = load_json(case / "simulate.json")
    expected: dict[str, dict[str, Any]] = load_json(case / "expected.json")
    assert set(simulate) == set(expected) == {d.name for d in config.devices}
    polls = run(poll_simulated(config, simulate), timeout=20)
    for name, poll in polls.items():
        assert poll.errors == (), name
        assert typed(poll.values) == typed(expected[name]), name


async def poll_simulated(config: Config, values: dict[str, dict[str, Any]]) -> dict[str, Poll]:
    """Each bus served by its driver's simulation holding ``values``, each device polled once
    by its driver."""
    polls: dict[str, Poll] = {}
    async with contextlib.AsyncExitStack() as stack:
        for bus in config.buses:
            devices = config.devices_on(bus.name)
            name = registry.bus_driver(bus, devices)
            assert name is not None, f"bus {bus.name}: no driver"
            driver = registry.load_driver(name)
            assert isinstance(driver, Simulates), f"the {name} driver cannot simulate"
            where = SimulateAt(pty=True) if bus.serial else SimulateAt("127.0.0.1", port=0)
            at = replace(where, values=values)
            simulation = driver.simulation(bus, at)
            for device in devices:
                simulation.add(device)
            await stack.enter_async_context(simulation)
            polling = registry.build_driver(driver, simulation.served.bus)
            async with polling:
                polls.update({d.name: await polling.read(d) for d in devices})
    return polls


def load_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as file:
        return json.load(file)


def typed(values: Any) -> dict[str, tuple[str, Value]]:
    """Values with their JSON kind, so that 1, 1.0 and true are three different readings."""
    kinds = {bool: "bool", int: "int", float: "float", str: "str"}
    return {name: (kinds[type(value)], value) for name, value in dict(values).items()}
