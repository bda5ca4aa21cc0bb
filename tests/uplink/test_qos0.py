"""QoS 0 telemetry: samples leave the buffer only once paho has written them (not while they sit
in its queue), and draining a backlog yields to the event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.store.buffer import Buffer
from agent.testkit import run, until
from agent.testkit.broker import Broker
from agent.uplink.telemetry import Uplink
from tests.uplink.rig import config_for


def test_a_qos0_backlog_leaves_the_buffer_only_as_written_and_yields_to_the_loop(
    tmp_path: Path, mosquitto: Broker
) -> None:
    config = config_for(tmp_path, mosquitto.url, "qos = 0\n")
    count = 30_000

    async def body() -> dict[str, float]:
        with Buffer(tmp_path / "buffer.sqlite", 10**8, 1.0) as buffer:
            for n in range(count):
                buffer.add("m", 1_795_000_000_000 + n, {f"p{i}": 1.5 * i for i in range(10)})
                if n % 5000 == 4999:
                    buffer.flush(force=True)
            buffer.flush(force=True)
            loop = asyncio.get_running_loop()
            gaps = [0.0]

            async def heartbeat() -> None:
                last = loop.time()
                while True:
                    await asyncio.sleep(0.01)
                    now = loop.time()
                    gaps.append(now - last)
                    last = now

            beat = asyncio.create_task(heartbeat())
            up = Uplink(config, buffer)
            task = asyncio.create_task(up.run())
            await until(lambda: up.connected, 10, "connected")
            client = up._client_online  # noqa: SLF001 (what paho still holds is the measure)
            t0 = time.monotonic()
            await until(lambda: up.sent >= count, 60, "all sent")
            took = time.monotonic() - t0
            queued = len(client._client._out_packet) if client else -1  # noqa: SLF001
            await up.stop()
            await asyncio.wait_for(task, 20)
            beat.cancel()
            return {
                "sent": up.sent,
                "max_loop_stall_s": max(gaps),
                "drain_s": took,
                "paho_out_packets_when_all_acknowledged": queued,
            }

    result = run(body(), 90)
    print("\n", result)
    # acknowledged (deleted from the buffer) only once paho has written them, as before
    assert result["paho_out_packets_when_all_acknowledged"] == 0, result
