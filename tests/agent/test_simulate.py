"""`edge-agent simulate`: the configured devices served as real Modbus slaves."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from agent.aio import cancel_and_wait
from agent.api import Poll
from agent.cli.simulate import plan, serve
from agent.config import load_config
from agent.testkit import run
from agent.testkit.net import free_ports
from drivers.modbus import ModbusDriver
from drivers.sdi12 import Sdi12Driver

TWO_BUSES = """
[agent]
id = "gw"
data_dir = "data"
[[bus]]
name = "a"
type = "modbus-tcp"
host = "127.0.0.1"
[[bus]]
name = "b"
type = "modbus-tcp"
host = "127.0.0.1"
port = 1502
[[device]]
name = "meter-a"
bus = "a"
  [[device.point]]
  name = "volts"
  table = "input"
  type = "float32"
  address = 0
[[device]]
name = "meter-b"
bus = "b"
  [[device.point]]
  name = "count"
  address = 7
"""


def test_each_bus_gets_its_own_address(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(TWO_BUSES)
    config, _ = load_config(path, {})
    assert [(h, p, [d.name for d in ds]) for h, p, ds in plan(config, None)] == [
        ("127.0.0.1", 502, ["meter-a"]),
        ("127.0.0.1", 1502, ["meter-b"]),
    ]
    assert [(h, p) for h, p, _ in plan(config, "127.0.0.1:5020")] == [
        ("127.0.0.1", 5020),
        ("127.0.0.1", 5021),
    ]


def test_simulated_devices_answer_the_driver(tmp_path: Path) -> None:
    port = free_ports(2)  # --tcp serves the second bus on port + 1
    path = tmp_path / "c.toml"
    path.write_text(TWO_BUSES.replace("port = 1502", f"port = {port + 1}"))
    config, _ = load_config(path, {})

    async def body() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(serve(config, f"127.0.0.1:{port}", stop, ready))
        try:
            await ready.wait()
            async with ModbusDriver(config.bus("b")) as driver:
                poll = await driver.read(config.device("meter-b"))
            assert set(poll.values) == {"count"}
            assert not poll.errors
        finally:
            stop.set()
            await cancel_and_wait(server)

    run(body(), timeout=20)


SDI12_BESIDE = (
    TWO_BUSES
    + """
[[bus]]
name = "sdi"
type = "serial"
port = "/dev/ttyUSB9"
baudrate = 1200
bytesize = 7
parity = "E"
timeout = "500ms"
[[device]]
name = "soil"
bus = "sdi"
driver = "sdi12"
address = "4"
  [[device.point]]
  name = "vwc"
  index = 2
"""
)


def test_a_plain_serial_bus_is_served_on_a_pty_and_takes_no_tcp_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(SDI12_BESIDE)
    config, _ = load_config(path, {})
    assert [(h, p) for h, p, _ in plan(config, "127.0.0.1:5020")] == [
        ("127.0.0.1", 5020),
        ("127.0.0.1", 5021),
    ]

    async def body() -> Poll:
        stop, ready = asyncio.Event(), asyncio.Event()
        port = free_ports(2)
        server = asyncio.create_task(serve(config, f"127.0.0.1:{port}", stop, ready))
        try:
            await ready.wait()
            line = next(x for x in capsys.readouterr().out.splitlines() if "bus sdi:" in x)
            pty = line.rpartition(" at ")[2]
            bus = replace(config.bus("sdi"), serial_port=pty)
            async with Sdi12Driver(bus) as driver:
                return await driver.read(config.device("soil"))
        finally:
            stop.set()
            await cancel_and_wait(server)

    poll = run(body(), timeout=20)
    assert (dict(poll.values), poll.errors) == ({"vwc": 2.0}, ())
