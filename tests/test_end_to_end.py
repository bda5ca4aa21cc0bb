"""The whole path, with real parts: pymodbus slave → `edge-agent run` → Mosquitto → subscriber."""

from __future__ import annotations

import asyncio
import signal
import textwrap
import time
from pathlib import Path

from agent import __version__
from agent.testkit import run
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from agent.testkit.process import AgentProcess
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

METER_POINTS = (
    ModbusPoint("voltage", table="input", address=0, type="float32"),
    ModbusPoint("energy", table="holding", address=10, type="uint32", order="CDAB", scale=0.01),
    ModbusPoint("relay", table="coil", address=3, type="bool"),
    ModbusPoint("serial", table="holding", address=20, type="string", length=6),
)


def site_config(tmp_path: Path, broker: Broker, modbus_port: int, interval: str = "1s") -> Path:
    config = tmp_path / "site.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [agent]
            id = "gw-test"
            data_dir = "data"
            [mqtt]
            url = "{broker.url}"
            topic_prefix = "fields"
            batch_interval = "100ms"
            [[bus]]
            name = "plc"
            type = "modbus-tcp"
            host = "127.0.0.1"
            port = {modbus_port}
            timeout = "500ms"
            [[device]]
            name = "meter"
            bus = "plc"
            unit = 3
            interval = "{interval}"
            """
        )
        + "".join(
            f"""
  [[device.point]]
  name = "{p.name}"
  table = "{p.table}"
  address = {p.address}
  type = "{p.type}"
  order = "{p.order}"
  scale = {p.scale}
"""
            + (f"  length = {p.length}\n" if p.length else "")
            for p in METER_POINTS
        )
    )
    return config


def meter_slave() -> SimulatedSlave:
    slave = SimulatedSlave(3, METER_POINTS)
    slave.set_value("voltage", 231.25)
    slave.set_value("energy", 1234.56)
    slave.set_value("relay", True)
    slave.set_value("serial", "SN4711")
    return slave


def test_readings_arrive_as_the_contract_says(tmp_path: Path, broker: Broker) -> None:
    async def body() -> None:
        async with (
            ModbusSimulator([meter_slave()]) as sim,
            Subscriber(broker.host, broker.port, "fields/gw-test/#") as sub,
        ):
            agent = AgentProcess(site_config(tmp_path, broker, sim.port))
            started = int(time.time() * 1000)
            agent.start()
            try:
                samples = await sub.wait_samples(2)
            finally:
                assert agent.stop() == 0, agent.output()
            await sub.wait_for(lambda _: {"state": "offline"} in sub.payloads("status"))

            status = [(p, r) for t, p, r in sub.messages if t == "fields/gw-test/status"]
            online = status[0][0]
            assert online["state"] == "online"
            assert online["version"] == __version__
            assert started - 5000 <= online["started"] <= started + 5000
            assert status[-1][0] == {"state": "offline"}  # published by the agent on SIGTERM

            meta = sub.payloads("meta")[0]
            points = meta["devices"]["meter"]["points"]
            assert meta["devices"]["meter"]["driver"] == "modbus"
            assert points["energy"] == {"type": "uint32", "unit": "", "writable": False}

            batch = sub.payloads("telemetry")[0]
            assert set(batch) == {"agent", "samples"}
            assert batch["agent"] == "gw-test"
            first = samples[0]
            assert set(first) == {"id", "device", "ts", "values"}
            assert first["device"] == "meter"
            assert first["values"] == {
                "voltage": 231.25,
                "energy": 1234.56,
                "relay": True,
                "serial": "SN4711",
            }
            assert isinstance(first["ts"], int)
            assert abs(first["ts"] - started) < 10_000
            assert first["ts"] % 1000 < 500  # aligned to the 1 s interval, plus wake-up latency
            ids = [s["id"] for s in samples]
            assert ids == sorted(ids)
            assert len(set(ids)) == len(ids)

    run(body(), timeout=60)


def test_broker_outage_loses_nothing_and_ids_continue(tmp_path: Path, broker: Broker) -> None:
    async def body() -> None:
        async with ModbusSimulator([meter_slave()]) as sim:
            agent = AgentProcess(site_config(tmp_path, broker, sim.port, interval="200ms"))
            agent.start()
            topic, session = "fields/gw-test/telemetry", "outage-watcher"
            try:
                async with Subscriber(broker.host, broker.port, topic, session) as sub:
                    before = await sub.wait_samples(3)
                broker.stop()
                await _outage(1.0)  # the agent keeps polling while the broker is away
                broker.start()
                async with Subscriber(broker.host, broker.port, topic, session) as sub:
                    after = await sub.wait_samples(10, timeout=30)
            finally:
                assert agent.stop() == 0, agent.output()
        first_before = min(s["id"] for s in before)
        ids_after = {s["id"] for s in after}
        seen = {s["id"] for s in before} | ids_after
        assert max(ids_after) > max(s["id"] for s in before)
        # every id from the first one seen to the newest arrived: nothing was lost in the outage
        assert seen >= set(range(first_before, max(ids_after) + 1))

    run(body(), timeout=90)


async def _outage(seconds: float) -> None:
    """How long the broker stays away: a duration under test, not a synchronisation."""
    await asyncio.sleep(seconds)


def test_sigterm_stops_cleanly_without_a_broker(tmp_path: Path, broker: Broker) -> None:
    broker.stop()
    agent = AgentProcess(site_config(tmp_path, broker, 1))
    agent.start()
    agent.wait_notified("READY=1")
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0, agent.output()
    assert "Traceback" not in agent.output()
