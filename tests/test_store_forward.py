"""Store and forward with real parts: broker outages, kill -9, restarts. Nothing may be lost."""

from __future__ import annotations

import asyncio
import json
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

from agent.testkit import run
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from agent.testkit.process import AgentProcess, cli
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

POINTS = (
    ModbusPoint("level", table="holding", address=0, type="uint16"),
    ModbusPoint("temp", table="input", address=0, type="int16"),
)
UNITS = (1, 2, 3)
TOPIC = "sf/gw/telemetry"


def site(tmp_path: Path, broker: Broker, port: int) -> Path:
    devices = "".join(
        textwrap.dedent(
            f"""
            [[device]]
            name = "tank{unit}"
            bus = "plc"
            unit = {unit}
            interval = "200ms"
              [[device.point]]
              name = "level"
              address = 0
              [[device.point]]
              name = "temp"
              table = "input"
              type = "int16"
              address = 0
            """
        )
        for unit in UNITS
    )
    config = tmp_path / "site.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [agent]
            id = "gw"
            data_dir = "data"
            [buffer]
            flush_interval = "1s"
            [mqtt]
            url = "{broker.url}"
            topic_prefix = "sf"
            batch_interval = "100ms"
            reconnect_max = "3s"  # the test waits for the reconnection, not for a fleet's jitter
            [[bus]]
            name = "plc"
            type = "modbus-tcp"
            host = "127.0.0.1"
            port = {port}
            timeout = "300ms"
            """
        )
        + devices
    )
    return config


def slaves() -> list[SimulatedSlave]:
    result = []
    for unit in UNITS:
        slave = SimulatedSlave(unit, POINTS)
        slave.set_value("level", 100 + unit)
        slave.set_value("temp", -unit)
        result.append(slave)
    return result


def batches(sub: Subscriber) -> list[dict[str, Any]]:
    return [p for t, p, _ in sub.messages if t == TOPIC]


def test_a_30_second_broker_outage_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    async def body() -> None:
        async with ModbusSimulator(slaves()) as sim:
            agent = AgentProcess(site(tmp_path, broker, sim.port))
            agent.start()
            try:
                async with Subscriber(broker.host, broker.port, TOPIC, "watcher") as sub:
                    before = await sub.wait_samples(6)
                broker.stop()
                await asyncio.sleep(30)  # the outage under test: 30 s of polls go to the buffer
                broker.start()
                restarted_ms = time.time() * 1000
                async with Subscriber(broker.host, broker.port, TOPIC, "watcher") as sub:
                    newest_before = max(s["id"] for s in before)
                    seen_before = {s["id"] for s in before}

                    def complete(_: object) -> bool:
                        # 30 s x 3 devices x 5 polls/s: about 450 samples taken in the outage,
                        # all of them in, with no gap left between the first and the newest
                        ids = seen_before | {s["id"] for s in sub.samples()}
                        return len(ids) >= 450 and len(ids) == max(ids) - min(ids) + 1

                    await sub.wait_for(complete, timeout=40)
                    after = sub.samples()
                    after_batches = batches(sub)
            finally:
                assert agent.stop() == 0, agent.output()

        ids = {s["id"] for s in before} | {s["id"] for s in after}
        first, last = min(ids), max(ids)
        assert ids == set(range(first, last + 1)), "a gap: a sample was lost"
        assert last - newest_before >= 400
        # the backlog came marked, and current samples went out before it had drained
        backlog_at = [i for i, b in enumerate(after_batches) if b.get("backlog")]
        current_at = [
            i
            for i, b in enumerate(after_batches)
            if not b.get("backlog") and min(s["ts"] for s in b["samples"]) >= restarted_ms - 1000
        ]
        assert backlog_at
        assert current_at
        assert current_at[0] < backlog_at[-1], "current samples waited for the backlog"
        values = {s["device"]: s["values"] for s in after}
        assert values["tank2"] == {"level": 102, "temp": -2}

    run(body(), timeout=120)


def test_kill_9_during_an_outage_loses_nothing_committed(tmp_path: Path, broker: Broker) -> None:
    async def body() -> None:
        async with ModbusSimulator(slaves()) as sim:
            config = site(tmp_path, broker, sim.port)
            broker.stop()
            agent = AgentProcess(config)
            agent.start()
            agent.wait_notified("READY=1")
            await asyncio.sleep(3)  # polls during the outage; committed within 1 s of each
            agent.signal(signal.SIGKILL)
            agent.wait()
            exported = cli("buffer", "export", "-c", str(config))
            assert exported.returncode == 0, exported.stderr
            committed = {json.loads(line)["id"] for line in exported.stdout.splitlines()}
            assert len(committed) >= 20

            broker.start()
            async with Subscriber(broker.host, broker.port, TOPIC) as sub:
                agent = AgentProcess(config)
                agent.start()
                try:
                    await sub.wait_for(
                        lambda _: committed <= {s["id"] for s in sub.samples()}, timeout=30
                    )
                    new = await sub.wait_for(
                        lambda _: any(not b.get("backlog") for b in batches(sub)), timeout=30
                    )
                finally:
                    assert agent.stop() == 0, agent.output()
            assert new
            live_ids = [s["id"] for b in batches(sub) if not b.get("backlog") for s in b["samples"]]
            assert min(live_ids) > max(committed)  # ids resume after the crash, never repeat

    run(body(), timeout=90)
