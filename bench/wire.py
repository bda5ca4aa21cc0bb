"""What a reading costs on the wire: bytes per reading between the agent and the broker.

Real agents poll a simulated 20-point three-phase meter and publish through a byte-counting TCP
proxy to a real Mosquitto: every byte both ways is counted, MQTT framing, PUBACKs, keepalives and
(over mqtts://) TLS records. Not counted: TCP/IP headers (about 52 bytes per segment on a
cellular link, one or two segments each way per message).

The meter reads what such a meter's registers hold, at their resolution: voltages in 0.1 V,
currents in 0.01 A, powers in W, power factor in 0.001, frequency in 0.01 Hz, THD and temperature
in 0.1, four energy counters in Wh/varh. The values drift slowly (a daily load curve, 15-minute
and hourly cycles) under measurement noise of a few counts in the last digit (``MeterModel``).

For each link (TCP, TLS) and encoding (JSON, zlib), these phases one after another, each on an
agent of its own:

* set-up and health: an agent with nothing to send connects; its bytes until the link is quiet
  are the connection's set-up (TCP/TLS handshake, CONNECT, CONNACK, ``status``, ``meta``, the
  ``cmd`` subscription); then two of its ``health`` reports (``health_interval`` 4 s here);
* live at 1 s: the meter polled every second, a window of whole messages once the connection is
  up (one sample per message);
* live at 60 s: computed from the 1 s figure (each sample is its own message either way), plus
  one keepalive PINGREQ/PINGRESP per minute (the most the agent sends when it publishes once a
  minute with the default 60 s keepalive): 4 bytes, over TLS in two records of their own;
* backlog at 1 s and at 60 s: the agent starts with a backlog already in its buffer (written with
  its own ``Buffer`` beforehand, as ``bench.suite`` does: an hour-long outage at 60 s cannot be
  waited for), the meter's readings 1 s or 60 s apart; the drain's bytes less the set-up, over
  its readings. Batches are ``batch_max`` (500) samples, as after any outage that long.

The four link/encoding runs go side by side (bytes do not depend on the CPU they share).
``health`` is every 60 s by default and plain JSON whatever the encoding: it is kept out of the
other windows (``health_interval`` 1 h there) and given on its own.

A second table needs no network: telemetry payload bytes per reading by samples per message, for
this meter and for one whose float32 registers carry every digit of their noise.

Run from the repository root:
    python -m bench.wire                  # about a minute
    python -m bench.wire --backlog 5000   # a longer outage
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import random
import ssl
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from agent.api import BufferSection
from agent.model import Sample, Value
from agent.store.buffer import Buffer
from agent.testkit.broker import Broker
from agent.testkit.certs import Certs, make_certs
from agent.testkit.mqtt import Subscriber
from agent.testkit.net import free_port
from agent.testkit.process import AgentProcess
from agent.uplink.wire import TelemetryEncoder, to_json_bytes
from drivers.modbus.codec import decode, encode
from drivers.modbus.schema import ModbusPoint, PointType
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

from ._rig import markdown_table

#: The energy counters' names: they integrate the power.
COUNTERS = ("e_import", "e_export", "eq_import", "eq_export")


def meter_points() -> list[ModbusPoint]:
    """A three-phase meter's 20 registers: name, type and resolution."""
    layout: list[tuple[str, PointType, float]] = [
        *((f"u_l{k}", "uint16", 0.1) for k in (1, 2, 3)),  # V
        *((f"i_l{k}", "uint16", 0.01) for k in (1, 2, 3)),  # A
        *((f"p_l{k}", "int16", 1.0) for k in (1, 2, 3)),  # W
        ("p_total", "int32", 1.0),  # W
        ("q_total", "int32", 1.0),  # var
        ("s_total", "int32", 1.0),  # VA
        ("pf", "uint16", 0.001),
        ("freq", "uint16", 0.01),  # Hz
        ("thd_u", "uint16", 0.1),  # %
        ("temp", "int16", 0.1),  # °C
        *((name, "uint32", 1.0) for name in COUNTERS),  # Wh, Wh, varh, varh
    ]
    points, address = [], 0
    for name, kind, scale in layout:
        points.append(ModbusPoint(name, table="holding", address=address, type=kind, scale=scale))
        address += 2 if kind.endswith("32") else 1
    return points


