"""A command whose task is cancelled (the agent stops: ``Agent.run`` cancels command tasks before
the poll loops): a write still queued is withdrawn and never made; one already on the wire may
have been made, and a copy of the command does not make it again. With a real pymodbus slave
(the test kit's), made slow so that a poll is under way when the command comes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.aio import cancel_and_wait
from agent.api.config import DeviceConfig
from agent.config import Config, load_config
from agent.model import Poll, Value
from agent.poll.scheduler import BusPoller
from agent.service.app import Agent
from agent.testkit import run
from agent.testkit.modbus import SimSlave
from agent.uplink.commands import COMMANDS_FILE
from drivers.modbus.schema import ModbusPoint

SETPOINT = ModbusPoint(
    "setpoint",
    table="holding",
    address=10,
    type="float32",
    scale=0.1,
    writable=True,
    min=0,
    max=100,
)
SLOW_MS = 800  # each answer: a poll under way lasts this long
WAIT = 10.0  # the bound on every wait


def site(tmp_path: Path, slave: SimSlave) -> Config:
    host, port = slave.bus.address.rsplit(":", 1)
    path = tmp_path / "site.toml"
    path.write_text(
        f"""
[agent]
id = "gw"
data_dir = "data"
[mqtt]
url = "mqtt://127.0.0.1:1"
topic_prefix = "m"
command_ttl = "60s"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "{host}"
port = {port}
timeout = "3s"
[[device]]
name = "pump"
bus = "plc"
unit = 1
interval = "200ms"
  [[device.point]]
  name = "setpoint"
  table = "holding"
  address = 10
  type = "float32"
  scale = 0.1
  writable = true
  min = 0
  max = 100
"""
    )
    config, _ = load_config(path, environ={})
    return config


def command(ident: str, value: float, ts: int | None = None) -> bytes:
    ts = int(time.time() * 1000) if ts is None else ts
    body = {"id": ident, "device": "pump", "point": "setpoint", "value": value, "ts": ts}
    return json.dumps(body).encode()


class Watch:
    """What the agent's poll loop does, as events: polls answered, reads and writes going out
    on the wire, writes queued."""

    def __init__(self, poller: BusPoller) -> None:
        self.poller = poller
        self.polls: asyncio.Queue[Mapping[str, Value]] = asyncio.Queue()
        self.reading = asyncio.Event()
        self.writing = asyncio.Event()
        self.queued = asyncio.Event()
        self.writes = 0  # requests to write that went to the driver
        store = poller.sink

        def sink(device: str, ts: int, mono: float, values: Mapping[str, Value]) -> None:
            store(device, ts, mono, values)
            self.polls.put_nowait(values)

        poller.sink = sink
        queue_write = poller.write

        async def write(*args: Any, **kwargs: Any) -> Poll:
            self.queued.set()  # the job is queued before the call below first waits
            return await queue_write(*args, **kwargs)

        poller.write = write  # type: ignore[method-assign]

    def spy_on_the_driver(self) -> None:
        """Once connected (the first poll answered): the driver's calls, as they go out."""
        driver = self.poller.driver_instance
        assert driver is not None
        read, write = driver.read, getattr(driver, "write")  # noqa: B009

        async def reading(device: DeviceConfig) -> Poll:
            self.reading.set()
            return await read(device)

        async def writing(*args: Any) -> None:
            self.writes += 1
            self.writing.set()
            await write(*args)

        driver.read = reading  # type: ignore[method-assign]
        driver.write = writing  # type: ignore[attr-defined]

    async def next_poll(self) -> Mapping[str, Value]:
        return await asyncio.wait_for(self.polls.get(), WAIT)

    async def poll_under_way(self, slave: SimSlave) -> None:
        """Make the slave slow and wait for a poll on the wire: it is answered SLOW_MS late."""
        slave.slow_ms = SLOW_MS
        self.reading.clear()
        await asyncio.wait_for(self.reading.wait(), WAIT)
        while not self.polls.empty():  # polls answered before: not the one under way
            self.polls.get_nowait()


async def with_agent(config: Config, body: Callable[[Agent, Watch], Any]) -> None:
    agent = Agent(config)
    watch = Watch(agent.pollers[0])
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await watch.next_poll()
        watch.spy_on_the_driver()
        await body(agent, watch)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await cancel_and_wait(task)


async def cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.wait([task], timeout=WAIT)
    assert task.cancelled()


def test_a_write_cancelled_while_queued_behind_a_poll_is_never_made(
    tmp_path: Path, modbus_slave: Callable[..., SimSlave]
) -> None:
    slave = modbus_slave(points=[SETPOINT])
    slave.set("setpoint", 5.0)
    config = site(tmp_path, slave)

    async def body(agent: Agent, watch: Watch) -> None:
        await watch.poll_under_way(slave)
        sent = asyncio.create_task(agent.commands.handle(command("sp", 50.0), "m/gw/cmd"))
        await asyncio.wait_for(watch.queued.wait(), WAIT)
        await cancelled(sent)
        slave.slow_ms = 0
        assert (await watch.next_poll())["setpoint"] == 5.0  # the poll that was under way
        # the bus moved on: a write still queued would have gone before this poll
        assert (await watch.next_poll())["setpoint"] == 5.0
        assert watch.writes == 0
        assert slave.get("setpoint") == 5.0
        assert agent.commands.record.get("sp") is None  # nothing moved: nothing to remember
        # so a copy is judged afresh, and made
        copy = await asyncio.wait_for(agent.commands.handle(command("sp", 50.0), "m/gw/cmd"), WAIT)
        assert copy == {"id": "sp", "ok": True, "value": 50.0}
        assert watch.writes == 1
        assert slave.get("setpoint") == 50.0

    run(with_agent(config, body), timeout=60)


