"""A stop while the link is down makes one goodbye connection, which resumes the kept session:
the commands the broker queued for us meanwhile must not be acknowledged and dropped by it, but
stay queued for the agent's next run (the control: no goodbye at all)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiomqtt
import pytest

from agent.store.buffer import Buffer
from agent.testkit import run, until
from agent.testkit.broker import Broker
from agent.testkit.net import free_port
from agent.uplink.telemetry import Uplink
from tests.uplink.rig import config_for


class Gate:
    """A TCP forwarder to the broker that can be closed (refused, connections cut) and reopened
    on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.server: asyncio.AbstractServer | None = None
        self.open_ends: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for end in list(self.open_ends):
            end.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            w.close()
            return
        self.open_ends |= {w, uw}

        async def pipe(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
            try:
                while chunk := await a.read(65536):
                    b.write(chunk)
                    await b.drain()
            except (OSError, asyncio.CancelledError):
                pass
            b.transport.abort()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        self.open_ends -= {w, uw}


@pytest.mark.parametrize("goodbye", [False, True], ids=["no-goodbye(control)", "goodbye"])
def test_commands_queued_in_the_session_survive_a_stop_while_the_link_is_down(
    goodbye: bool, tmp_path: Path, mosquitto: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not goodbye:

        async def no_goodbye(self: Uplink) -> None:
            return None

        monkeypatch.setattr(Uplink, "_goodbye", no_goodbye)

    async def body() -> list[str]:
        gate = Gate((mosquitto.host, mosquitto.port))
        await gate.open()
        config = config_for(tmp_path, f"mqtt://127.0.0.1:{gate.port}")
        got: list[str] = []
        with Buffer(tmp_path / "buffer.sqlite", 10**6, 1.0) as buffer:
            up = Uplink(config, buffer, on_command=lambda t, p: got.append(p.decode()))
            task = asyncio.create_task(up.run())
            await until(lambda: up.connected, 10, "connected")
            await gate.close()  # the link goes
            buffer.add("m", 1_795_000_000_000, {"v": 1})
            up.wake()  # a reading notices it
            await until(lambda: not up.connected, 10, "link lost")
            await asyncio.sleep(1)
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as operator:
                await operator.publish(
                    "r/gw-r/cmd",
                    json.dumps({"id": "while-away", "ts": int(time.time() * 1000)}),
                    qos=1,
                )
            await up.stop()  # stopped while the link is down: the goodbye waits for the broker
            await asyncio.sleep(0.5)
            await gate.open()
            await asyncio.wait_for(task, 15)
            print("\nseen by the stopping agent:", got)
            # the next run of the agent, same session
            again: list[str] = []
            nxt = Uplink(config, buffer, on_command=lambda t, p: again.append(p.decode()))
            task = asyncio.create_task(nxt.run())
            await until(lambda: nxt.connected, 10, "connected again")
            await asyncio.sleep(2)
            await nxt.stop()
            await asyncio.wait_for(task, 15)
        await gate.close()
        return again

    again = run(body(), 60)
    assert any("while-away" in c for c in again), "the queued command is gone"
