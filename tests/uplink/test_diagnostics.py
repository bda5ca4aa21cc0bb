"""Remote diagnostics (``diag/NAME`` → ``diag/reply``) of a running agent against a real
Mosquitto and a real pymodbus slave: a read now with raw registers, a dead slave's frames,
the log, the status, and a scan refused while the bus is polled unless it pauses it; each off
unless ``[remote]`` turns it on."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.aio import cancel_and_wait
from agent.config import load_config
from agent.service.app import Agent
from agent.testkit import run
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

LEVEL = ModbusPoint("level", table="holding", address=0, type="uint16")
FLOW = ModbusPoint("flow", table="holding", address=4, type="float32")


def site(tmp_path: Path, broker: Broker, port: int, diagnostics: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [agent]
            id = "gw"
            data_dir = "data"
            [mqtt]
            url = "{broker.url}"
            topic_prefix = "dg"
            batch_interval = "50ms"
            [remote]
            {diagnostics}
            [[bus]]
            name = "plc"
            type = "modbus-tcp"
            host = "127.0.0.1"
            port = {port}
            timeout = "300ms"
            [[device]]
            name = "pump"
            bus = "plc"
            unit = 1
            interval = "300ms"
              [[device.point]]
              name = "level"
              table = "holding"
              address = 0
              type = "uint16"
              [[device.point]]
              name = "flow"
              table = "holding"
              address = 4
              type = "float32"
            """
        )
    )
    return path


Ask = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any] | None]]


async def with_agent(
    tmp_path: Path,
    broker: Broker,
    slave: SimulatedSlave,
    diagnostics: str,
    scenario: Callable[[Ask, Subscriber], Awaitable[None]],
) -> Agent:
    async with ModbusSimulator([slave]) as sim:
        config, _ = load_config(site(tmp_path, broker, sim.port, diagnostics), environ={})
        agent = Agent(config)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            async with Subscriber(broker.host, broker.port, "dg/gw/#") as sub:
                await sub.wait_samples(1, "pump")
                asked = 0

                async def ask(name: str, request: dict[str, Any]) -> dict[str, Any] | None:
                    """The reply to a request, or None when a status asked after it is
                    answered first and it is not (a diagnostic that is off)."""
                    nonlocal asked
                    asked += 1
                    ident, mark = f"q{asked}", f"m{asked}"
                    payload = json.dumps({"id": ident, **request})
                    await sub.client.publish(f"dg/gw/diag/{name}", payload, qos=1)
                    if name not in diagnostics:
                        await sub.client.publish("dg/gw/diag/status", json.dumps({"id": mark}))
                    await sub.wait_for(
                        lambda _: any(r["id"] in (ident, mark) for r in sub.payloads("diag/reply"))
                    )
                    found = [r for r in sub.payloads("diag/reply") if r["id"] == ident]
                    return found[0] if found else None

                await scenario(ask, sub)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await cancel_and_wait(task)
    return agent


ALL = "status = true\nlog = true\nframes = true\nread = true\nscan = true"


def test_a_read_now_gives_the_values_and_raw_registers(tmp_path: Path, broker: Broker) -> None:
    slave = SimulatedSlave(1, (LEVEL, FLOW))
    slave.set_value("level", 1234)
    slave.set_value("flow", 2.5)

    async def scenario(ask: Ask, sub: Subscriber) -> None:
        reply = await ask("read", {"device": "pump"})
        assert reply is not None
        assert reply["ok"] is True, reply
        result = reply["result"]
        assert result["values"] == {"level": 1234, "flow": 2.5}
        assert result["raw"]["level"] == [1234]
        assert result["raw"]["flow"] == [0x4020, 0x0000]
        assert result["raw_shown"]["level"] == "0x04D2"
        unknown = await ask("read", {"device": "nope"})
        assert unknown is not None
        assert unknown["ok"] is False
        assert 'no device "nope"' in unknown["error"]
        status = await ask("status", {})
        assert status is not None
        assert status["result"]["devices"]["pump"]["state"] == "ok"
        lines = await ask("log", {"lines": 1})
        assert lines is not None
        [line] = lines["result"]
        assert 'diag/read q2: refused: no device "nope"' in str(line["text"])
        too_many = await ask("log", {"lines": 10_000})
        assert too_many is not None
        assert "from 1 to 200" in too_many["error"]

    run(with_agent(tmp_path, broker, slave, ALL, scenario), timeout=60)