def test_a_write_cancelled_on_the_wire_may_have_been_made_and_is_not_made_again(
    tmp_path: Path, modbus_slave: Callable[..., SimSlave]
) -> None:
    slave = modbus_slave(points=[SETPOINT])
    slave.set("setpoint", 5.0)
    config = site(tmp_path, slave)
    payload = command("sp", 50.0)
    stopped = {
        "id": "sp",
        "ok": False,
        "error": "device pump: setpoint: the agent stopped during the write: it may or may not "
        "have been made; not run again",
    }

    async def body(agent: Agent, watch: Watch) -> None:
        slave.slow_ms = SLOW_MS
        sent = asyncio.create_task(agent.commands.handle(payload, "m/gw/cmd"))
        await asyncio.wait_for(watch.writing.wait(), WAIT)
        await cancelled(sent)
        for _ in range(10):  # it was made, late: a poll after it shows it
            if (await watch.next_poll())["setpoint"] == 50.0:
                break
        slave.set("setpoint", 7.0)  # changed since: a second write would undo this
        slave.slow_ms = 0
        copy = await asyncio.wait_for(agent.commands.handle(payload, "m/gw/cmd"), WAIT)
        assert copy == stopped
        assert agent.commands.counts["repeated"] == 1
        assert watch.writes == 1
        assert slave.get("setpoint") == 7.0

    run(with_agent(config, body), timeout=60)

    async def after_a_restart() -> dict[str, Any] | None:
        restarted = Agent(config)  # not run: its Commands answer from the record alone
        return await restarted.commands.handle(payload, "m/gw/cmd")

    assert run(after_a_restart()) == stopped
    assert slave.get("setpoint") == 7.0


def test_a_copy_waiting_for_a_command_cancelled_before_its_write_makes_it_once(
    tmp_path: Path, modbus_slave: Callable[..., SimSlave]
) -> None:
    """Two copies at once: the second waits for the first's answer. The first is cancelled
    while its write is queued (never made): the second is then judged on its own, and made."""
    slave = modbus_slave(points=[SETPOINT])
    slave.set("setpoint", 5.0)
    config = site(tmp_path, slave)
    payload = command("sp", 50.0)

    async def body(agent: Agent, watch: Watch) -> None:
        await watch.poll_under_way(slave)
        first = asyncio.create_task(agent.commands.handle(payload, "m/gw/cmd"))
        await asyncio.wait_for(watch.queued.wait(), WAIT)
        copy = asyncio.create_task(agent.commands.handle(payload, "m/gw/cmd"))
        watch.queued.clear()
        await cancelled(first)
        await asyncio.wait_for(watch.queued.wait(), WAIT)  # the copy queues a write of its own
        slave.slow_ms = 0
        assert await asyncio.wait_for(copy, WAIT) == {"id": "sp", "ok": True, "value": 50.0}
        assert watch.writes == 1
        assert slave.get("setpoint") == 50.0

    run(with_agent(config, body), timeout=60)


def test_at_stop_a_queued_write_is_withdrawn_not_made_and_not_remembered(
    tmp_path: Path, modbus_slave: Callable[..., SimSlave]
) -> None:
    """The agent's own stop, with a command arriving the way the broker delivers it."""
    slave = modbus_slave(points=[SETPOINT])
    slave.set("setpoint", 5.0)
    config = site(tmp_path, slave)
    payload = command("sp", 50.0)
    agent = Agent(config)
    watch = Watch(agent.pollers[0])

    async def stopped_with_a_write_queued() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await watch.next_poll()
            watch.spy_on_the_driver()
            await watch.poll_under_way(slave)
            assert agent.uplink.on_command is not None  # the path a message from the broker takes
            agent.uplink.on_command("m/gw/cmd", payload)
            await asyncio.wait_for(watch.queued.wait(), WAIT)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    run(stopped_with_a_write_queued(), timeout=60)
    assert watch.writes == 0
    record = config.agent.data_dir / COMMANDS_FILE
    remembered = json.loads(record.read_text())["commands"] if record.exists() else []
    assert remembered == []

    async def next_agent(agent: Agent, watch: Watch) -> None:
        assert slave.get("setpoint") == 5.0  # its first poll was answered: the bus moved on
        reply = await asyncio.wait_for(agent.commands.handle(payload, "m/gw/cmd"), WAIT)
        assert reply == {"id": "sp", "ok": True, "value": 50.0}  # judged afresh: made once

    slave.slow_ms = SLOW_MS  # after anything the first agent sent, on the slave's own clock
    run(with_agent(config, next_agent), timeout=60)
