"""A fleet on one machine: N ``edge-agent run`` processes, each with its own id and its own
simulated Modbus TCP slaves, against one Mosquitto; then the broker goes away for a while.

Reports each agent's memory and CPU (min / median / max over the fleet), the broker's message rate
and CPU, and that every agent's sample ids arrived without a gap; then stops the broker for
``--outage`` seconds and shows when each agent came back (full jitter: spread over its backoff,
no stampede) and that nothing was lost.

The slaves (one ``ModbusSimulator`` on its own port per agent) are served from this process. The
broker is a Mosquitto of our own with unlimited queues for the watching subscriber
(``max_queued_messages 0``), so a gap can only be the agents' doing.

Run from the repository root:
    python -m bench.fleet                          # 100 agents, 60 s outage: ~5 minutes
    python -m bench.fleet --agents 20 --outage 15  # ~1.5 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.testkit.mqtt import Subscriber
from agent.testkit.net import free_port, wait_listening
from agent.testkit.process import AgentProcess
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

from ._rig import READINGS_PER_SAMPLE, VALUES, cpu_seconds, markdown_table, rig_pid, until
from .suite import POINTS, private, status_kib, task_cpu

PREFIX = "fleet"
HOST = "127.0.0.1"
CONNECTED = re.compile(r"^(\d+): New client connected from \S+ as (\S+) ")


class Mosquitto:
    """One Mosquitto for the fleet: persistent sessions, timestamped connection log."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"listener {self.port} {HOST}\nallow_anonymous true\n"
            "max_queued_messages 0\n"  # the watcher's queue: never drop what it has not taken
            f"persistence true\npersistence_location {self.workdir}/\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages true\n"
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_listening(HOST, self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def connections_since(self, since: float) -> dict[str, float]:
        """Each client's first connection at or after ``since`` (Unix time, whole seconds)."""
        first: dict[str, float] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            if (match := CONNECTED.match(line)) and int(match[1]) >= int(since):
                first.setdefault(match[2], float(match[1]))
        return first


@contextlib.contextmanager
def running(broker: Mosquitto) -> Iterator[Mosquitto]:
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Member:
    """One agent of the fleet, its slaves' address and what arrived from it."""

    name: str
    workdir: Path
    modbus_port: int = 0
    process: AgentProcess | None = None
    ids: set[int] = field(default_factory=set)
    newest_ts: int = 0

    def config(self, broker: Mosquitto, devices: int, interval: float, reconnect: float) -> Path:
        lines = [
            f'[agent]\nid = "{self.name}"\ndata_dir = "{self.workdir / "data"}"\n',
            f'[mqtt]\nurl = "{broker.url}"\ntopic_prefix = "{PREFIX}"\n'
            f'reconnect_max = "{reconnect:g}s"\n',
            '[[template]]\nname = "bench20"\n',
            *(
                f'[[template.point]]\nname = "{p.name}"\naddress = {p.address}\ntype = "float32"\n'
                for p in POINTS
            ),
            f'[[bus]]\nname = "plc"\ntype = "modbus-tcp"\nhost = "{HOST}"\n'
            f'port = {self.modbus_port}\ntimeout = "1s"\n',
            *(
                f'[[device]]\nname = "meter{d}"\nbus = "plc"\nunit = {d + 1}\n'
                f'interval = "{interval:g}s"\ntemplate = "bench20"\n'
                for d in range(devices)
            ),
        ]
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "agent.toml"
        path.write_text("\n".join(lines))
        return path

    @property
    def pid(self) -> int:
        pid = rig_pid(self.process) if self.process else None
        assert pid is not None, f"{self.name} is not running"
        return pid

    def gaps(self) -> int:
        """Ids missing up to the last that arrived (an agent with a fresh data dir starts at 1)."""
        return (max(self.ids) - len(self.ids)) if self.ids else 0


class Watcher:
    """A QoS 1 subscriber with a persistent session on every agent's topics; it follows the
    broker through its restart (the broker keeps what arrives for it meanwhile)."""

    def __init__(self, broker: Mosquitto, members: Sequence[Member]) -> None:
        self.broker = broker
        self.by_name = {m.name: m for m in members}
        self.sub: Subscriber | None = None
        self.messages = 0
        self._taken = 0

    @contextlib.asynccontextmanager
    async def attached(self) -> AsyncIterator[Watcher]:
        async with Subscriber(HOST, self.broker.port, f"{PREFIX}/#", session="fleet-watch") as s:
            self.sub, self._taken = s, 0
            try:
                yield self
            finally:
                self.collect()
                self.sub = None

    def collect(self) -> int:
        """Take in what arrived; returns the messages seen so far."""
        if self.sub is None:
            return self.messages
        new = self.sub.messages[self._taken :]
        self._taken += len(new)
        self.messages += len(new)
        for topic, payload, _ in new:
            if not topic.endswith("/telemetry"):
                continue
            member = self.by_name[payload["agent"]]
            for sample in payload["samples"]:
                member.ids.add(sample["id"])
                member.newest_ts = max(member.newest_ts, sample["ts"])
        return self.messages


@dataclass
class Usage:
    rss: list[int]
    anon: list[int]
    pss: list[int]
    cpu: list[float]  # share of one core over the window


async def measure(
    members: Sequence[Member], watcher: Watcher, broker: Mosquitto, seconds: float
) -> tuple[Usage, float, float]:
    """Every agent's memory now and its CPU over ``seconds``; the messages the watcher got and
    the broker's CPU meanwhile."""
    assert broker.process is not None
    before = [task_cpu(m.pid) for m in members]
    broker_before, messages, started = (
        cpu_seconds(broker.process.pid),
        watcher.messages,
        time.time(),
    )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        watcher.collect()
    elapsed = time.time() - started
    cpu = [(task_cpu(m.pid) - b) / elapsed for m, b in zip(members, before, strict=True)]
    memory = [(status_kib(m.pid, "VmRSS"), *private(m.pid)) for m in members]
    rss, anon, pss = (list(column) for column in zip(*memory, strict=True))
    usage = Usage(rss, anon, pss, cpu)
    broker_cpu = (cpu_seconds(broker.process.pid) - broker_before) / elapsed
    return usage, (watcher.messages - messages) / elapsed, broker_cpu


def spread(values: Sequence[float]) -> str:
    if not values:
        return "–"
    return " / ".join(f"{v:.1f}" for v in (min(values), statistics.median(values), max(values)))


def histogram(delays: Sequence[float], width: float) -> str:
    """Agents reconnected per ``width``-second slot after the broker came back."""
    if not delays:
        return "(none)"
    slots = int(max(delays) // width) + 1
    counts = [0] * slots
    for d in delays:
        counts[int(d // width)] += 1
    return "\n".join(
        f"  {i * width:4.0f}–{(i + 1) * width:<4.0f}s {n:4d} {'#' * n}"
        for i, n in enumerate(counts)
    )


async def run(args: argparse.Namespace, workdir: Path) -> None:
    members = [Member(f"gw{n:03d}", workdir / f"gw{n:03d}") for n in range(args.agents)]
    readings_per_s = args.agents * args.devices * READINGS_PER_SAMPLE / args.interval
    print(
        f"{args.agents} agents × {args.devices} devices × {READINGS_PER_SAMPLE} points every "
        f"{args.interval:g} s ({readings_per_s:,.0f} readings/s in all), one Mosquitto; "
        f"outage {args.outage:g} s, reconnect_max {args.reconnect_max:g} s\n"
    )
    async with contextlib.AsyncExitStack() as stack:
        for member in members:
            slaves = [SimulatedSlave(unit, POINTS) for unit in range(1, args.devices + 1)]
            for slave in slaves:
                for name, value in VALUES.items():
                    slave.set_value(name, value)
            simulator = await stack.enter_async_context(ModbusSimulator(slaves))
            member.modbus_port = simulator.port
        broker = Mosquitto(workdir / "broker")
        stack.enter_context(running(broker))
        watcher = Watcher(broker, members)
        try:
            began = time.perf_counter()
            async with watcher.attached():
                for n, member in enumerate(members):
                    config = member.config(broker, args.devices, args.interval, args.reconnect_max)
                    member.process = AgentProcess(config)
                    member.process.start()
                    if n % args.start_batch == args.start_batch - 1:
                        await asyncio.sleep(args.start_pause)  # ease the start-ups' import CPU
                        watcher.collect()
                await until(
                    lambda: watcher.collect() >= 0 and all(m.ids for m in members),
                    120,
                    "a reading from every agent",
                    0.2,
                )
                print(
                    f"all {args.agents} agents delivering after {time.perf_counter() - began:.0f} s"
                )
                await asyncio.sleep(args.settle)
                usage, message_rate, broker_cpu = await measure(
                    members, watcher, broker, args.measure
                )
            print(fleet_table(usage, message_rate, broker_cpu, args.measure))
            print(f"\nids before the outage: {gap_report(members)}")
            await outage(args, members, broker, watcher)
        finally:
            stops = [asyncio.to_thread(m.process.stop) for m in members if m.process]
            codes = await asyncio.gather(*stops, return_exceptions=True)
            failed = [m.name for m, c in zip(members, codes, strict=False) if c not in (0, None)]
            if failed:
                print(f"agents that did not exit cleanly: {failed}")


def fleet_table(usage: Usage, message_rate: float, broker_cpu: float, seconds: float) -> str:
    rss, anon, pss = ([kib / 1024 for kib in xs] for xs in (usage.rss, usage.anon, usage.pss))
    rows = [
        ("agent RSS, MiB", spread(rss)),
        ("agent RssAnon (own pages), MiB", spread(anon)),
        ("agent PSS (shared pages divided among the fleet), MiB", spread(pss)),
        ("agent CPU, % of one core", spread([c * 100 for c in usage.cpu])),
        ("fleet CPU, cores", f"{sum(usage.cpu):.2f}"),
        ("fleet memory: sum of PSS, MiB", f"{sum(usage.pss) / 1024:,.0f}"),
        ("broker CPU, % of one core", f"{broker_cpu * 100:.1f}"),
        (
            "messages/s the broker delivered to the watcher (= published by the fleet)",
            f"{message_rate:,.1f}",
        ),
    ]
    return f"Over {seconds:g} s (min / median / max over the agents):\n\n" + markdown_table(
        ("measure", "value"), rows
    )


def gap_report(members: Sequence[Member]) -> str:
    gaps = {m.name: m.gaps() for m in members if m.gaps()}
    samples = sum(len(m.ids) for m in members)
    if gaps:
        return f"{samples:,} samples; GAPS in {len(gaps)} agents: {gaps}"
    return (
        f"{samples:,} samples from {len(members)} agents, every agent's ids from 1 up without a gap"
    )


async def outage(
    args: argparse.Namespace, members: Sequence[Member], broker: Mosquitto, watcher: Watcher
) -> None:
    print(f"\nbroker stopped for {args.outage:g} s")
    broker.stop()
    away_ms = int(time.time() * 1000)
    await asyncio.sleep(args.outage)
    back = time.time()
    broker.start()
    back_ms = int(back * 1000)
    async with watcher.attached():
        # every agent back, and everything it polled until the broker returned arrived
        await until(
            lambda: watcher.collect() >= 0 and all(m.newest_ts >= back_ms for m in members),
            args.reconnect_max + 120,
            "every agent's backlog",
            0.5,
        )
        await asyncio.sleep(2.0)
        watcher.collect()
    caught_up = time.time() - back
    connected = broker.connections_since(back)
    delays = sorted(connected[m.name] - int(back) for m in members if m.name in connected)
    missing = [m.name for m in members if m.name not in connected]
    print(
        f"broker back; every agent's backlog had arrived {caught_up:.0f} s later. Reconnections "
        f"after the restart (s, broker log's whole seconds): min / median / max "
        f"{spread(delays)}; 90th percentile {percentile(delays, 0.9):.0f}"
        + (f"; not seen reconnecting: {missing}" if missing else "")
    )
    print(histogram(delays, max(1.0, args.reconnect_max / 12)))
    print(f"\nids after the outage: {gap_report(members)}")
    newest_before = min(m.newest_ts for m in members)
    print(
        f"every agent's readings taken during the outage ({away_ms} → {back_ms} ms) arrived: "
        f"{'yes' if newest_before >= back_ms else 'NO'}"
    )


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--devices", type=int, default=2, help="devices of 20 points per agent")
    parser.add_argument("--interval", type=float, default=2.0, help="poll interval, seconds")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds without the broker")
    parser.add_argument(
        "--reconnect-max", type=float, default=60.0, help="the agents' mqtt.reconnect_max"
    )
    parser.add_argument("--measure", type=float, default=20.0, help="seconds of measurement")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--start-batch", type=int, default=10, help="agents started at once")
    parser.add_argument("--start-pause", type=float, default=3.0, help="seconds between batches")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
