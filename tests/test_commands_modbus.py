"""Commands end to end with real parts: Mosquitto → agent → pymodbus slave (TCP, and RTU on a
pseudo-terminal line), the reply and the slave's registers checked."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.aio import cancel_and_wait
from agent.config import load_config
from agent.service.app import Agent
from agent.testkit import run
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from agent.testkit.process import cli_async
from agent.testkit.serial import SerialProxy
from drivers.modbus.codec import encode
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

SETPOINT = ModbusPoint(
    "setpoint",
    table="holding",
    address=10,
    type="float32",
    order="CDAB",
    scale=0.1,
    writable=True,
    min=0,
    max=100,
)
RELAY = ModbusPoint("relay", table="coil", address=3, type="bool", writable=True)
LEVEL = ModbusPoint("level", table="input", address=0, type="uint16")
POINTS = (SETPOINT, RELAY, LEVEL)


def site(tmp_path: Path, broker: Broker, bus: str) -> Path:
    points = "".join(
        f"""
  [[device.point]]
  name = "{p.name}"
  table = "{p.table}"
  address = {p.address}
  type = "{p.type}"
  order = "{p.order}"
  scale = {p.scale}
  writable = {str(p.writable).lower()}
"""
        + (f"  min = {p.min}\n  max = {p.max}\n" if p.min is not None else "")
        for p in POINTS
    )
    path = tmp_path / "site.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [agent]
            id = "gw"
            data_dir = "data"
            [mqtt]
            url = "{broker.url}"
            topic_prefix = "m"
            batch_interval = "50ms"
            """
        )
        + bus
        + '[[device]]\nname = "pump"\nbus = "plc"\nunit = 1\ninterval = "300ms"\n'
        + points
    )
    return path


def command(ident: str, point: str, value: Any) -> bytes:
    return json.dumps(
        {
            "id": ident,
            "device": "pump",
            "point": point,
            "value": value,
            "ts": int(time.time() * 1000),
        }
    ).encode()


async def commanded(
    config_path: Path,
    broker: Broker,
    sent: list[bytes],
    points_after: set[str] | None,
    before_sending: Callable[[], None] = lambda: None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Agent]:
    """Run the agent, send the commands, and wait for every reply and then (unless
    ``points_after`` is None) for a sample of ``points_after`` taken after the last reply."""
    config, _ = load_config(config_path, environ={})
    agent = Agent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        async with (
            Subscriber(broker.host, broker.port, "m/gw/telemetry") as telemetry,
            Subscriber(broker.host, broker.port, "m/gw/cmd/reply") as replies,
        ):
            await telemetry.wait_samples(2, "pump")
            before_sending()
            for payload in sent:
                await replies.client.publish("m/gw/cmd", payload, qos=1)
            await replies.wait_for(lambda _: len(replies.payloads("cmd/reply")) >= len(sent))
            answered = time.time() * 1000
            if points_after is None:
                return replies.payloads("cmd/reply"), [], agent
            await telemetry.wait_for(
                lambda _: any(
                    s["ts"] > answered and points_after <= set(s["values"])
                    for s in telemetry.samples("pump")
                )
            )
            after = [s for s in telemetry.samples("pump") if s["ts"] > answered]
            return replies.payloads("cmd/reply"), after, agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await cancel_and_wait(task)


def test_a_setpoint_and_a_relay_written_over_tcp_land_in_the_slaves_registers(
    tmp_path: Path, broker: Broker
) -> None:
    slave = SimulatedSlave(1, POINTS)

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with ModbusSimulator([slave]) as sim:
            bus = f'[[bus]]\nname = "plc"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = {sim.port}\ntimeout = "300ms"\n'
            path = site(tmp_path, broker, bus)
            sent = [command("sp", "setpoint", 21.5), command("on", "relay", True)]
            replies, after, _ = await commanded(path, broker, sent, {"setpoint", "relay"})
            return replies, after

    replies, after = run(scenario(), timeout=40)
    assert sorted(replies, key=lambda r: r["id"]) == [
        {"id": "on", "ok": True, "value": True},
        {"id": "sp", "ok": True, "value": 21.5},
    ]
    # the raw registers it is read from: 215.0 as float32, words swapped (CDAB)
    assert slave.registers("holding", 10, 2) == encode(SETPOINT, 21.5)
    assert slave.value("relay") is True
    assert after[-1]["values"]["setpoint"] == 21.5
    assert after[-1]["values"]["relay"] is True


