"""The `system` driver: the gateway's own health, on no bus, with its own point keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.aio import cancel_and_wait
from agent.api import local_bus
from agent.cli.tools import plan_lines
from agent.config import load_config
from agent.errors import ConfigError
from agent.service.app import Agent
from agent.testkit import run
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from drivers.system.driver import SystemDriver

CONFIG = """
[agent]
id = "gw"
data_dir = "data"
[mqtt]
url = "{url}"
topic_prefix = "s"
batch_interval = "50ms"
[[device]]
name = "gateway"
driver = "system"
interval = "200ms"
  [[device.point]]
  name = "load1"
  [[device.point]]
  name = "free_memory"
  metric = "mem_available"
  unit = "B"
  [[device.point]]
  name = "under_voltage"
  [[device.point]]
  name = "temperature"
  unit = "°C"
"""


def config_at(tmp_path: Path, text: str = CONFIG, url: str = "mqtt://127.0.0.1:1") -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text.replace("{url}", url))
    return path


def fake_root(tmp_path: Path, thermal: bool = True) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/loadavg").write_text("0.52 0.40 0.31 1/123 4567\n")
    (root / "proc/meminfo").write_text("MemTotal: 512000 kB\nMemAvailable: 256000 kB\n")
    (root / "proc/uptime").write_text("3600.5 7000.0\n")
    firmware = root / "sys/devices/platform/soc/soc:firmware"
    firmware.mkdir(parents=True)
    (firmware / "get_throttled").write_text("0x50005\n")
    if thermal:
        zone = root / "sys/class/thermal/thermal_zone0"
        zone.mkdir(parents=True)
        (zone / "temp").write_text("48312\n")
    return root


def test_a_system_device_needs_no_bus_and_reads_its_metrics(tmp_path: Path) -> None:
    config, _ = load_config(config_at(tmp_path), {})
    device = config.device("gateway")
    assert device.bus == ""
    assert device.driver == "system"
    driver = SystemDriver(local_bus(device), root=fake_root(tmp_path))
    poll = run(driver.read(device))
    assert poll.values == {
        "load1": 0.52,
        "free_memory": 256_000 * 1024,
        "under_voltage": True,
        "temperature": 48.312,
    }


def test_a_metric_the_board_lacks_is_an_error_for_that_point_only(tmp_path: Path) -> None:
    config, _ = load_config(config_at(tmp_path), {})
    device = config.device("gateway")
    poll = run(
        SystemDriver(local_bus(device), root=fake_root(tmp_path, thermal=False)).read(device)
    )
    assert "temperature" not in poll.values
    assert "load1" in poll.values
    assert poll.errors[0].startswith("device gateway: temperature: not available")


def test_its_keys_are_checked_like_the_rest(tmp_path: Path) -> None:
    text = CONFIG.replace('name = "load1"', 'name = "load_1"').replace(
        'metric = "mem_available"', 'metric = "mem_available"\n  address = 3'
    )
    text = text.replace('driver = "system"', 'driver = "system"\nbus = "plc"\nbaudrate = 9600')
    with pytest.raises(ConfigError) as caught:
        load_config(config_at(tmp_path, text), {})
    found = sorted(f"{p.line}: {p.path}: {p.message}" for p in caught.value.problems)
    assert found == [
        "12: device.gateway.bus: a system device is on no bus: remove bus",
        "13: device.gateway.baudrate: unknown key; known keys: bus, disk, driver, interval, name, point",
        '16: device.gateway.point.load_1.name: "load_1" is not a system metric (did you mean "load1"?); '
        "known: load1, load5, load15, mem_available, mem_total, disk_free, disk_total, temperature, "
        "uptime, under_voltage, throttled, under_voltage_since_boot",
        "20: device.gateway.point.free_memory.address: unknown key; known keys: deadband, heartbeat, "
        "max, metric, min, name, offset, scale, unit, writable",
    ]


def test_an_unknown_driver_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config_at(tmp_path, CONFIG.replace('"system"', '"sytem"')), {})
    [problem] = caught.value.problems
    assert problem.path == "device.gateway.driver"
    assert problem.message.startswith("unknown driver 'sytem'; known drivers: ")
    assert {"modbus", "system"} <= set(problem.message.split(": ")[1].split(", "))


def test_the_agent_polls_it_and_publishes_it(tmp_path: Path, broker: Broker) -> None:
    config, _ = load_config(config_at(tmp_path, url=broker.url), {})

    async def body() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(Agent(config).run(stop))
        try:
            async with Subscriber(broker.host, broker.port, "s/gw/telemetry") as sub:
                samples = await sub.wait_samples(2)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await cancel_and_wait(task)
        assert samples[0]["device"] == "gateway"
        assert samples[0]["values"]["free_memory"] > 0

    run(body(), timeout=30)


def test_check_plan_lists_a_device_on_no_bus(tmp_path: Path) -> None:
    config, _ = load_config(config_at(tmp_path), environ={})
    assert plan_lines(config) == [
        "device gateway (on no bus, every 0.2s): 0 request(s) for 4 point(s)"
    ]
