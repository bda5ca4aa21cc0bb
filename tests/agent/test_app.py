"""The agent in-process with an injected clock: a Pi that boots in 1970, then NTP answers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.aio import cancel_and_wait
from agent.clock import Clock
from agent.config import load_config
from agent.service.app import Agent
from agent.testkit import run, until
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

POINT = ModbusPoint("level", table="holding", address=0, type="uint16")
BOOTED_AT = 3.0  # seconds after 1970-01-01: what a Pi without RTC believes


@dataclass(frozen=True)
class PiClock(Clock):
    """Wall time starts at 1970 until ``ntp_answers()``; monotonic time is real."""

    synced: list[bool] = field(default_factory=lambda: [False])

    def wall(self) -> float:
        if self.synced[0]:
            return time.time()
        return BOOTED_AT + time.monotonic() - START

    def ntp_answers(self) -> None:
        self.synced[0] = True

    def boot_id(self) -> str:
        return "test-boot"


START = time.monotonic()


def write_config(tmp_path: Path, broker: Broker, modbus_port: int) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        f"""
[agent]
id = "pi"
data_dir = "data"
[mqtt]
url = "{broker.url}"
topic_prefix = "t"
batch_interval = "50ms"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
port = {modbus_port}
timeout = "300ms"
[[device]]
name = "tank"
bus = "plc"
interval = "200ms"
  [[device.point]]
  name = "level"
  address = 0
"""
    )
    return path


def test_samples_before_ntp_are_marked_then_restamped(tmp_path: Path, broker: Broker) -> None:
    clock = PiClock()
    slave = SimulatedSlave(1, (POINT,))
    slave.set_value("level", 42)

    async def body() -> None:
        async with ModbusSimulator([slave]) as sim:
            config, _ = load_config(write_config(tmp_path, broker, sim.port), {})
            stop = asyncio.Event()
            agent = Agent(config, clock=clock)
            task = asyncio.create_task(agent.run(stop))
            try:
                topic, session = "t/pi/telemetry", "clock-watcher"
                async with Subscriber(broker.host, broker.port, topic, session) as sub:
                    early = await sub.wait_samples(2)
                broker.stop()
                await until(lambda: not agent.uplink.connected, 10, "the link to go down")
                held_from = agent.buffer.next_id  # from here on samples wait in the buffer
                await until(lambda: agent.buffer.next_id >= held_from + 3, 10, "3 samples held")
                clock.ntp_answers()
                synced_at = time.time()
                broker.start()
                async with Subscriber(broker.host, broker.port, topic, session) as sub:
                    later = await sub.wait_samples(8, timeout=30)
            finally:
                stop.set()
                await asyncio.wait_for(task, 20)
                await cancel_and_wait(task)

        # sent while the clock said 1970: marked, never passed off as real times
        assert all(s["clock"] == "unsynced" and s["ts"] < 3_600_000 for s in early)
        held = [s for s in later if held_from <= s["id"] < held_from + 3]
        assert len(held) == 3
        for sample in held:  # taken before NTP answered, sent after: re-stamped
            assert "clock" not in sample
            assert synced_at * 1000 - 30_000 < sample["ts"] < synced_at * 1000
        assert all(s["ts"] > synced_at * 1000 - 30_000 for s in later if "clock" not in s)

    run(body(), timeout=60)


def test_health_reports_devices_buffer_link_and_gateway(tmp_path: Path, broker: Broker) -> None:
    alive, dead = SimulatedSlave(1, (POINT,)), SimulatedSlave(2, (POINT,))
    dead.dead = True

    async def body() -> None:
        async with ModbusSimulator([alive, dead]) as sim:
            text = write_config(tmp_path, broker, sim.port).read_text()
            text = text.replace(
                'batch_interval = "50ms"', 'batch_interval = "50ms"\nhealth_interval = "500ms"'
            )
            text += '[[device]]\nname = "silent"\nbus = "plc"\nunit = 2\ninterval = "200ms"\n'
            text += '  [[device.point]]\n  name = "level"\n  address = 0\n'
            (tmp_path / "site.toml").write_text(text)
            config, _ = load_config(tmp_path / "site.toml", {})
            stop = asyncio.Event()
            task = asyncio.create_task(Agent(config).run(stop))
            try:
                async with Subscriber(broker.host, broker.port, "t/pi/health") as sub:
                    await sub.wait_for(
                        lambda m: any(p["devices"]["silent"]["errors"] >= 2 for _, p, _ in m),
                        timeout=20,
                    )
            finally:
                stop.set()
                await asyncio.wait_for(task, 20)
        health = sub.payloads("health")[-1]
        assert health["devices"]["tank"]["state"] == "ok"
        assert health["devices"]["tank"]["ok"] > 0
        silent = health["devices"]["silent"]
        assert silent["state"] == "failing"
        assert "no response" in silent["last_error"]
        assert silent["faults"]["timeout"] >= 2
        assert set(health["buffer"]) == {"depth", "oldest", "bytes", "dropped", "lost", "next_id"}
        assert health["link"] == {"reconnects": 0, "refused": 0, "too_large": 0}
        assert health["gateway"]["disk_free"] > 0
        assert "load" in health["gateway"]

    run(body(), timeout=60)
