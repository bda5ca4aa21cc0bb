"""A meta above Mosquitto's message_size_limit, at connect: one true line, the link goes on, and
meta is sent again once the broker takes it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from agent.store.buffer import Buffer
from agent.testkit import run, until
from agent.testkit.broker import Broker
from agent.uplink.telemetry import Uplink
from tests.uplink.rig import config_for

POINTS = "".join(
    f'  [[device.point]]\n  name = "p{i:02d}_of_a_rather_long_name"\n  table = "input"\n'
    f"  address = {i + 1}\n"
    for i in range(60)
)


def test_meta_above_the_size_limit_is_one_true_line(
    tmp_path: Path, mosquitto: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    mosquitto.settings = {"message_size_limit": 1500}
    mosquitto.restart()
    config = config_for(tmp_path, mosquitto.url)
    path = tmp_path / "agent.toml"
    path.write_text(path.read_text() + POINTS)
    from agent.config import load_config

    config, _ = load_config(path, {})
    caplog.set_level(logging.INFO, logger="agent")

    async def body() -> None:
        with Buffer(tmp_path / "buffer.sqlite", 10**6, 1.0) as buffer:
            up = Uplink(config, buffer)
            task = asyncio.create_task(up.run())
            try:
                await until(lambda: up.connected, 15, "connected")
            finally:
                await up.stop()
                await asyncio.wait_for(task, 20)

    run(body(), 40)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    print("\n" + "\n".join(lines))
    assert not any("check that the broker lets this client publish" in line for line in lines), (
        lines
    )


def test_meta_is_sent_again_once_the_broker_takes_it(tmp_path: Path, mosquitto: Broker) -> None:
    from agent.config import load_config
    from agent.testkit.mqtt import Subscriber

    mosquitto.settings = {"message_size_limit": 1500}
    mosquitto.restart()
    config_for(tmp_path, mosquitto.url)
    path = tmp_path / "agent.toml"
    path.write_text(path.read_text() + POINTS)
    config, _ = load_config(path, {})

    async def body() -> list[str]:
        with Buffer(tmp_path / "buffer.sqlite", 10**6, 1.0) as buffer:
            up = Uplink(config, buffer)
            task = asyncio.create_task(up.run())
            loop = asyncio.get_running_loop()

            async def produce() -> None:
                n = 0
                while True:
                    n += 1
                    buffer.add("m", 1_795_000_000_000 + n, {"v": n})
                    up.wake()
                    await asyncio.sleep(0.2)

            producer = asyncio.create_task(produce())
            try:
                await until(lambda: up.connected, 15, "connected")
                mosquitto.settings = {}  # the operator raises the limit
                await loop.run_in_executor(None, mosquitto.restart)
                await until(lambda: up.connects >= 2, 20, "reconnected")
                await asyncio.sleep(1)
                async with Subscriber(mosquitto.host, mosquitto.port, "r/gw-r/meta") as sub:
                    await asyncio.sleep(2)
                    return [t for t, _, _ in sub.messages]
            finally:
                producer.cancel()
                await up.stop()
                await asyncio.wait_for(task, 20)

    got = run(body(), 60)
    assert got == ["r/gw-r/meta"], "no retained meta although the broker now takes it"
