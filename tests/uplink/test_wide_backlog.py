"""A backlog of samples each too large for Mosquitto's message_size_limit: found out in a few
reconnections (halving, then one confirmation), then dropped without trying, not one
reconnection per sample."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.store.buffer import Buffer
from agent.testkit import run, until
from agent.testkit.broker import Broker
from agent.uplink.telemetry import Uplink
from tests.uplink.rig import config_for


def test_wide_samples_above_the_size_limit_do_not_storm_the_broker(
    tmp_path: Path, mosquitto: Broker
) -> None:
    mosquitto.settings = {"message_size_limit": 1500}
    mosquitto.restart()
    config = config_for(tmp_path, mosquitto.url)
    wide = 20

    async def body() -> tuple[int, float, int]:
        with Buffer(tmp_path / "buffer.sqlite", 10**7, 1.0) as buffer:
            for n in range(wide):
                buffer.add(
                    "wide",
                    1_795_000_000_000 + n,
                    {f"p{i:02d}_of_a_rather_long_name": i for i in range(60)},
                )
            buffer.flush(force=True)
            up = Uplink(config, buffer)
            t0 = time.monotonic()
            task = asyncio.create_task(up.run())
            try:
                await until(lambda: up.too_large >= wide, 60, "all wide samples dropped")
                took = time.monotonic() - t0
            finally:
                await up.stop()
                await asyncio.wait_for(task, 20)
            return up.connects, took, up.too_large

    connects, took, dropped = run(body(), 90)
    print(f"\n{dropped} wide samples dropped after {connects} connections in {took:.1f} s")
    # halving from the whole batch down to one sample, then one confirmation: log2, not one each
    assert connects <= 8, "a reconnection storm"
