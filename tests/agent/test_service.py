"""What the agent tells systemd (READY, STATUS, the watchdog, RELOADING), and reloading its
configuration without losing a reading."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from agent.aio import cancel_and_wait
from agent.config import DeviceConfig, load_config
from agent.model import Poll
from agent.service.app import Agent
from agent.service.systemd import notify, watchdog_interval
from agent.testkit import run
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from agent.testkit.systemd import NotifyListener
from drivers.system.driver import SystemDriver

SITE = """
[agent]
id = "gw"
data_dir = "data"
[mqtt]
url = "{url}"
topic_prefix = "s"
batch_interval = "50ms"
health_interval = "1h"
[[device]]
name = "gateway"
driver = "system"
interval = "100ms"
  [[device.point]]
  name = "uptime"
[[device]]
name = "pump"
driver = "system"
interval = "100ms"
  [[device.point]]
  name = "load1"
{more}
"""


def site(tmp_path: Path, url: str = "mqtt://127.0.0.1:1", more: str = "") -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(url=url, more=more))
    return path


def test_the_watchdog_interval_is_half_of_systemds() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


def test_ready_status_and_a_watchdog_that_stops_while_a_bus_is_wedged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The watchdog is fed only while every poll loop progresses; a wedged one stops it, and
    it resumes when the loop does."""
    flowing = asyncio.Event()
    original = SystemDriver.read

    async def read(self: SystemDriver, device: DeviceConfig) -> Poll:
        if device.name == "pump":
            await flowing.wait()  # wedged while the event is clear: no timeout would end it
        return await original(self, device)

    monkeypatch.setattr(SystemDriver, "read", read)
    caplog.set_level(logging.INFO, logger="agent.service.app")
    config, _ = load_config(site(tmp_path), environ={})

    async def scenario(notified: NotifyListener) -> str:
        flowing.set()
        agent = Agent(config)
        for poller in agent.pollers:
            poller.wedged_after = 0.2  # instead of minutes: wedged after 0.2 s + 2 intervals
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await notified.expect("READY=1")
            status = await notified.expect("STATUS=")
            for _ in range(3):  # fed at its cadence
                await notified.expect("WATCHDOG=1", timeout=2)
            flowing.clear()
            await notified.quiet("WATCHDOG=1", gap=1.0, timeout=5)
            assert any(p.stuck_for() > 0 for p in agent.pollers)
            flowing.set()
            await notified.expect("WATCHDOG=1", timeout=2)  # fed again
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await cancel_and_wait(task)
        await notified.expect("STOPPING=1", timeout=1)
        return status

    with NotifyListener() as notified:
        monkeypatch.setenv("NOTIFY_SOCKET", notified.path)
        monkeypatch.setenv("WATCHDOG_USEC", "100000")
        status = run(scenario(notified), timeout=30)
    assert re.fullmatch(r"STATUS=2/2 device\(s\) ok; buffer \d+ waiting; mqtt disconnected", status)
    said = [r.getMessage() for r in caplog.records if r.name == "agent.service.app"]
    assert [line for line in said if "poll loop" in line] == [
        "bus pump: a poll has lasted far beyond any timeout: its poll loop is wedged; "
        "withholding the watchdog so that systemd restarts the agent",
        "bus pump: its poll loop goes on again",
    ]


def test_status_names_the_failing_devices(tmp_path: Path) -> None:
    config, _ = load_config(site(tmp_path), environ={})
    agent = Agent(config)
    agent.pollers[1].health["pump"].failing = True
    assert (
        agent.status_line()
        == "1/2 device(s) ok, failing: pump; buffer 0 waiting; mqtt disconnected"
    )


