"""`edge-agent simulate`: the configured devices served as real Modbus slaves."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.aio import cancel_and_wait
from agent.cli.simulate import plan, serve
from agent.config import load_config
from agent.testkit import run
from agent.testkit.net import free_ports
from drivers.modbus import ModbusDriver

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
            assert set(poll.values) == {"count"} and not poll.errors
        finally:
            stop.set()
            await cancel_and_wait(server)

    run(body(), timeout=20)
