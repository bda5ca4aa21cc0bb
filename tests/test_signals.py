"""`edge-agent run` as systemd drives it: SIGHUP reloads, SIGTERM stops cleanly even mid-outage,
`edge-agent status` asks it how it is."""

from __future__ import annotations

import asyncio
import json
import signal
import textwrap
from pathlib import Path
from typing import Any

from agent.testkit import run
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from agent.testkit.process import AgentProcess, cli, cli_async
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave


def site(tmp_path: Path, broker: Broker, devices: tuple[str, ...] = ("gateway",)) -> Path:
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
            topic_prefix = "sig"
            batch_interval = "100ms"
            reconnect_max = "2s"
            """
        )
        + "".join(
            f'[[device]]\nname = "{name}"\ndriver = "system"\ninterval = "100ms"\n'
            '  [[device.point]]\n  name = "uptime"\n'
            for name in devices
        )
    )
    return config


def test_sighup_reloads_a_changed_config_and_keeps_a_broken_one_out(
    tmp_path: Path, broker: Broker
) -> None:
    config = site(tmp_path, broker)
    agent = AgentProcess(config)

    async def scenario() -> None:
        async with Subscriber(broker.host, broker.port, "sig/gw/#") as sub:
            await sub.wait_samples(2, "gateway")
            good = config.read_text()
            config.write_text(good.replace('interval = "100ms"', 'interval = "0s"'))
            agent.signal(signal.SIGHUP)
            await asyncio.to_thread(agent.wait_notified, "READY=1")  # reload done (refused)
            site(tmp_path, broker, ("gateway", "well"))
            agent.signal(signal.SIGHUP)
            await asyncio.to_thread(agent.wait_notified, "READY=1")
            await sub.wait_samples(2, "well")
            metas = sub.payloads("meta")
            assert sorted(metas[-1]["devices"]) == ["gateway", "well"]

    agent.start()
    try:
        agent.wait_notified("READY=1")
        run(scenario(), timeout=40)
    finally:
        assert agent.stop() == 0
    log = agent.output()
    assert "device.gateway.interval" in log
    assert "is invalid; still running the configuration loaded before" in log
    assert "applied: 0 poll loop(s) changed, 1 added, 0 removed, 1 unchanged" in log
    assert "Traceback" not in log


def test_sigterm_during_an_outage_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    config = site(tmp_path, broker)
    agent = AgentProcess(config)
    received: list[int] = []

    async def first_part() -> None:
        # a persistent session: what arrives between this and the broker's stop is kept for it
        async with Subscriber(broker.host, broker.port, "sig/gw/telemetry", "watcher") as sub:
            await sub.wait_samples(3, "gateway")
            received.extend(s["id"] for s in sub.samples())
        broker.stop()
        await asyncio.sleep(1.0)  # readings pile up in the buffer (counted below, not assumed)

    agent.start()
    agent.wait_notified("READY=1")
    run(first_part(), timeout=30)
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    export = cli("buffer", "export", "-c", str(config))
    waiting = [json.loads(line)["id"] for line in export.stdout.splitlines()]
    assert waiting, export.stderr  # the outage left unacknowledged samples, committed at stop

    broker.start()
    again = AgentProcess(config)

    async def second_part() -> list[int]:
        async with Subscriber(broker.host, broker.port, "sig/gw/telemetry", "watcher") as sub:
            await sub.wait_for(lambda _: set(waiting) <= {s["id"] for s in sub.samples()})
            return [s["id"] for s in sub.samples()]

    again.start()
    try:
        again.wait_notified("READY=1")
        received += run(second_part(), timeout=30)
    finally:
        assert again.stop() == 0
    ids = sorted(set(received))
    assert ids == list(range(ids[0], ids[-1] + 1))  # no gap: nothing lost
    assert "Traceback" not in agent.output() + again.output()


def test_status_of_a_running_agent_and_of_none(tmp_path: Path, broker: Broker) -> None:
    """`edge-agent status` asks the agent over its socket in the data dir: devices, the one that
    fails with its raw frames, the link; and says so when no agent runs."""
    slave = SimulatedSlave(1, (ModbusPoint("level", table="holding", address=0, type="uint16"),))
    slave.set_value("level", 42)

    async def scenario() -> tuple[str, dict[str, Any]]:
        async with ModbusSimulator([slave]) as sim:
            config = site(tmp_path, broker)
            config.write_text(
                config.read_text()
                + textwrap.dedent(
                    f"""
                    [[bus]]
                    name = "plc"
                    type = "modbus-tcp"
                    host = "127.0.0.1"
                    port = {sim.port}
                    timeout = "200ms"
                    [[device]]
                    name = "tank"
                    bus = "plc"
                    unit = 1
                    interval = "300ms"
                      [[device.point]]
                      name = "level"
                      address = 0
                    [[device]]
                    name = "ghost"
                    bus = "plc"
                    unit = 9
                    interval = "300ms"
                      [[device.point]]
                      name = "level"
                      address = 0
                    """
                )
            )
            agent = AgentProcess(config)
            agent.start()
            try:
                await asyncio.to_thread(agent.wait_notified, "READY=1")
                status: dict[str, Any] = {}
                while status.get("devices", {}).get("tank", {}).get("ok", 0) < 2 or (
                    status["devices"]["ghost"]["state"] != "failing"
                ):  # bounded by run's timeout; each ask is a real round trip to the agent
                    code, out, err = await cli_async("status", "--json", "-c", str(config))
                    assert code == 0, err
                    status = json.loads(out)
                code, text, err = await cli_async("status", "-c", str(config))
                assert code == 0, err
            finally:
                assert agent.stop() == 0
        return text, status

    text, status = run(scenario(), timeout=40)
    ghost = status["devices"]["ghost"]
    assert ghost["bus"] == "plc"
    assert ghost["errors"] >= 1
    assert ghost["last_good"] is None
    assert any(frame.startswith("sent ") for frame in ghost["frames"])
    assert status["devices"]["tank"]["last_good"] <= status["now"]
    assert status["buses"]["plc"]["connected"] is True
    assert status["link"]["broker"] == broker.url
    assert status["agent"]["id"] == "gw"
    lines = text.splitlines()
    assert lines[0].startswith("agent ")
    assert "gw (edge-agent" in lines[0]
    assert any(line.split()[:2] == ["ghost", "FAILING"] for line in lines), text
    assert any("sent " in line for line in lines)  # its raw frames, under it

    gone = cli("status", "-c", str(tmp_path / "site.toml"))
    assert gone.returncode == 1
    assert gone.stderr.strip() == (
        f"edge-agent status: no agent is running with data dir {tmp_path / 'data'} "
        "(no status socket)"
    )