def test_a_reload_restarts_only_what_changed_and_readings_go_on(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = site(tmp_path, broker.url)
    config, _ = load_config(path, environ={})

    async def scenario(notified: NotifyListener) -> tuple[list[dict[str, Any]], list[Any]]:
        agent = Agent(config)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            async with Subscriber(broker.host, broker.port, "s/gw/#") as sub:
                await sub.wait_samples(3, "pump")
                gateway, pump = agent.pollers
                # the poll tasks themselves: a reload must keep an unchanged device's task
                gateway_task = agent._poll_tasks[gateway]  # noqa: SLF001
                # pump gets a second point; a new device appears; gateway stays as it was
                path.write_text(
                    SITE.format(url=broker.url, more="").replace(
                        'name = "load1"', 'name = "load1"\n  [[device.point]]\n  name = "load5"'
                    )
                    + '[[device]]\nname = "spare"\ndriver = "system"\ninterval = "100ms"\n'
                    '  [[device.point]]\n  name = "uptime"\n'
                )
                agent.request_reload()
                await notified.expect("RELOADING=1")
                await notified.expect("READY=1")
                assert agent.pollers[0] is gateway
                assert agent._poll_tasks[gateway] is gateway_task  # noqa: SLF001
                assert agent.pollers[1] is not pump
                assert pump not in agent._poll_tasks  # noqa: SLF001
                await sub.wait_for(
                    lambda _: (
                        any("load5" in s["values"] for s in sub.samples("pump"))
                        and bool(sub.samples("spare"))
                    )
                )
                await sub.wait_samples(len(sub.samples("gateway")) + 3, "gateway")
                return sub.samples(), sub.payloads("meta")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await cancel_and_wait(task)

    with NotifyListener() as notified:
        monkeypatch.setenv("NOTIFY_SOCKET", notified.path)
        samples, metas = run(scenario(notified), timeout=40)
    ids = [s["id"] for s in samples]
    assert ids == sorted(set(ids))  # ids go on across the reload, none sent twice
    gateway_ts = [s["ts"] for s in samples if s["device"] == "gateway"]
    assert gateway_ts == sorted(gateway_ts)
    assert [sorted(m["devices"]) for m in metas][-1] == ["gateway", "pump", "spare"]
    assert "load5" in str(metas[-1]["devices"]["pump"])


def test_an_invalid_config_on_reload_is_reported_and_the_old_one_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = site(tmp_path)
    config, _ = load_config(path, environ={})

    async def scenario() -> tuple[bool, Agent]:
        agent = Agent(config)
        path.write_text(SITE.format(url="mqtt://127.0.0.1:1", more="").replace("100ms", "0s"))
        return await agent.reload(), agent

    caplog.set_level(logging.ERROR)
    applied, agent = run(scenario())
    assert not applied
    assert agent.config is config
    errors = [r.getMessage() for r in caplog.records]
    assert errors[0].startswith(f"reload: {path}:")
    assert "device.gateway.interval" in errors[0]
    assert errors[-1] == (
        f"reload: {path} is invalid; still running the configuration loaded before"
    )


def test_settings_that_need_a_restart_are_said_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = site(tmp_path)
    config, _ = load_config(path, environ={})

    async def scenario() -> Agent:
        agent = Agent(config)
        text = SITE.format(url="mqtt://127.0.0.1:2", more='[buffer]\nmax_size = "1MB"\n')
        path.write_text(text.replace('data_dir = "data"', 'data_dir = "data"\nlog_level = "debug"'))
        assert await agent.reload()
        return agent

    agent = run(scenario())
    assert agent.config.buffer == config.buffer
    assert agent.config.agent == config.agent
    assert agent.config.mqtt.port == 2  # [mqtt] is applied: the link reconnects
    assert agent.uplink.config.mqtt.port == 2
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "reload: [agent], [buffer] changed: that takes a restart (systemctl restart "
        "edge-agent); the rest is applied now"
    ]


def test_a_listener_that_stops_reading_never_blocks_the_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A datagram queue holds ~10 messages: once full, notify gives up at once instead of
    stopping the event loop until someone reads."""
    with NotifyListener() as listener:
        monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
        sent = [notify(f"STATUS={i}") for i in range(100)]
    assert sent[0] is True
    assert sent[-1] is False
