"""Every footprint and speed benchmark in one run, against a local Mosquitto and simulated
Modbus TCP slaves, as one table of medians: memory, start-up, CPU per reading, the highest
sustained rate, disk writes per reading and backlog drains.

Each ``edge-agent run`` is a child process polling Modbus TCP slaves served from this process
(devices of 20 float32 points, one request per poll). A QoS 1 subscriber counts what arrives: a
reading counts once the broker has it, i.e. after the agent's QoS 1 publish was acknowledged.
Figures from ``/proc/PID`` of the agent: ``VmRSS`` (steady), ``VmHWM`` (peak), user + system
CPU, ``write_bytes``. Each figure is the median over several measurement windows (or, for the
start-up time, over several starts).

Run from the repository root:
    python -m bench            # ~5-6 minutes
    python -m bench --quick    # ~80 seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import PointConfig
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from agent.testkit.process import AgentProcess
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

from . import backlog_drain
from ._rig import (
    READINGS_PER_SAMPLE,
    VALUES,
    CountingBuffer,
    Interval,
    Snapshot,
    markdown_table,
    rig_pid,
    rss_kib,
    running_broker,
    until,
)

POINTS = tuple(
    ModbusPoint(name, table="holding", address=2 * i, type="float32")
    for i, name in enumerate(VALUES)
)
#: A wider device: 50 float32 points, 100 registers in a row, still one request per poll.
WIDE_VALUES = {f"w{i:02d}": 100.25 + 7.5 * i for i in range(50)}
WIDE_POINTS = tuple(
    ModbusPoint(name, table="holding", address=2 * i, type="float32")
    for i, name in enumerate(WIDE_VALUES)
)
#: The site the peers were measured on: 10 slaves of 100 registers, each register a uint16
#: value, every 10 ms over one Modbus TCP connection: 100,000 values/s.
PEER_POINTS = tuple(
    ModbusPoint(f"r{i:03d}", table="holding", address=i, type="uint16") for i in range(100)
)
PEER_DEVICES = 10
#: Requests under way at once per connection on the pipelined sites: a connection's 10 devices.
PIPELINE = 10
TOPIC = "bench/bench-gw/telemetry"
STATUS_TOPIC = "bench/bench-gw/status"
MAX_DEVICES = 50
BUSES = 5  # Modbus TCP connections (10 devices each at 50 devices)
#: Past what the agent can poll, its polls start late (a device skips the slots it missed): the
#: rate that arrives stops growing. Past what it can send, readings queue up in the buffer: the
#: delay from taking a reading to its arrival grows. The ladder stops at either.


@dataclass(frozen=True)
class Site:
    devices: int
    interval: float
    reconnect_max: float = 60.0
    points: tuple[PointConfig, ...] = POINTS
    buses: int = BUSES  # Modbus TCP connections, the devices spread over them
    pipeline: int = 1  # requests under way at once per connection

    @property
    def rate(self) -> float:
        return self.devices * len(self.points) / self.interval

    @property
    def label(self) -> str:
        return f"{self.devices} × {len(self.points)} @ {self.interval:g} s"

    def config(self, workdir: Path, broker: Broker, modbus_port: int) -> Path:
        buses = min(self.buses, self.devices)
        timeout = min(1.0, self.interval)
        lines = [
            f'[agent]\nid = "bench-gw"\ndata_dir = "{workdir / "data"}"\n',
            f'[mqtt]\nurl = "{broker.url}"\ntopic_prefix = "bench"\n'
            f'reconnect_max = "{self.reconnect_max:g}s"\n',
            '[[template]]\nname = "bench20"\n',
            *(
                f'[[template.point]]\nname = "{p.name}"\naddress = {p.address}\n'
                f'type = "{p.value_type}"\n'
                for p in self.points
            ),
            *(
                f'[[bus]]\nname = "plc{b}"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\n'
                f'port = {modbus_port}\ntimeout = "{timeout:g}s"\npipeline = {self.pipeline}\n'
                for b in range(buses)
            ),
            *(
                f'[[device]]\nname = "meter{d:02d}"\nbus = "plc{d % buses}"\n'
                f'unit = {d + 1}\ninterval = "{self.interval:g}s"\ntemplate = "bench20"\n'
                for d in range(self.devices)
            ),
        ]
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "site.toml"
        path.write_text("\n".join(lines))
        return path


def peer_slaves() -> list[SimulatedSlave]:
    result = [SimulatedSlave(unit, PEER_POINTS) for unit in range(1, PEER_DEVICES + 1)]
    for slave in result:
        for n, point in enumerate(PEER_POINTS):
            slave.set_value(point.name, 1000 + n)
    return result


def slaves(wide: bool = False) -> list[SimulatedSlave]:
    points, values = (WIDE_POINTS, WIDE_VALUES) if wide else (POINTS, VALUES)
    result = [SimulatedSlave(unit, points) for unit in range(1, MAX_DEVICES + 1)]
    for slave in result:
        for name, value in values.items():
            slave.set_value(name, value)
    return result


class Counter:
    """Readings that arrived at a QoS 1 subscriber (each sample once, by the time it was taken),
    read off its messages."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.samples: dict[int, tuple[int, int]] = {}  # id: (ts in ms, readings)
        self.readings = 0
        self.newest_ts = 0
        self._taken = 0

    def collect(self) -> int:
        new = self.sub.messages[self._taken :]
        self._taken += len(new)
        for _, batch, _ in new:
            for sample in batch["samples"]:
                if sample["id"] not in self.samples:
                    self.samples[sample["id"]] = (sample["ts"], len(sample["values"]))
                    self.readings += len(sample["values"])
                    self.newest_ts = max(self.newest_ts, sample["ts"])
        return self.readings

    def taken(self, start_ms: int, end_ms: int) -> int:
        """Readings polled from ``start_ms`` to ``end_ms`` that have arrived."""
        return sum(n for ts, n in self.samples.values() if start_ms <= ts < end_ms)


