"""Commands from the cloud: checked, carried out once, answered on cmd/reply; hostile payloads
answered or logged, never able to stop the agent. The device is a relay on gpiozero's mock pins."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.aio import cancel_and_wait
from agent.app import Agent
from agent.commands import MAX_PAYLOAD, parse, value_from_text
from agent.config import load_config
from agent.testkit import run
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from agent.testkit.process import cli

SITE = """
[agent]
id = "gw"
data_dir = "data"
[mqtt]
url = "{url}"
topic_prefix = "c"
batch_interval = "50ms"
command_ttl = "60s"
[[device]]
name = "pumps"
driver = "gpio-output"
interval = "200ms"
  [[device.point]]
  name = "pump"
  pin = 20
  writable = true
  min = 0
  max = 1
  [[device.point]]
  name = "fan"
  pin = 26
[[device]]
name = "gateway"
driver = "system"
interval = "100ms"
  [[device.point]]
  name = "uptime"
"""


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    """gpiozero's own choice of factory, as GPIOZERO_PIN_FACTORY=mock would make it."""
    factory = Device.pin_factory = MockFactory()
    yield factory
    Device.pin_factory = None
    factory.close()


def site(tmp_path: Path, url: str = "mqtt://127.0.0.1:1") -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(url=url))
    return path


def now_ms() -> int:
    return int(time.time() * 1000)


def cmd(ident: Any, point: str = "pump", value: Any = 1, **more: Any) -> bytes:
    body = {"id": ident, "device": "pumps", "point": point, "value": value, "ts": now_ms()}
    return json.dumps({**body, **more}).encode()


# --- parsing


def test_payloads_that_are_not_commands_are_refused_with_their_reason() -> None:
    assert parse(b"{")[0] is None and "not JSON" in str(parse(b"{")[1])
    assert parse(b"\xff\xfe")[0] is None
    assert str(parse(b" " * (MAX_PAYLOAD + 1))[1]) == "4097 bytes: a command is at most 4096"
    assert parse(b'{"device":"pumps"}')[0] is None  # no id: nothing to reply to
    assert parse(b'{"id":true}')[0] is None
    assert parse(json.dumps({"id": "x" * 129}).encode())[0] is None
    assert parse(b'{"id":"\\ud800"}')[0] is None  # a reply could not carry it
    ident, refused = parse(b'{"id":"a","device":"pumps","point":"pump","value":[1],"ts":1}')
    assert ident == "a"
    assert str(refused) == '"value" must be a number, a boolean or a string, got a list'
    _, refused = parse(b'{"id":7,"device":"pumps","point":"pump","value":1}')
    assert str(refused) == '"ts" must be a int, got missing'
    _, refused = parse(b'{"id":7,"device":"pumps","point":"pump","value":1,"ts":1,"x":0}')
    assert str(refused) == "unknown key(s): 'x'"


def test_values_typed_on_the_command_line() -> None:
    assert [value_from_text(t) for t in ("true", "0", "21.5", "on", "[1]")] == [
        True,
        0,
        21.5,
        "on",
        "[1]",
    ]


# --- through the broker


def test_commands_are_checked_carried_out_once_and_answered(
    tmp_path: Path, broker: Broker, pins: MockFactory
) -> None:
    config, _ = load_config(site(tmp_path, broker.url), environ={})
    pump = pins.pin(20)

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], Agent]:
        agent = Agent(config)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            async with (
                Subscriber(broker.host, broker.port, "c/gw/telemetry") as telemetry,
                Subscriber(broker.host, broker.port, "c/gw/cmd/reply") as sub,
            ):
                await telemetry.wait_samples(1, "pumps")
                sent = [
                    cmd("on", value=True),
                    cmd("on", value=True),  # a redelivery: answered again, not written again
                    cmd("off", value=0),
                    cmd("ghost", point="pmup"),
                    cmd("fan", point="fan"),
                    cmd("high", value=2),
                    cmd("word", value="on"),
                    cmd("old", ts=now_ms() - 3_600_000),
                    json.dumps(
                        {
                            "id": "nodev",
                            "device": "pump",
                            "point": "pump",
                            "value": 1,
                            "ts": now_ms(),
                        }
                    ).encode(),
                    b"not json",
                    b'{"id": 5}',
                ]
                for payload in sent:
                    await sub._client.publish("c/gw/cmd", payload, qos=1)
                await sub.wait_for(lambda _: len(sub.payloads("cmd/reply")) >= 10)
                return dict(agent.commands.counts), sub.payloads("cmd/reply"), agent
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await cancel_and_wait(task)

    health, replies, _ = run(scenario(), timeout=40)
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for reply in replies:
        by_id.setdefault(reply["id"], []).append(reply)
    assert by_id["on"] == [{"id": "on", "ok": True, "value": True}] * 2
    assert by_id["off"] == [{"id": "off", "ok": True, "value": False}]
    assert by_id["ghost"][0]["error"] == 'device pumps has no point "pmup" (did you mean "pump"?)'
    assert by_id["fan"][0]["error"] == "fan is not writable"
    assert by_id["high"][0]["error"] == "2 is above pump's max 1"
    assert by_id["word"][0]["ok"] is False and "pump" in by_id["word"][0]["error"]
    assert by_id["old"][0]["error"].startswith("expired: sent 3600s ago, command_ttl is 60s")
    assert by_id["nodev"][0]["error"] == 'unknown device "pump" (did you mean "pumps"?)'
    assert by_id[5][0]["error"] == '"device" must be a str, got missing'
    assert [s.state for s in pump.states][-3:] == [False, True, False]  # on once, then off
    assert health == {"ok": 2, "repeated": 1, "refused": 8}


