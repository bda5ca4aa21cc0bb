"""What a reading costs on the wire: bytes per reading between the agent and the broker.

A real agent polls one simulated 20-point meter (ten voltages and currents in tenths, six
temperatures in tenths, four energy counters, moving along the simulator's slow sines) and
publishes through a byte-counting TCP proxy to a real Mosquitto: every byte both ways is counted,
MQTT framing, PUBACKs, keepalives and (over mqtts://) TLS records. Not counted: TCP/IP headers
(about 52 bytes per segment on a cellular link, one or two segments each way per message).

For each encoding (JSON, zlib) over plain TCP and TLS:

* live at 1 s: a steady window after the connection is up, one sample per message;
* live at 60 s: computed from the 1 s figures (one message per sample either way), plus the
  keepalive PINGREQ/PINGRESP a quiet minute costs;
* backlog: the proxy refuses the agent while samples pile up (polled every 50 ms), then lets it
  back; the drain's bytes less the connection's set-up, over the readings it delivered.

The set-up (TCP-level bytes of CONNECT, CONNACK, status, meta, the cmd subscription and, with
TLS, the handshake) is reported on its own.

Run from the repository root:
    python -m bench.wire                 # about 2 minutes
    python -m bench.wire --backlog 500   # a larger backlog batch
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from agent.config.types import PointConfig
from agent.testkit.broker import Broker
from agent.testkit.certs import Certs, make_certs
from agent.testkit.mqtt import Subscriber
from agent.testkit.net import free_port
from agent.testkit.process import AgentProcess
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

from ._rig import markdown_table

POINTS = [
    *(PointConfig(f"v{i}", "holding", i, "uint16", scale=0.1) for i in range(10)),
    *(PointConfig(f"t{i}", "holding", 10 + i, "int16", scale=0.1) for i in range(6)),
    *(PointConfig(f"e{i}", "holding", 16 + 2 * i, "uint32") for i in range(4)),
]
READINGS = len(POINTS)
#: A quiet minute's keepalive at the default 60 s: PINGREQ and PINGRESP, two bytes each.
PING = 4


class CountingProxy:
    """127.0.0.1:port to the broker, counting every byte; ``refuse`` closes it (nothing
    listens: the agent probes), ``admit`` opens it again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = 0  # agent to broker
        self.down = 0  # broker to agent
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def total(self) -> int:
        return self.up + self.down

    async def admit(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def refuse(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    async def close(self) -> None:
        """Refuse, and wait for the connections to wind down (not cancelled: asyncio would
        print each handler's cancellation)."""
        await self.refuse()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer, "up"),
            self._pipe(up_reader, writer, "down"),
            return_exceptions=True,
        )
        self._writers -= {writer, up_writer}

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if direction == "up":
                    self.up += len(chunk)
                else:
                    self.down += len(chunk)
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()


@dataclass
class Figures:
    setup: int
    live_bytes: int
    live_samples: int
    backlog_bytes: int
    backlog_samples: int

    def live(self) -> float:
        return self.live_bytes / (self.live_samples * READINGS)

    def live_60s(self) -> float:
        return (self.live_bytes / self.live_samples + PING) / READINGS

    def backlog(self) -> float:
        return self.backlog_bytes / (self.backlog_samples * READINGS)