@dataclass
class Window:
    seconds: float
    readings: int
    cpu: float
    write_bytes: int
    rss_kib: int
    lag: float  # s: now minus the newest sample time that arrived, at the window's end
    anon_kib: int = 0  # RssAnon: the process's own pages, without shared libraries
    pss_kib: int = 0  # proportional set size: shared pages divided among their users
    rig_cpu: float = 0.0  # this process's CPU (the simulated slaves, the subscriber), seconds


@dataclass
class Result:
    site: Site
    started: float  # s from Popen to the first reading at the subscriber
    online: float  # s from Popen to the agent's "online" status at the subscriber
    windows: list[Window] = field(default_factory=list)
    peak_kib: int = 0  # VmHWM

    def median(self, attribute: str) -> float:
        return float(statistics.median(getattr(w, attribute) for w in self.windows))

    @property
    def rate(self) -> float:
        return statistics.median(w.readings / w.seconds for w in self.windows)

    @property
    def cpu_us(self) -> float:
        return statistics.median(w.cpu * 1e6 / max(1, w.readings) for w in self.windows)

    @property
    def write_per_reading(self) -> float:
        return statistics.median(w.write_bytes / max(1, w.readings) for w in self.windows)

    @property
    def sustained(self) -> bool:
        """Readings do not queue up: their delay to arrival does not grow over the windows."""
        lags = [w.lag for w in self.windows]
        return lags[-1] <= lags[0] + max(1.0, 2 * self.site.interval)

    @property
    def on_time(self) -> float:
        """The share of the nominal rate that arrived."""
        return self.rate / self.site.rate


def task_cpu(pid: int) -> float:
    """CPU seconds of the process's threads, to the nanosecond (``/proc/PID/task/*/schedstat``;
    ``/proc/PID/stat`` counts in 10 ms ticks, too coarse for a second of a quiet agent)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def private(pid: int) -> tuple[int, int]:
    """RssAnon and Pss of a process, in KiB."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    pss = next((int(line.split()[1]) for line in rollup if line.startswith("Pss:")), 0)
    return status_kib(pid, "RssAnon"), pss


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


async def wait_first(
    counter: Counter, status: Subscriber, began: float, timeout: float = 30.0
) -> tuple[float, float]:
    """Seconds from ``began`` until the agent's retained ``status`` said "online" (connected to
    the broker: the retained "offline" of the agent before it arrives first) and until its first
    reading arrived."""
    deadline = time.monotonic() + timeout
    online = 0.0
    while counter.collect() == 0:
        if not online and any(p.get("state") == "online" for _, p, _ in status.messages):
            online = time.perf_counter() - began
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reading arrived within {timeout:g}s")
        await asyncio.sleep(0.002)
    return online or time.perf_counter() - began, time.perf_counter() - began