def test_without_a_trusted_clock_no_command_runs(tmp_path: Path, pins: MockFactory) -> None:
    config, _ = load_config(site(tmp_path), environ={})

    async def scenario() -> dict[str, Any] | None:
        agent = Agent(config)
        agent._trusted_now_ms = lambda: None  # type: ignore[method-assign]
        agent.commands._now_ms = agent._trusted_now_ms
        return await agent.commands.handle(cmd("on"), "c/gw/cmd")

    reply = run(scenario())
    assert reply is not None
    assert reply["error"].startswith("the gateway's clock is not set yet")
    assert pins.pin(20).state is False


def test_edge_agent_write_sets_and_reads_back(tmp_path: Path) -> None:
    path = site(tmp_path)
    mock = {"GPIOZERO_PIN_FACTORY": "mock"}  # a process of its own: gpiozero's mock pins
    result = cli("write", "-c", str(path), "pumps", "pump", "1", env=mock)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pumps.pump = true (read back)"
    refused = cli("write", "-c", str(path), "pumps", "fan", "1", env=mock)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith("edge-agent write: fan is not writable")


# --- fuzzing: whatever arrives on cmd, the agent answers or logs it and goes on polling

names = st.sampled_from(["pumps", "pump", "fan", "gateway", "uptime", "", "\u00fcml", "\ud800"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
near_commands = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=140), st.integers(), json_values),
        "device": st.one_of(names, json_values),
        "point": st.one_of(names, json_values),
        "value": json_values,
        "ts": st.one_of(st.integers(), st.floats(), st.just(now_ms())),
        "extra": json_values,
    },
).map(lambda d: json.dumps(d).encode())
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_commands,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(payloads, min_size=1, max_size=25))
def test_hostile_payloads_never_stop_the_agent(
    tmp_path: Path, pins: MockFactory, batch: list[bytes]
) -> None:
    config, _ = load_config(site(tmp_path), environ={})
    replies: list[dict[str, Any]] = []

    async def scenario() -> None:
        agent = Agent(config)

        async def publish_reply(reply: dict[str, Any]) -> bool:
            json.dumps(reply).encode()  # what the uplink would send must be sendable
            replies.append(reply)
            return True

        agent.uplink.publish_reply = publish_reply  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        polled = asyncio.Event()
        gateway = agent.pollers[1]
        store = gateway.sink

        def sink(*sample: Any) -> None:
            store(*sample)
            polled.set()

        gateway.sink = sink
        try:
            await asyncio.wait_for(polled.wait(), 10)
            for payload in batch:  # the path a message from the broker takes
                agent._command_arrived("c/gw/cmd", payload)
            while agent._command_tasks:
                await asyncio.wait(set(agent._command_tasks), timeout=10)
            for _ in range(2):  # still polling afterwards
                polled.clear()
                await asyncio.wait_for(polled.wait(), 10)
            assert not task.done()
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await cancel_and_wait(task)

    run(scenario(), timeout=30)
    for reply in replies:
        assert set(reply) in ({"id", "ok", "value"}, {"id", "ok", "error"})
        assert reply["ok"] is ("value" in reply)