def site(
    workdir: Path,
    proxy: CountingProxy,
    slave_port: int,
    compression: str,
    tls: bool,
    ca: Path | None,
) -> Path:
    scheme = "mqtts" if tls else "mqtt"
    trust = f'ca_file = "{ca}"\n' if tls and ca else ""
    points = "".join(
        f'  [[device.point]]\n  name = "{p.name}"\n  address = {p.address}\n  type = "{p.type}"\n'
        + (f"  scale = {p.scale}\n" if p.scale != 1.0 else "")
        for p in POINTS
    )
    config = workdir / "site.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [agent]
            id = "wire"
            data_dir = "{workdir / "data"}"
            [mqtt]
            url = "{scheme}://127.0.0.1:{proxy.port}"
            topic_prefix = "w"
            compression = "{compression}"
            batch_interval = "1s"
            """
        )
        + trust
        + textwrap.dedent(
            f"""
            [[bus]]
            name = "plc"
            type = "modbus-tcp"
            host = "127.0.0.1"
            port = {slave_port}
            [[device]]
            name = "meter"
            bus = "plc"
            interval = "1s"
            """
        )
        + points
    )
    return config


def samples_seen(subscriber: Subscriber) -> int:
    return sum(
        len(payload.get("samples", []))
        for topic, payload, _ in subscriber.messages
        if topic.endswith("/telemetry") and isinstance(payload, dict)
    )


async def until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)  # another process's progress: polled


async def measure(
    workdir: Path,
    broker: Broker,
    certs: Certs,
    compression: str,
    tls: bool,
    args: argparse.Namespace,
) -> Figures:
    target = broker.secure_port if tls else broker.port
    assert target is not None
    proxy = CountingProxy(target)
    await proxy.admit()
    slave = SimulatedSlave(1, POINTS)
    async with (
        ModbusSimulator([slave], animate=True, interval=0.05) as sim,
        Subscriber(broker.host, broker.port, "w/+/telemetry") as subscriber,
    ):
        config = site(workdir, proxy, sim.port, compression, tls, certs.ca)
        agent = AgentProcess(config)
        agent.start()
        try:
            await until(lambda: samples_seen(subscriber) >= 1, 30, "a first sample")
            setup = proxy.total
            await asyncio.sleep(1.5)  # past the first message's pacing
            bytes0, seen0 = proxy.total, samples_seen(subscriber)
            await asyncio.sleep(args.live)
            live_bytes, live_samples = proxy.total - bytes0, samples_seen(subscriber) - seen0
            await proxy.refuse()
            backlog = await _backlog(agent, config, proxy, subscriber, args.backlog)
        finally:
            agent.stop()
            await proxy.close()
    return Figures(setup, live_bytes, live_samples, backlog[0] - setup, backlog[1])


async def _backlog(
    agent: AgentProcess,
    config: Path,
    proxy: CountingProxy,
    subscriber: Subscriber,
    wanted: int,
) -> tuple[int, int]:
    """Samples pile up behind the refusing proxy (polled every 50 ms after a reload), then the
    drain: its bytes (set-up included) and the samples it delivered."""
    text = config.read_text()  # noqa: ASYNC240 (a small local file)
    reload(agent, config, text.replace('interval = "1s"', 'interval = "50ms"'))
    before = samples_seen(subscriber)
    await asyncio.sleep(wanted * 0.05 + 1)  # the backlog itself: a length, not a wait for it
    reload(agent, config, text)  # back to 1 s: the drain is mostly backlog
    await asyncio.sleep(0.5)
    bytes0 = proxy.total
    await proxy.admit()
    last = [samples_seen(subscriber)]

    def settled() -> bool:
        now = samples_seen(subscriber)
        done = now == last[0] and now - before >= wanted
        last[0] = now
        return done

    await until(settled, 60, "the backlog to drain")
    return proxy.total - bytes0, samples_seen(subscriber) - before


def reload(agent: AgentProcess, config: Path, text: str) -> None:
    config.write_text(text)
    agent.signal(signal.SIGHUP)


@contextlib.asynccontextmanager
async def rig(workdir: Path) -> AsyncIterator[tuple[Broker, Certs]]:
    certs = make_certs(workdir / "pki")
    broker = Broker(workdir, certs=certs)
    broker.start()
    try:
        yield broker, certs
    finally:
        broker.stop()


async def main(args: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        async with rig(Path(tmp)) as (broker, certs):
            for tls in (False, True):
                for compression in ("none", "zlib"):
                    workdir = Path(tmp) / f"{compression}-{'tls' if tls else 'tcp'}"
                    workdir.mkdir()
                    f = await measure(workdir, broker, certs, compression, tls, args)
                    rows.append(
                        (
                            "mqtts" if tls else "mqtt",
                            "zlib" if compression == "zlib" else "JSON",
                            f"{f.live():.1f}",
                            f"{f.live_60s():.1f}",
                            f"{f.backlog():.2f} ({f.backlog_samples} samples)",
                            f"{f.setup:,}",
                        )
                    )
    print(
        markdown_table(
            (
                "link",
                "encoding",
                "live at 1 s, B/reading",
                "live at 60 s, B/reading",
                "backlog, B/reading",
                "set-up, B",
            ),
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", type=float, default=15.0, help="seconds of live window")
    parser.add_argument("--backlog", type=int, default=300, help="samples in the backlog")
    asyncio.run(main(parser.parse_args()))