async def measure_site(
    workdir: Path,
    broker: Broker,
    modbus_port: int,
    site: Site,
    windows: int,
    seconds: float,
    settle: float,
) -> Result:
    """Start the agent, time its first acknowledged reading, then measure ``windows`` windows."""
    agent = AgentProcess(site.config(workdir, broker, modbus_port))
    async with (
        Subscriber(broker.host, broker.port, TOPIC) as sub,
        Subscriber(broker.host, broker.port, STATUS_TOPIC) as status,
    ):
        counter = Counter(sub)
        await asyncio.sleep(0.1)  # the previous agent's retained status arrives first
        status.messages.clear()
        began = time.perf_counter()
        agent.start()
        try:
            online, first = await wait_first(counter, status, began)
            result = Result(site, first, online)
            pid = rig_pid(agent)
            assert pid is not None
            await asyncio.sleep(settle)
            spans = []
            for _ in range(windows):
                start, start_ms = Snapshot.take(pid), int(time.time() * 1000)
                cpu, rig_cpu = task_cpu(pid), time.process_time()
                await asyncio.sleep(seconds)
                end_ms = int(time.time() * 1000)
                spent = Interval.between(start, Snapshot.take(pid))
                spent.cpu = task_cpu(pid) - cpu
                rig_cpu = time.process_time() - rig_cpu
                counter.collect()
                lag = end_ms / 1000 - counter.newest_ts / 1000
                window = Window(
                    spent.seconds, 0, spent.cpu, spent.write_bytes, rss_kib(pid), lag, *private(pid)
                )
                window.rig_cpu = rig_cpu
                result.windows.append(window)
                spans.append((start_ms, end_ms))
            if spans:  # what was polled in the last window arrives a batch later
                last = spans[-1][1]
                await until(
                    lambda: counter.collect() >= 0 and counter.newest_ts >= last,
                    10 + seconds,
                    "the last window's readings",
                )
                await asyncio.sleep(0.5)
                counter.collect()
                for window, (start_ms, end_ms) in zip(result.windows, spans, strict=True):
                    window.readings = counter.taken(start_ms, end_ms)
            result.peak_kib = status_kib(pid, "VmHWM")
            return result
        finally:
            code = await asyncio.to_thread(agent.stop)
            if code != 0:
                print(f"agent exited with {code}:\n{agent.output()[-2000:]}")


async def startup_times(
    workdir: Path, broker: Broker, modbus_port: int, starts: int
) -> list[tuple[float, float]]:
    """Seconds from ``edge-agent run`` to its "online" status and to its first acknowledged
    reading, one device polled every second, a fresh data dir each time.

    Polls are aligned to the wall clock (a 1 s device reads on whole seconds), so the first
    reading also waits for the first slot after start-up: the starts are spread evenly over the
    second, so that the median is that of a start at any moment.
    """
    times = []
    for n in range(starts):
        phase = (n + 0.5) / starts  # where in the second this start begins
        await asyncio.sleep((phase - time.time() % 1.0) % 1.0)
        result = await measure_site(
            workdir / f"start{n}", broker, modbus_port, Site(1, 1.0), 0, 0, 0
        )
        times.append((result.online, result.started))
    return times


# --- the outage: a backlog of an hour on disk, then the drain


def hour_of_backlog(data_dir: Path, site: Site, seconds: float) -> int:
    """Fill the agent's buffer with ``seconds`` of ``site``'s samples, as if the broker had been
    away that long; returns the readings stored."""
    data_dir.mkdir(parents=True, exist_ok=True)
    buffer = CountingBuffer(data_dir / "buffer.sqlite")
    buffer.open()
    samples = int(seconds / site.interval) * site.devices
    first_ms = int((time.time() - seconds) * 1000)
    step_ms = seconds * 1000 / samples
    for start in range(0, samples, 10_000):
        for n in range(start, min(samples, start + 10_000)):
            buffer.add(f"meter{n % site.devices:02d}", int(first_ms + n * step_ms), VALUES, now=0)
        buffer.flush(force=True)
    buffer.close()
    return samples * READINGS_PER_SAMPLE


def stored_samples(data_dir: Path) -> int:
    with sqlite3.connect(f"file:{data_dir / 'buffer.sqlite'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM samples").fetchone()[0])