POINTS = meter_points()
READINGS = len(POINTS)
BATCH_MAX = 500  # the agent's default mqtt.batch_max
TAU = 2 * math.pi
#: PINGREQ and PINGRESP, two bytes each.
PING = 4
#: What a TLS record adds to what it carries: header, and the AEAD's tag (and in TLS 1.3 the
#: inner content type; in TLS 1.2 GCM's explicit nonce).
TLS_RECORD_OVERHEAD = {"TLSv1.3": 5 + 1 + 16, "TLSv1.2": 5 + 8 + 16}


class MeterModel:
    """The meter's quantities at time ``t`` (s since the epoch): a daily load curve with 15-min
    and hourly cycles, measurement noise of a few counts of each register's resolution, and
    energy counters that integrate the power. Called with ``t`` rising; seeded, reproducible."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.last: float | None = None
        self.energy = [48_213_477.0, 1_920_004.0, 9_771_215.0, 35_118.0]  # Wh, Wh, varh, varh

    def at(self, t: float) -> dict[str, float]:
        noise = self.rng.gauss
        load = 0.55 - 0.25 * math.cos(TAU * t / 86400) + 0.06 * math.sin(TAU * t / 900)
        volts = [230 + 2.5 * math.sin(TAU * t / 7200 + k) + noise(0, 0.25) for k in range(3)]
        amps = [16 * load * (1 + 0.06 * k) + noise(0, 0.04) for k in range(3)]
        pf = 0.93 + 0.03 * math.sin(TAU * t / 3600) + noise(0, 0.002)
        watts = [volts[k] * amps[k] * pf for k in range(3)]
        apparent = sum(v * a for v, a in zip(volts, amps, strict=True))
        reactive = math.sqrt(max(apparent**2 - sum(watts) ** 2, 0.0))
        if self.last is not None:
            hours = (t - self.last) / 3600
            self.energy[0] += sum(watts) * hours
            self.energy[2] += reactive * hours
        self.last = t
        return {
            **{f"u_l{k + 1}": v for k, v in enumerate(volts)},
            **{f"i_l{k + 1}": a for k, a in enumerate(amps)},
            **{f"p_l{k + 1}": w for k, w in enumerate(watts)},
            "p_total": sum(watts),
            "q_total": reactive,
            "s_total": apparent,
            "pf": pf,
            "freq": 50 + 0.02 * math.sin(TAU * t / 600) + noise(0, 0.005),
            "thd_u": 2.5 + 0.8 * load + noise(0, 0.05),
            "temp": 28 + 6 * load + noise(0, 0.05),
            **dict(
                zip(("e_import", "e_export", "eq_import", "eq_export"), self.energy, strict=True)
            ),
        }


class SimulatedMeter:
    """A simulated Modbus slave whose registers follow ``MeterModel``: ``read(t)`` sets them for
    time ``t`` and returns what a poll then reads (the driver's own decoding)."""

    def __init__(self, seed: int = 7) -> None:
        self.slave = SimulatedSlave(1, POINTS)
        self.model = MeterModel(seed)

    def read(self, t: float) -> dict[str, Value]:
        quantities = self.model.at(t)
        for point in POINTS:
            raw = round(quantities[point.name] / point.scale)
            self.slave.set_registers(point.table, point.address, encode(_unscaled(point), raw))
        return {point.name: self.slave.value(point.name) for point in POINTS}

    async def animate(self, every: float = 0.1) -> None:
        """Follow the wall clock, as the meter's own registers do."""
        while True:
            self.read(time.time())
            await asyncio.sleep(every)


def _unscaled(point: ModbusPoint) -> ModbusPoint:
    return replace(point, scale=1.0)


def _float32(value: float) -> Value:
    """``value`` as a float32 register reads: the shortest decimal of the float32."""
    point = ModbusPoint("x", table="holding", address=0, type="float32")
    return decode(point, encode(point, value))


# --- the link


class CountingProxy:
    """``127.0.0.1:port`` to the broker, counting every byte each way."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = 0  # agent to broker
        self.down = 0  # broker to agent
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def total(self) -> int:
        return self.up + self.down

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        """Stop listening, close every connection and let the handlers end by themselves
        (cancelled, asyncio's server would print each one)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer, upwards=True),
            self._pipe(up_reader, writer, upwards=False),
            return_exceptions=True,
        )
        self._writers -= {writer, up_writer}

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upwards: bool
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if upwards:
                    self.up += len(chunk)
                else:
                    self.down += len(chunk)
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()

    async def quiet(self, seconds: float = 0.5, timeout: float = 30.0) -> int:
        """The byte count once nothing has passed for ``seconds``."""
        deadline = time.monotonic() + timeout
        while True:
            before = self.total
            await asyncio.sleep(seconds)  # a silence is waited for, not an event
            if self.total == before:
                return before
            if time.monotonic() > deadline:
                raise TimeoutError(f"the link did not go quiet in {timeout}s")


# --- one agent


@dataclass(frozen=True)
class Link:
    """One run's link and encoding."""

    tls: bool
    compression: str

    @property
    def name(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}-{'zlib' if self.compression == 'zlib' else 'json'}"


@dataclass
class Rig:
    """What every run shares: the broker (plain and TLS listeners) and its certificates."""

    broker: Broker
    certs: Certs
    workdir: Path
    tls_overhead: int  # bytes a TLS record adds


def site(
    workdir: Path,
    agent_id: str,
    link: Link,
    proxy: CountingProxy,
    slave_port: int,
    rig: Rig,
    *,
    interval: str,
    health: str = "1h",
) -> Path:
    """The agent's configuration: its defaults, but for the broker (through the proxy), the
    encoding, the meter's interval and ``health_interval``."""
    points = "".join(
        f'[[device.point]]\nname = "{p.name}"\naddress = {p.address}\ntype = "{p.type}"\n'
        + (f"scale = {p.scale}\n" if p.scale != 1.0 else "")
        for p in POINTS
    )
    scheme = "mqtts" if link.tls else "mqtt"
    trust = f'ca_file = "{rig.certs.ca}"\n' if link.tls else ""
    config = workdir / "site.toml"
    config.write_text(
        f'[agent]\nid = "{agent_id}"\ndata_dir = "{workdir / "data"}"\n'
        f'[mqtt]\nurl = "{scheme}://127.0.0.1:{proxy.port}"\ntopic_prefix = "w"\n'
        f'compression = "{link.compression}"\nhealth_interval = "{health}"\n{trust}'
        f'[[bus]]\nname = "plc"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = {slave_port}\n'
        f'[[device]]\nname = "meter"\nbus = "plc"\ninterval = "{interval}"\n{points}'
    )
    return config


def telemetry_samples(subscriber: Subscriber, *, backlog: bool | None = None) -> int:
    """Samples received so far (only those sent as backlog, or as live, when asked)."""
    return sum(
        len(payload["samples"])
        for payload in subscriber.payloads("telemetry")
        if backlog is None or bool(payload.get("backlog")) == backlog
    )


def messages_seen(subscriber: Subscriber) -> int:
    """Telemetry messages received so far."""
    return len(subscriber.payloads("telemetry"))


@contextlib.asynccontextmanager
async def agent_on(
    rig: Rig, link: Link, phase: str, slave_port: int, **settings: str
) -> AsyncIterator[tuple[CountingProxy, Subscriber]]:
    """An agent of its own (``<link>-<phase>``, ids of one length so payloads compare) through a
    fresh proxy, and a subscriber to everything it publishes; stopped on exit."""
    agent_id = f"{link.name}-{phase}"
    workdir = rig.workdir / agent_id
    workdir.mkdir(exist_ok=True)
    port = rig.broker.secure_port if link.tls else rig.broker.port
    assert port is not None
    proxy = CountingProxy(port)
    await proxy.open()
    config = site(workdir, agent_id, link, proxy, slave_port, rig, **settings)
    agent = AgentProcess(config)
    try:
        async with Subscriber(rig.broker.host, rig.broker.port, f"w/{agent_id}/#") as sub:
            agent.start()
            try:
                yield proxy, sub
            finally:
                await asyncio.to_thread(agent.stop)
    finally:
        await proxy.close()
    if proxy.connections != 1:
        raise RuntimeError(f"{agent_id}: {proxy.connections} connections, one expected")


# --- the measurements


@dataclass
class Figures:
    setup: int = 0  # bytes of one connection's set-up
    health: float = 0.0  # bytes per health report
    live_bytes: int = 0
    live_messages: int = 0
    live_samples: int = 0
    backlog_bytes: dict[int, int] | None = None  # spacing (s): drain bytes, set-up excluded
    backlog_samples: int = 0
    ping: int = PING

    def live(self) -> float:
        return self.live_bytes / (self.live_samples * READINGS)

    def live_60s(self) -> float:
        per_message = self.live_bytes / self.live_messages + self.ping
        return per_message / (self.live_samples / self.live_messages * READINGS)

    def backlog(self, spacing: int) -> float:
        assert self.backlog_bytes is not None
        return self.backlog_bytes[spacing] / (self.backlog_samples * READINGS)


async def setup_and_health(rig: Rig, link: Link, slave_port: int, figures: Figures) -> None:
    """Set-up: an agent with nothing to send (its meter is polled once a day) until the link is
    quiet; health: the bytes from one report's arrival to two reports later."""
    async with agent_on(rig, link, "boot", slave_port, interval="1d", health="4s") as (proxy, sub):
        await sub.wait_for(lambda _: bool(sub.payloads("meta")), timeout=30)
        figures.setup = await proxy.quiet()
        if sub.payloads("health") or messages_seen(sub):
            raise RuntimeError(f"{link.name}: something else came during the set-up")
        await sub.wait_for(lambda _: len(sub.payloads("health")) >= 1, timeout=30)
        start = await proxy.quiet(0.3)
        await sub.wait_for(lambda _: len(sub.payloads("health")) >= 3, timeout=30)
        figures.health = (await proxy.quiet(0.3) - start) / 2


async def live(rig: Rig, link: Link, slave_port: int, messages: int, figures: Figures) -> None:
    """The meter at 1 s: the bytes of ``messages`` whole messages, from just after one arrived
    (its PUBACK passed) to just after the last one did, the first few left out (the connection,
    the first message naming the topic that the next ones give by alias)."""
    async with agent_on(rig, link, "live", slave_port, interval="1s") as (proxy, sub):
        await sub.wait_for(lambda _: messages_seen(sub) >= 3, timeout=30)
        first = await _just_after_a_message(sub)
        bytes0, samples0 = proxy.total, telemetry_samples(sub)
        await sub.wait_for(lambda _: messages_seen(sub) >= first + messages, timeout=messages + 30)
        await asyncio.sleep(0.25)  # its PUBACK on the way back; the next poll is 1 s away
        figures.live_bytes = proxy.total - bytes0
        figures.live_messages = messages_seen(sub) - first
        figures.live_samples = telemetry_samples(sub) - samples0


async def _just_after_a_message(sub: Subscriber) -> int:
    """The telemetry message count, taken 0.25 s after a message arrived (mid-way to the next)."""
    count = messages_seen(sub)
    await sub.wait_for(lambda _: messages_seen(sub) > count, timeout=10)
    await asyncio.sleep(0.25)  # its PUBACK on the way back; the next poll is 1 s away
    return messages_seen(sub)


async def backlog(
    rig: Rig, link: Link, slave_port: int, spacing: int, count: int, figures: Figures
) -> None:
    """An agent that starts with ``count`` samples ``spacing`` s apart on disk: the bytes of
    its connection until the backlog has arrived and the link is quiet, less the set-up."""
    phase = f"bk{spacing:02d}"
    data_dir = rig.workdir / f"{link.name}-{phase}" / "data"
    fill_backlog(data_dir, spacing, count)
    async with agent_on(rig, link, phase, slave_port, interval="1d") as (proxy, sub):
        await sub.wait_for(
            lambda _: telemetry_samples(sub, backlog=True) >= count, timeout=30 + count / 100
        )
        total = await proxy.quiet()
        if telemetry_samples(sub, backlog=False):
            raise RuntimeError(f"{link.name}: a live sample came during the drain")
    figures.backlog_bytes = (figures.backlog_bytes or {}) | {spacing: total - figures.setup}
    figures.backlog_samples = count


def fill_backlog(data_dir: Path, spacing: int, count: int) -> None:
    """The agent's buffer holding ``count`` of the meter's readings ``spacing`` s apart, the
    last one a minute ago: an outage's backlog, written with the agent's own ``Buffer``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    defaults = BufferSection()
    buffer = Buffer(data_dir / "buffer.sqlite", defaults.max_size, defaults.flush_interval)
    buffer.open()
    meter = SimulatedMeter()
    first = time.time() - 60 - count * spacing
    for n in range(count):
        t = first + n * spacing
        buffer.add("meter", int(t * 1000), meter.read(t), now=0)
    buffer.flush(force=True)
    buffer.close()


async def measure(rig: Rig, link: Link, args: argparse.Namespace) -> Figures:
    """Every figure of one link and encoding, one agent after another against one meter."""
    figures = Figures(ping=PING + (2 * rig.tls_overhead if link.tls else 0))
    meter = SimulatedMeter()
    async with ModbusSimulator([meter.slave], host="127.0.0.1", port=0) as sim:
        animation = asyncio.create_task(meter.animate())
        try:
            await setup_and_health(rig, link, sim.port, figures)
            await live(rig, link, sim.port, args.live, figures)
            for spacing in (1, 60):
                await backlog(rig, link, sim.port, spacing, args.backlog, figures)
        finally:
            animation.cancel()
            await asyncio.gather(animation, return_exceptions=True)
    return figures


async def tls_record_overhead(broker: Broker, certs: Certs) -> tuple[str, int]:
    """The TLS version the broker and a Python client (the agent's) agree on, and what each
    record adds."""
    assert broker.secure_port is not None
    context = ssl.create_default_context(cafile=str(certs.ca))
    _, writer = await asyncio.open_connection(broker.host, broker.secure_port, ssl=context)
    tls = writer.get_extra_info("ssl_object")
    version, cipher = str(tls.version()), str(tls.cipher()[0])
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    if version not in TLS_RECORD_OVERHEAD or (version == "TLSv1.2" and "GCM" not in cipher):
        raise RuntimeError(f"{version} {cipher}: its record overhead is not known here")
    return f"{version} {cipher}", TLS_RECORD_OVERHEAD[version]


# --- what is printed


def wire_table(results: Sequence[tuple[Link, Figures]]) -> str:
    rows = [
        (
            "mqtts" if link.tls else "mqtt",
            "zlib" if link.compression == "zlib" else "JSON",
            f"{f.live():.1f}",
            f"{f.live_60s():.1f}",
            f"{f.backlog(1):.2f}",
            f"{f.backlog(60):.2f}",
            f"{f.setup:,}",
            f"{f.health:,.0f}",
        )
        for link, f in results
    ]
    headers = (
        "link",
        "encoding",
        "live at 1 s, B/reading",
        "live at 60 s, B/reading",
        "backlog at 1 s, B/reading",
        "backlog at 60 s, B/reading",
        "set-up, B",
        "health, B/report",
    )
    return markdown_table(headers, rows)


def meter_samples(count: int, spacing: int, full_float32: bool = False) -> list[Sample]:
    """``count`` of the meter's samples ``spacing`` s apart; with ``full_float32``, every
    quantity as a float32 register would give it, unrounded, noise in every digit."""
    meter, t0 = SimulatedMeter(), 1_795_000_000
    samples = []
    for n in range(count):
        t = t0 + n * spacing
        if full_float32:
            values = {k: _float32(v) for k, v in meter.model.at(t).items()}
        else:
            values = meter.read(t)
        samples.append(Sample(n + 1, "meter", int(t * 1000), values))
    return samples


def agent_payloads(samples: list[Sample], per_message: int, compression: str) -> int:
    """Bytes of the agent's telemetry payloads for ``samples``, ``per_message`` a message."""
    encoder = TelemetryEncoder("gw-0042", compression)
    return sum(
        len(message.payload)
        for start in range(0, len(samples), per_message)
        for message in encoder.messages(
            samples[start : start + per_message], backlog=per_message > 1, limit=10**7
        )
    )


def columnar_payloads(samples: list[Sample], per_message: int, compression: str) -> int:
    """The same in a columnar JSON form the agent does not send (point names once, the times
    as deltas, one array per point), for comparison: what a second schema would save."""
    size = 0
    for start in range(0, len(samples), per_message):
        batch = samples[start : start + per_message]
        form = {
            "agent": "gw-0042",
            "device": batch[0].device,
            "id": batch[0].id,
            "ts": batch[0].ts,
            "dts": [b.ts - a.ts for a, b in itertools.pairwise(batch)],
            "points": {name: [s.values[name] for s in batch] for name in batch[0].values},
        }
        payload = to_json_bytes(form)
        size += len(zlib.compress(payload, 9) if compression == "zlib" else payload)
    return size


def payload_table(count: int = BATCH_MAX) -> str:
    """Telemetry payload bytes per reading (no MQTT, no TLS) by samples per message."""
    kinds: list[tuple[str, bool, Callable[[list[Sample], int, str], int], Sequence[int]]] = [
        ("registers at their resolution", False, agent_payloads, (1, 10, 60, BATCH_MAX)),
        ("float32, every digit", True, agent_payloads, (1, BATCH_MAX)),
        ("registers, columnar form (comparison)", False, columnar_payloads, (BATCH_MAX,)),
        ("float32, columnar form (comparison)", True, columnar_payloads, (BATCH_MAX,)),
    ]
    rows = []
    for label, full, payloads, sizes in kinds:
        batches = {spacing: meter_samples(count, spacing, full) for spacing in (1, 60)}
        for size in sizes:
            cells = [
                f"{payloads(batches[spacing], size, compression) / (count * READINGS):.2f}"
                for spacing in (1, 60)
                for compression in ("none", "zlib")
            ]
            rows.append((label, size, *cells))
    headers = (
        "meter",
        "samples/message",
        "JSON at 1 s",
        "zlib at 1 s",
        "JSON at 60 s",
        "zlib at 60 s",
    )
    return markdown_table(headers, rows)


@contextlib.asynccontextmanager
async def rig(workdir: Path) -> AsyncIterator[Rig]:
    certs = make_certs(workdir / "pki")
    broker = Broker(workdir, certs=certs)
    broker.start()
    try:
        version, overhead = await tls_record_overhead(broker, certs)
        print(f"TLS: {version}, {overhead} bytes a record")
        yield Rig(broker, certs, workdir, overhead)
    finally:
        broker.stop()


async def main(args: argparse.Namespace) -> None:
    links = [Link(tls, compression) for tls in (False, True) for compression in ("none", "zlib")]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        async with rig(Path(tmp)) as bench:
            figures = await asyncio.gather(*(measure(bench, link, args) for link in links))
    print(
        f"\n{args.live} live messages at 1 s; backlogs of {args.backlog:,} samples "
        f"({args.backlog * READINGS:,} readings) in batches of {BATCH_MAX}; "
        f"{time.monotonic() - started:.0f} s\n"
    )
    print(wire_table(list(zip(links, figures, strict=True))))
    print("\nTelemetry payload alone, bytes per reading (the same meter, no network):\n")
    print(payload_table())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--live", type=int, default=30, help="live messages to count (30)")
    parser.add_argument("--backlog", type=int, default=1000, help="samples per backlog (1000)")
    asyncio.run(main(parser.parse_args()))
