"""Commands from the cloud: checked, carried out once, answered on cmd/reply; hostile payloads
answered or logged, never able to stop the agent. The device is a relay on gpiozero's mock pins."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.aio import cancel_and_wait
from agent.config import load_config
from agent.service.app import Agent
from agent.testkit import run
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from agent.testkit.process import cli
from agent.uplink import commands as commands_module
from agent.uplink.commands import MAX_PAYLOAD, checked_value, flattened, parse, value_from_text
from drivers.modbus.schema import ModbusPoint

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
    assert parse(b"{")[0] is None
    assert "not JSON" in str(parse(b"{")[1])
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


def test_deeply_nested_junk_does_not_hide_the_id() -> None:
    """Python's JSON reader gives up on deep nesting (RecursionError): the deep parts are read
    as null instead, so that the command still gets its reply."""
    deep = b"[" * 1900 + b"]" * 1900
    ident, refused = parse(
        b'{"id":"deep","device":"pumps","point":"pump","ts":1,"value":%s}' % deep
    )
    assert ident == "deep"
    assert str(refused) == '"value" must be a number, a boolean or a string, got a list'
    assert flattened('[[["]]", {"k": [1]}]], [2]]', limit=2) == "[[null], [2]]"
    assert parse(b'{"id":' + deep + b"}")[0] is None


def test_a_ts_beyond_64_bits_is_refused_not_reckoned() -> None:
    for ts in (10**400, -(10**400), 2**63):
        _, refused = parse(b'{"id":1,"device":"pumps","point":"pump","value":1,"ts":%d}' % ts)
        assert str(refused) == '"ts" does not fit: it is ms since the epoch, a 64-bit integer'


SETPOINT = ModbusPoint(
    "setpoint", table="holding", address=0, type="float32", writable=True, min=0, max=100
)
RAW = ModbusPoint("raw", table="holding", address=0, type="int64", writable=True)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1" + "0" * 400, "1.000e+400 does not fit any point: numbers go up to about ±1.8e308"),
        ("-1" + "0" * 400, "-1.000e+400 does not fit any point: numbers go up to about ±1.8e308"),
        ("1e400", "inf does not fit any point: not a finite number"),
        ("-Infinity", "-inf does not fit any point: not a finite number"),
        ("NaN", "nan does not fit any point: not a finite number"),
    ],
)
def test_numbers_no_device_takes_are_refused_with_why(text: str, why: str) -> None:
    value = json.loads(text)
    for point in (SETPOINT, RAW):  # with min/max and without
        with pytest.raises(commands_module.CommandRefused) as refused:
            checked_value(point, value)
        assert str(refused.value) == why


def test_huge_numbers_are_compared_exactly_and_shown_short() -> None:
    with pytest.raises(commands_module.CommandRefused, match=r"^1\.845e\+19 is above setpoint"):
        checked_value(SETPOINT, 2**64)
    assert checked_value(RAW, 2**64) == 2**64  # for the driver to refuse: int64 is its business
    assert checked_value(SETPOINT, 100) == 100


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
                    await sub.client.publish("c/gw/cmd", payload, qos=1)
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
    assert by_id["word"][0]["ok"] is False
    assert "pump" in by_id["word"][0]["error"]
    assert by_id["old"][0]["error"].startswith("expired: sent 3600s ago, command_ttl is 60s")
    assert by_id["nodev"][0]["error"] == 'unknown device "pump" (did you mean "pumps"?)'
    assert by_id[5][0]["error"] == '"device" must be a str, got missing'
    assert [s.state for s in pump.states][-3:] == [False, True, False]  # on once, then off
    assert health == {"ok": 2, "repeated": 1, "refused": 8}


def test_without_a_trusted_clock_no_command_runs(tmp_path: Path, pins: MockFactory) -> None:
    config, _ = load_config(site(tmp_path), environ={})

    async def scenario() -> dict[str, Any] | None:
        agent = Agent(config)
        # the agent's trusted clock says "not yet" (no public way to make the guard distrust it)
        agent._trusted_now_ms = lambda: None  # type: ignore[method-assign]  # noqa: SLF001
        agent.commands._now_ms = agent._trusted_now_ms  # noqa: SLF001
        return await agent.commands.handle(cmd("on"), "c/gw/cmd")

    reply = run(scenario())
    assert reply is not None
    assert reply["error"].startswith("the gateway's clock is not set yet")
    assert pins.pin(20).state is False


def test_an_integer_of_400_digits_gets_a_reply(tmp_path: Path, pins: MockFactory) -> None:
    """The field bug: no reply at all, and "Task exception was never retrieved … OverflowError"
    in the log."""
    config, _ = load_config(site(tmp_path), environ={})
    payload = cmd("huge", value=0).replace(b'"value": 0', b'"value": 1' + b"0" * 400)

    async def scenario() -> dict[str, Any] | None:
        return await Agent(config).commands.handle(payload, "c/gw/cmd")

    assert run(scenario()) == {
        "id": "huge",
        "ok": False,
        "error": "1.000e+400 does not fit any point: numbers go up to about ±1.8e308",
    }


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (commands_module, "checked_value"),  # while carrying it out
        (commands_module.CommandRecord, "forget_expired"),  # while looking it up
    ],
)
def test_a_bug_while_answering_a_command_is_an_internal_error_reply(
    tmp_path: Path,
    pins: MockFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    owner: object,
    name: str,
) -> None:
    config, _ = load_config(site(tmp_path), environ={})

    def broken(*_: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(owner, name, broken)

    async def scenario() -> tuple[dict[str, Any] | None, dict[str, int]]:
        agent = Agent(config)
        reply = await agent.commands.handle(cmd("bug"), "c/gw/cmd")
        return reply, dict(agent.commands.counts)

    with caplog.at_level(logging.ERROR, "agent.uplink.commands"):
        reply, counts = run(scenario())
    assert reply == {"id": "bug", "ok": False, "error": "internal error: ZeroDivisionError"}
    assert counts == {"failed": 1}
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    assert "cmd bug on c/gw/cmd: internal error" in tracebacks[0].message


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
#: Numbers at and beyond the edges: Python's json writes and reads them all (NaN, Infinity,
#: integers of hundreds of digits); no device takes most of them.
extreme_numbers = st.one_of(
    st.sampled_from(
        [10**400, -(10**400), 2**1024, 2**64, -(2**63) - 1, 1e308, -1e308, 5e-324, -0.0]
    ),
    st.integers(min_value=-(10**1000), max_value=10**1000),
    st.floats(),  # with NaN and ±inf
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | extreme_numbers
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "a\udfffb"]),  # lone surrogates, as JSON's escapes carry them
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
command_fields = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=140), st.integers(), extreme_numbers, json_values),
        "device": st.one_of(names, json_values),
        "point": st.one_of(names, json_values),
        "value": st.one_of(st.sampled_from([0, 1, True, False]), json_values),
        "ts": st.one_of(st.integers(), extreme_numbers, st.just(now_ms())),
        "extra": json_values,
    },
)


def answerable(ident: Any) -> bool:
    """Whether a command with this id must be answered: a string of 1-128 characters that
    UTF-8 can carry, or an integer (not a boolean)."""
    if isinstance(ident, str):
        return 0 < len(ident) <= 128 and not any(0xD800 <= ord(c) <= 0xDFFF for c in ident)
    return isinstance(ident, int) and not isinstance(ident, bool)


def expected_reply(payload: bytes, ident: Any) -> tuple[bytes, Any]:
    """The payload, with the id its reply must carry (None: no reply)."""
    return payload, ident if len(payload) <= MAX_PAYLOAD and answerable(ident) else None


def reply_by_json(payload: bytes) -> tuple[bytes, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        return payload, None
    return expected_reply(payload, value.get("id") if isinstance(value, dict) else None)


near_commands = command_fields.map(lambda d: expected_reply(json.dumps(d).encode(), d.get("id")))
deeply_nested = st.integers(min_value=1, max_value=2000).map(
    lambda depth: expected_reply(
        b'{"id":"deep","device":"pumps","point":"pump","ts":1,"value":%s}'
        % (b"[" * depth + b"]" * depth),
        "deep",
    )
)
#: Commands right in every other way, to a real point: the value reaches the checks and the driver.
odd_values = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(min_size=1, max_size=20), st.integers()),
        "device": st.just("pumps"),
        "point": st.sampled_from(["pump", "fan"]),
        "value": st.one_of(extreme_numbers, json_values),
        "ts": st.builds(now_ms),  # when the example is made: within command_ttl
    }
).map(lambda d: expected_reply(json.dumps(d).encode(), d["id"]))
payloads = st.one_of(
    st.binary(max_size=200).map(reply_by_json),
    json_values.map(lambda v: reply_by_json(json.dumps(v).encode())),
    near_commands,
    odd_values,
    deeply_nested,
)


#: A 100 ms poll missed for this long is a stalled agent, not a loaded CI machine (CI runs
#: three Pythons' suites at once on two cores: 10 s was once missed there).
LOADED = 30.0


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(payloads, min_size=1, max_size=25))
def test_hostile_payloads_never_stop_the_agent(
    tmp_path: Path, pins: MockFactory, batch: list[tuple[bytes, Any]]
) -> None:
    """Whatever arrives on cmd, every command with a usable id gets exactly one reply (a refusal
    saying why, not an internal error), and the agent goes on polling."""
    examples = tmp_path / "examples"
    examples.mkdir(exist_ok=True)
    config, _ = load_config(site(Path(tempfile.mkdtemp(dir=examples))), environ={})
    replies: list[dict[str, Any]] = []

    async def scenario() -> None:
        agent = Agent(config)

        async def publish_reply(reply: dict[str, Any], subtopic: str = "cmd/reply") -> bool:
            # what the uplink sends must be sendable: it encodes strictly (ensure_ascii=False)
            json.dumps(reply, ensure_ascii=False).encode()
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
            await asyncio.wait_for(polled.wait(), LOADED)
            on_command = agent.uplink.on_command
            assert on_command is not None
            for payload, _ in batch:  # the path a message from the broker takes
                on_command("c/gw/cmd", payload)
            # every command answered: the agent's own tasks (no public way to await them)
            while agent._command_tasks:  # noqa: SLF001
                await asyncio.wait(set(agent._command_tasks), timeout=LOADED)  # noqa: SLF001
            for _ in range(2):  # still polling afterwards
                polled.clear()
                await asyncio.wait_for(polled.wait(), LOADED)
            assert not task.done()
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await cancel_and_wait(task)

    run(scenario(), timeout=4 * LOADED)
    for reply in replies:
        assert set(reply) in ({"id", "ok", "value"}, {"id", "ok", "error"})
        assert reply["ok"] is ("value" in reply)
        assert not reply.get("error", "").startswith("internal error"), reply
    expected = Counter(ident for _, ident in batch if ident is not None)
    assert Counter(r["id"] for r in replies) == expected