@dataclass
class Outage:
    backlog: int  # readings on disk when the agent started
    windows: list[Window]
    peak_kib: int
    drained: int  # readings on disk when the broker came back
    drain_seconds: float  # broker start to buffer empty (reconnection included)

    def median(self, attribute: str) -> float:
        return float(statistics.median(getattr(w, attribute) for w in self.windows))

    @property
    def write_per_reading(self) -> float:
        return statistics.median(w.write_bytes / max(1, w.readings) for w in self.windows)


async def measure_outage(
    workdir: Path,
    broker: Broker,
    modbus_port: int,
    backlog_seconds: float,
    windows: int,
    seconds: float,
) -> Outage:
    """The agent (50 devices of 20 points every second) starts with an hour's backlog on disk
    and no broker; it keeps polling into the buffer while we watch its memory; then the broker
    returns and we time the drain of everything."""
    site = Site(MAX_DEVICES, 1.0, reconnect_max=1.0)
    data_dir = workdir / "data"
    backlog = hour_of_backlog(data_dir, site, backlog_seconds)
    agent = AgentProcess(site.config(workdir, broker, modbus_port))
    broker.stop()
    agent.start()
    try:
        pid = rig_pid(agent)
        assert pid is not None
        await asyncio.sleep(2.0)
        measured = []
        for _ in range(windows):
            start, stored, cpu = Snapshot.take(pid), stored_samples(data_dir), task_cpu(pid)
            await asyncio.sleep(seconds)
            readings = (stored_samples(data_dir) - stored) * READINGS_PER_SAMPLE
            spent = Interval.between(start, Snapshot.take(pid))
            spent.cpu = task_cpu(pid) - cpu
            measured.append(
                Window(
                    spent.seconds,
                    readings,
                    spent.cpu,
                    spent.write_bytes,
                    rss_kib(pid),
                    0,
                    *private(pid),
                )
            )
        peak = status_kib(pid, "VmHWM")
        drained = stored_samples(data_dir) * READINGS_PER_SAMPLE
        began = time.perf_counter()
        broker.start()
        # down to what two polls add meanwhile
        empty = 2 * site.devices
        await until(lambda: stored_samples(data_dir) <= empty, 600, "the backlog drained", 0.1)
        drain_seconds = time.perf_counter() - began
        return Outage(backlog, measured, peak, drained, drain_seconds)
    finally:
        if not broker_running(broker):
            broker.start()
        code = await asyncio.to_thread(agent.stop)
        if code != 0:
            print(f"agent exited with {code}:\n{agent.output()[-2000:]}")


def broker_running(broker: Broker) -> bool:
    return rig_pid(broker) is not None


# --- the run and its table


@dataclass
class Plan:
    windows: int
    seconds: float
    settle: float
    starts: int
    ladder: Sequence[float]  # poll intervals of 50 devices tried for the highest sustained rate
    backlog_seconds: float
    drain_readings: int


# Windows are whole multiples of every poll interval, so each holds the same number of polls.
FULL = Plan(5, 4.0, 3.0, 7, (0.04, 0.02, 0.0125, 0.01, 0.008, 0.00625), 3600.0, 1_000_000)
QUICK = Plan(3, 2.0, 1.0, 3, (0.02, 0.01), 3600.0, 1_000_000)


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def memory(result: Result | Outage) -> str:
    """Steady VmRSS (RssAnon, PSS) / peak VmHWM, MiB."""
    return (
        f"{mib(result.median('rss_kib'))} ({mib(result.median('anon_kib'))}, "
        f"{mib(result.median('pss_kib'))}) / {mib(result.peak_kib)}"
    )