def test_a_dead_slaves_frames_say_what_was_wrong(tmp_path: Path, broker: Broker) -> None:
    slave = SimulatedSlave(1, (LEVEL, FLOW))

    async def scenario(ask: Ask, sub: Subscriber) -> None:
        slave.dead = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        # no event says the poll loop has met the silence: asked again, as ``until`` would
        while True:
            reply = await ask("frames", {"device": "pump"})
            assert reply is not None
            assert reply["ok"] is True, reply
            if any("no response" in f for f in reply["result"]["frames"]):
                break
            assert loop.time() < deadline, reply
            await asyncio.sleep(0.1)
        assert reply["result"]["state"] in ("ok", "failing")

    run(with_agent(tmp_path, broker, slave, "frames = true\nstatus = true", scenario), timeout=60)


def test_a_scan_is_refused_while_the_bus_is_polled_unless_it_pauses_it(
    tmp_path: Path, broker: Broker
) -> None:
    slave = SimulatedSlave(1, (LEVEL, FLOW))

    async def scenario(ask: Ask, sub: Subscriber) -> None:
        now = int(time.time() * 1000)
        refused = await ask("scan", {"bus": "plc", "units": "1-2", "ts": now})
        assert refused is not None
        assert refused["ok"] is False
        assert "has devices being polled (pump)" in refused["error"]
        stale = await ask("scan", {"bus": "plc", "units": "1-2", "ts": now - 3_600_000})
        assert stale is not None
        assert "expired" in stale["error"]
        scanned = await ask("scan", {"bus": "plc", "units": "1-2", "ts": now, "pause": True})
        assert scanned is not None
        assert scanned["ok"] is True, scanned
        assert scanned["result"]["paused"] == ["pump"]
        assert len(scanned["result"]["found"]) == 1, scanned  # unit 1 answers, unit 2 is silent
        count = len(sub.samples("pump"))
        await sub.wait_samples(count + 2, "pump")  # polling resumed after the scan
        # two at once on one line: the second is refused, not interleaved with the first
        request = {"bus": "plc", "units": "1-5", "ts": now, "pause": True}
        for ident in ("twin-1", "twin-2"):
            await sub.client.publish("dg/gw/diag/scan", json.dumps({"id": ident, **request}))
        await sub.wait_for(
            lambda _: {"twin-1", "twin-2"} <= {r["id"] for r in sub.payloads("diag/reply")}
        )
        twins = {r["id"]: r for r in sub.payloads("diag/reply") if r["id"].startswith("twin")}
        assert sorted(r["ok"] for r in twins.values()) == [False, True], twins
        refused = next(r for r in twins.values() if not r["ok"])
        assert "a scan is under way already" in refused["error"]

    run(with_agent(tmp_path, broker, slave, ALL, scenario), timeout=90)


def test_a_diagnostic_that_is_off_is_not_even_heard(tmp_path: Path, broker: Broker) -> None:
    slave = SimulatedSlave(1, (LEVEL, FLOW))

    async def scenario(ask: Ask, sub: Subscriber) -> None:
        assert await ask("read", {"device": "pump"}) is None
        assert await ask("log", {}) is None

    agent = run(with_agent(tmp_path, broker, slave, "status = true", scenario), timeout=60)
    assert agent.uplink.subscriptions() == ["cmd", "diag/status"]


def test_a_reload_during_a_paused_scan_starts_no_polling_on_that_bus_until_it_ends(
    tmp_path: Path, broker: Broker
) -> None:
    """A reload that changes the paused bus's devices (here: its poll interval) starts their
    poll loop only once the scan has let go of the line."""
    slave = SimulatedSlave(1, (LEVEL, FLOW))

    async def scenario() -> None:
        async with ModbusSimulator([slave]) as sim:
            path = site(tmp_path, broker, sim.port, "scan = true")
            config, _ = load_config(path, environ={})
            agent = Agent(config)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                async with Subscriber(broker.host, broker.port, "dg/gw/telemetry") as sub:
                    await sub.wait_samples(1, "pump")
                    async with agent.paused("plc"):
                        path.write_text(path.read_text().replace('"300ms"', '"200ms"'))
                        assert await agent.reload()
                        before = slave.requests
                        count = len(sub.samples("pump"))
                        # a poll of the new loop would take well under a second
                        await asyncio.sleep(1.0)
                        assert slave.requests == before
                        assert len(sub.samples("pump")) == count
                    await sub.wait_samples(count + 2, "pump")  # and then it polls
            finally:
                stop.set()
                await asyncio.wait_for(task, 20)
                await cancel_and_wait(task)

    run(scenario(), timeout=60)