def test_a_write_racing_polls_on_a_slow_rtu_line_waits_its_turn(
    tmp_path: Path, broker: Broker
) -> None:
    """Every request answered 150 ms late: a poll is always under way when a command comes. The
    write waits for the transaction on the wire, goes ahead of the next poll, and nothing is
    garbled by two requests on the line at once."""
    slave = SimulatedSlave(1, POINTS)
    slave.slow = 0.15

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], Agent]:
        async with (
            SerialProxy(tmp_path) as proxy,
            ModbusSimulator([slave], serial_port=proxy.device_path, baudrate=19200),
        ):
            bus = (
                f'[[bus]]\nname = "plc"\ntype = "modbus-rtu"\nport = "{proxy.agent_path}"\n'
                'baudrate = 19200\ntimeout = "1s"\nmerge_gap = 0\n'
            )
            path = site(tmp_path, broker, bus)
            sent = [command(f"sp{i}", "setpoint", 10.0 + i) for i in range(3)]
            return await commanded(path, broker, sent, {"setpoint"})

    replies, after, agent = run(scenario(), timeout=60)
    assert sorted(r["id"] for r in replies) == ["sp0", "sp1", "sp2"]
    assert all(r["ok"] for r in replies), replies
    assert slave.value("setpoint") == 12.0  # the commands, in the order they came
    assert after[-1]["values"]["setpoint"] == 12.0
    faults = agent.pollers[0].driver_instance.counters["pump"]  # type: ignore[union-attr]
    assert set(faults) <= {"ok"}, faults  # no timeout, garble or answer out of step


def test_edge_agent_write_on_a_modbus_bus_with_the_same_checks(
    tmp_path: Path, broker: Broker
) -> None:
    slave = SimulatedSlave(1, POINTS)

    async def scenario() -> list[tuple[int, str, str]]:
        async with ModbusSimulator([slave]) as sim:
            bus = f'[[bus]]\nname = "plc"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = {sim.port}\ntimeout = "300ms"\n'
            path = str(site(tmp_path, broker, bus))
            return [
                await cli_async("write", "-c", path, "pump", "setpoint", "30"),
                await cli_async("write", "-c", path, "pump", "setpoint", "101"),
                await cli_async("write", "-c", path, "pump", "level", "1"),
                await cli_async("write", "-c", path, "pump", "relay", "yes"),
            ]

    (ok, out, err), above, level, word = run(scenario(), timeout=40)
    assert ok == 0, err
    assert out.strip() == "pump.setpoint = 30.0 (read back)"
    assert slave.value("setpoint") == 30.0
    assert (above[0], above[2].strip()) == (1, "edge-agent write: 101 is above setpoint's max 100")
    assert (level[0], level[2].strip()) == (1, "edge-agent write: level is not writable")
    assert word[0] == 1
    assert word[2].strip().startswith("edge-agent write: relay: ")


def test_a_slave_that_stops_answering_fails_the_command_with_why(
    tmp_path: Path, broker: Broker
) -> None:
    slave = SimulatedSlave(1, POINTS)

    def kill() -> None:
        slave.dead = True

    async def scenario() -> list[dict[str, Any]]:
        async with ModbusSimulator([slave]) as sim:
            bus = f'[[bus]]\nname = "plc"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = {sim.port}\ntimeout = "300ms"\n'
            path = site(tmp_path, broker, bus)
            sent = [command("dead", "setpoint", 50), command("typo", "setpoint", "fifty")]
            replies, _, _ = await commanded(path, broker, sent, None, before_sending=kill)
            return replies

    replies = {r["id"]: r for r in run(scenario(), timeout=40)}
    assert replies["dead"]["ok"] is False
    assert replies["dead"]["error"].startswith("device pump: setpoint: the write was not confirmed")
    assert replies["typo"] == {
        "id": "typo",
        "ok": False,
        "error": "setpoint takes a number, not a string",
    }