async def run(workdir: Path, plan: Plan) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []

    def row(what: str, value: str, target: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None else ("met" if met else "NOT met")
        rows.append((what, value, target, verdict))

    async with ModbusSimulator(slaves()) as simulator:
        port = simulator.port
        with running_broker(workdir / "broker") as broker:
            starts = await startup_times(workdir / "startup", broker, port, plan.starts)
            one = await measure_site(
                workdir / "one", broker, port, Site(1, 1.0), plan.windows, plan.seconds, 0.5
            )
            by_rate: dict[float, Result] = {}
            for devices, interval in ((5, 1.0), (MAX_DEVICES, 1.0), (MAX_DEVICES, 0.1)):
                site = Site(devices, interval)
                by_rate[site.rate] = await measure_site(
                    workdir / f"rate{site.rate:.0f}",
                    broker,
                    port,
                    site,
                    plan.windows,
                    plan.seconds,
                    plan.settle,
                )
            best = by_rate[10_000] if by_rate[10_000].sustained else None
            for interval in plan.ladder:
                site = Site(MAX_DEVICES, interval)
                result = await measure_site(
                    workdir / f"rate{site.rate:.0f}",
                    broker,
                    port,
                    site,
                    plan.windows,
                    plan.seconds,
                    plan.settle,
                )
                by_rate[site.rate] = result
                notes.append(
                    f"{site.label} (nominal {site.rate:,.0f}/s): {result.rate:,.0f} readings/s "
                    f"arrived, {result.cpu_us:.1f} µs CPU/reading, agent CPU "
                    f"{result.median('cpu') / result.median('seconds'):.0%} of a core (the "
                    "benchmark's slaves and subscriber: "
                    f"{result.median('rig_cpu') / result.median('seconds'):.0%}), "
                    f"{result.on_time:.0%} of the nominal rate, delay to arrival "
                    f"{result.windows[0].lag:.2f} → {result.windows[-1].lag:.2f} s: "
                    + ("no queue" if result.sustained else "QUEUEING")
                )
                if not result.sustained or (best is not None and result.rate <= best.rate):
                    break  # queueing, or polling no faster than at the step before
                best = result
            async with ModbusSimulator(slaves(wide=True)) as wide_simulator:
                wide = await measure_site(
                    workdir / "wide",
                    broker,
                    wide_simulator.port,
                    Site(MAX_DEVICES, 0.05, points=WIDE_POINTS),
                    plan.windows,
                    plan.seconds,
                    plan.settle,
                )
            piped = await measure_site(
                workdir / "piped",
                broker,
                port,
                Site(MAX_DEVICES, 0.02, pipeline=PIPELINE),
                plan.windows,
                plan.seconds,
                plan.settle,
            )
            async with ModbusSimulator(peer_slaves()) as peer_simulator:
                peers = [
                    await measure_site(
                        workdir / f"peer{pipeline}",
                        broker,
                        peer_simulator.port,
                        Site(PEER_DEVICES, 0.01, points=PEER_POINTS, buses=1, pipeline=pipeline),
                        plan.windows,
                        plan.seconds,
                        plan.settle,
                    )
                    for pipeline in (1, PIPELINE)
                ]
            outage = await measure_outage(
                workdir / "outage", broker, port, plan.backlog_seconds, plan.windows, plan.seconds
            )
            drain = await backlog_drain.measure(
                workdir / "drain", broker, 500, plan.drain_readings // READINGS_PER_SAMPLE, None
            )

    online, first = [t for t, _ in starts], [t for _, t in starts]
    row(
        "start-up: `edge-agent run` to connected (its retained status online), s",
        f"{median(online):.2f} (max {max(online):.2f})",
    )
    row(
        "start-up: `edge-agent run` to first reading at the broker (1 s interval, wall-aligned "
        "polls: includes the wait for the first slot), s",
        f"{median(first):.2f} (max {max(first):.2f})",
        "≤ 1 s",
        median(first) <= 1.0,
    )
    row("memory, 1 device × 20 points @ 1 s: steady RSS (anon, PSS) / peak, MiB", memory(one))
    fifty = by_rate[1000]
    row(
        "memory, 50 devices × 20 points @ 1 s: steady RSS (anon, PSS) / peak, MiB",
        memory(fifty),
        "steady ≤ 32 MiB",
        fifty.median("rss_kib") <= 32 * 1024,
    )
    rss = [w.rss_kib for w in outage.windows]
    row(
        f"memory, 50 × 20 @ 1 s, broker away, {outage.backlog:,} readings of backlog on disk: "
        "steady RSS (anon, PSS) / peak, MiB; RSS first → last window",
        f"{memory(outage)}; {mib(rss[0])} → {mib(rss[-1])}",
        "flat",
        rss[-1] - rss[0] <= 1024,
    )
    _cost_rows(row, by_rate, piped, wide, peers)
    row(
        "highest sustained rate: 50 devices × 20 points, interval shortened until readings queue "
        "up or the rate that arrives stops growing (or the ladder ends), readings/s arrived "
        "[nominal]",
        f"{best.rate:,.0f} [{best.site.rate:,.0f}] ({best.site.label})" if best else "–",
        "≥ 50,000",
        best is not None and best.rate >= 50_000,
    )
    row(
        "disk write_bytes per reading, broker up (50 × 20 @ 1 s)",
        f"{fifty.write_per_reading:.2f}",
        "0",
        fifty.write_per_reading == 0,
    )
    row(
        "disk write_bytes per reading, broker up (50 × 20 @ 0.1 s)",
        f"{by_rate[10_000].write_per_reading:.2f}",
        "0",
        by_rate[10_000].write_per_reading == 0,
    )
    row("disk write_bytes per reading, outage (50 × 20 @ 1 s)", f"{outage.write_per_reading:.1f}")
    drain_rate = drain.readings / drain.drain.seconds
    row(
        f"drain of a {drain.readings:,}-reading backlog (Buffer + Uplink, batch_max 500), s "
        f"[{drain_rate:,.0f} readings/s]",
        f"{drain.drain.seconds:.1f}",
        "≤ 30 s",
        drain.drain.seconds <= 30,
    )
    row(
        f"drain by `edge-agent run` of the outage's {outage.drained:,} readings while polling "
        f"1,000/s, s (reconnection included) [{outage.drained / outage.drain_seconds:,.0f} "
        "readings/s]",
        f"{outage.drain_seconds:.1f}",
    )
    notes.insert(
        0,
        "start-ups, s to online / to first reading: "
        + ", ".join(f"{a:.2f} / {b:.2f}" for a, b in starts),
    )
    return rows, notes


def _cost_rows(
    row: Callable[..., None],
    by_rate: Mapping[float, Result],
    piped: Result,
    wide: Result,
    peers: Sequence[Result],
) -> None:
    """The rows of CPU per reading: by rate, pipelined, wide devices, the peers' site."""
    for rate, target in ((100, None), (1000, 20.0), (10_000, None)):
        result = by_rate[rate]
        row(
            f"CPU per reading at {rate:,}/s ({result.site.label}), µs "
            f"[{result.rate:,.0f}/s arrived]",
            f"{result.cpu_us:.1f}",
            f"≤ {target:g} µs" if target else "",
            None if target is None else result.cpu_us <= target,
        )
    top = by_rate.get(50_000)
    if top is not None:
        row(
            f"CPU per reading at 50,000/s ({top.site.label}, one request at a time), µs "
            f"[{top.rate:,.0f}/s arrived]",
            f"{top.cpu_us:.1f}",
        )
    row(
        f"CPU per reading at 50,000/s ({piped.site.label}, pipeline = {PIPELINE}), µs "
        f"[{piped.rate:,.0f}/s arrived]",
        f"{piped.cpu_us:.1f}",
        "≤ 5 µs",
        piped.sustained and piped.cpu_us <= 5.0,
    )
    row(
        f"CPU per reading at 50,000/s, devices of 50 points ({wide.site.label}: 100 registers a "
        f"request), µs [{wide.rate:,.0f}/s arrived]",
        f"{wide.cpu_us:.1f}",
        "≤ 5 µs",
        wide.sustained and wide.cpu_us <= 5.0,
    )
    for peer in peers:
        piped_peer = peer.site.pipeline > 1
        row(
            f"CPU per value, the peers' site ({peer.site.label} over one connection, uint16 "
            "registers, QoS 1, "
            + (f"pipeline = {peer.site.pipeline}" if piped_peer else "one request at a time")
            + f"), µs [{peer.rate:,.0f}/s arrived, {peer.on_time:.1%} of nominal]",
            f"{peer.cpu_us:.1f}",
            "≤ 2.9 µs, ≥ 99 % arrived" if piped_peer else "",
            (peer.sustained and peer.cpu_us <= 2.9 and peer.on_time >= 0.99)
            if piped_peer
            else None,
        )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        rows, notes = asyncio.run(run(Path(tmp), plan))
    print(markdown_table(("measure", "median", "target", ""), rows))
    print()
    for note in notes:
        print(f"- {note}")
    print(
        f"\n{plan.windows} windows of {plan.seconds:g} s per figure, {plan.starts} start-ups; "
        f"{time.perf_counter() - began:.0f} s in all"
    )


if __name__ == "__main__":
    main()
