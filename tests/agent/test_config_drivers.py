"""What a driver declares shapes the configuration: its bus types, bus keys, device and point
keys, and templates of its own points; the loader knows none of them by itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import registry
from agent.config import load_config
from agent.errors import ConfigError, UnknownDriverError

HEAD = """
[agent]
id = "gw"
data_dir = "data"
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.toml"
    path.write_text(HEAD + text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    return [f"{p.path}: {p.message}" for p in caught.value.problems if not p.warning]


def test_a_template_holds_the_points_of_the_driver_it_names(tmp_path: Path) -> None:
    text = """
[[template]]
name = "gateway-load"
driver = "system"
  [[template.point]]
  name = "load"
  metric = "load1"

[[device]]
name = "gw"
driver = "system"
template = "gateway-load"
"""
    path = tmp_path / "config.toml"
    path.write_text(HEAD + text, encoding="utf-8")
    config, _ = load_config(path, {})
    (point,) = config.device("gw").points
    assert (point.name, dict(point.options)) == ("load", {"metric": "load1"})


def test_a_device_takes_only_the_templates_of_its_own_driver(tmp_path: Path) -> None:
    text = """
[[template]]
name = "gateway-load"
driver = "system"
  [[template.point]]
  name = "load"
  metric = "load1"

[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"

[[device]]
name = "meter"
bus = "plc"
template = "gateway-load"
"""
    found = problems(tmp_path, text)
    assert found == ['device.meter.template: no template named "gateway-load"']


def test_a_template_point_is_checked_by_its_driver(tmp_path: Path) -> None:
    text = """
[[template]]
name = "wrong"
driver = "system"
  [[template.point]]
  name = "load"
  metric = "load1"
  address = 3
"""
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith("template.wrong.point.load.address: unknown key")


def test_an_unknown_bus_type_lists_the_core_s_and_the_drivers(tmp_path: Path) -> None:
    text = """
[[bus]]
name = "plc"
type = "modbus-tpc"
host = "127.0.0.1"
"""
    (found,) = problems(tmp_path, text)
    assert found.startswith('bus.plc.type: "modbus-tpc" is not one of ')
    for name in ("modbus-rtu", "modbus-rtu-over-tcp", "modbus-tcp", "serial"):
        assert name in found
    assert found.endswith('(did you mean "modbus-tcp"?)')


def test_the_bus_keys_of_a_driver_are_its_buses_own(tmp_path: Path) -> None:
    text = """
[[bus]]
name = "ttl"
type = "serial"
port = "/dev/ttyUSB0"
max_registers = 10
"""
    (found,) = problems(tmp_path, text)
    assert found.startswith("bus.ttl.max_registers: unknown key")


def test_a_bus_type_is_found_unloaded_through_its_entry_point() -> None:
    kind, owner = registry.bus_type("modbus-rtu")
    assert (kind.name, kind.link, owner) == ("modbus-rtu", "serial", "modbus")
    assert registry.bus_type("serial")[1] is None
    with pytest.raises(UnknownDriverError):
        registry.bus_type("profibus")
