"""Store-and-forward: readings per second through Buffer + Uplink into Mosquitto at QoS 1, and the
disk writes and memory of a real ``edge-agent run`` with the broker up and during an outage.

Throughput (in-process): samples of 20 readings are added to a ``Buffer`` as fast as the
``Uplink`` takes them (a few batches ahead, so they never wait long enough to be committed);
readings/s counts what the broker acknowledged (PUBACK). CPU is this process's (buffer, JSON,
aiomqtt) and the broker's, per reading.

Agent (child process): ``edge-agent run`` polls simulated Modbus devices (served from this
process) while a persistent-session subscriber counts what arrives. Readings are counted by
their sample time inside each window, so the figures hold however late the backlog arrives.
``write_bytes`` (/proc/PID/io) is what the agent made the kernel write to disk.

Run from the repository root:
    python -m bench.store_forward            # ~2 minutes
    python -m bench.store_forward --quick    # ~25 seconds
Both wait, besides, for the agent to reconnect after the outage: its backoff draws 0-60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.aio import cancel_and_wait
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from agent.testkit.process import AgentProcess
from agent.uplink.telemetry import Uplink
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

from ._rig import (
    READINGS_PER_SAMPLE,
    VALUES,
    CountingBuffer,
    CountingUplink,
    Interval,
    Snapshot,
    batch_sizes,
    markdown_table,
    per,
    per_second,
    profile_report,
    profiling,
    rig_pid,
    rss_kib,
    running_broker,
    running_uplink,
    uplink_config,
)

#: Unsent samples the feeder keeps in the buffer, in batches: the next batch is always ready.
AHEAD_BATCHES = 3
WARM_UP = 1.0  # seconds of each throughput run left out of the figures (connect, first batches)
POINTS = tuple(
    ModbusPoint(name, table="holding", address=2 * i, type="float32")
    for i, name in enumerate(VALUES)
)  # 20 float32 registers in a row: one Modbus request per poll
TOPIC = "bench/bench-gw/telemetry"


# --- throughput, in-process


@dataclass
class Throughput:
    batch_max: int
    subscriber: bool
    readings: int
    messages: int
    payload_bytes: int
    spent: Interval


async def feed(buffer: CountingBuffer, uplink: Uplink, ahead: int) -> None:
    """Keep ``ahead`` unsent samples in the buffer, topped up after every acknowledgement."""
    devices = [f"meter{i:02d}" for i in range(20)]
    turn = 0
    while True:
        now = time.time()
        while buffer.depth < ahead:
            buffer.add(devices[turn % len(devices)], int(now * 1000), VALUES)
            turn += 1
        uplink.wake()
        buffer.changed.clear()
        await buffer.changed.wait()


async def measure_throughput(
    workdir: Path,
    broker: Broker,
    batch_max: int,
    seconds: float,
    subscriber: bool,
    profiler: cProfile.Profile | None = None,
) -> Throughput:
    config = uplink_config(workdir / f"data-{batch_max}-{subscriber}", broker.port, batch_max)
    buffer = CountingBuffer(config.agent.data_dir / "buffer.sqlite")
    uplink = CountingUplink(config, buffer.open())
    with consumer(broker, subscriber):
        async with running_uplink(uplink):
            feeder = asyncio.create_task(feed(buffer, uplink, AHEAD_BATCHES * batch_max))
            await asyncio.sleep(WARM_UP)
            start, before = Snapshot.take(broker=rig_pid(broker)), tally(buffer, uplink)
            with profiling(profiler):
                await asyncio.sleep(seconds)
            spent = Interval.between(start, Snapshot.take(broker=rig_pid(broker)))
            acked, messages, payload = (
                b - a for a, b in zip(before, tally(buffer, uplink), strict=True)
            )
            await cancel_and_wait(feeder)
    buffer.close()
    readings = acked * READINGS_PER_SAMPLE
    return Throughput(batch_max, subscriber, readings, messages, payload, spent)


def tally(buffer: CountingBuffer, uplink: CountingUplink) -> tuple[int, int, int]:
    """Samples acknowledged, telemetry messages and their bytes, so far."""
    return buffer.acknowledged, uplink.messages, uplink.payload_bytes


@contextlib.contextmanager
def consumer(broker: Broker, wanted: bool) -> Iterator[None]:
    """A QoS 1 subscriber in a process of its own, so the broker also delivers every message
    (as to a real consumer) without its cost landing in our process."""
    if not wanted:
        yield
        return
    process = subprocess.Popen(
        ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", "bench/#"],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def throughput_table(results: list[Throughput]) -> str:
    rows = [
        (
            r.batch_max,
            "yes" if r.subscriber else "no",
            per_second(r.readings, r.spent.seconds),
            per(r.readings, r.messages, 0),
            per(r.payload_bytes, r.readings),
            per(r.spent.cpu * 1e6, r.readings, 2),
            per(r.spent.broker_cpu * 1e6, r.readings, 2),
            per(r.spent.write_bytes, r.readings, 2),
        )
        for r in results
    ]
    headers = (
        "batch_max",
        "subscriber",
        "readings/s acked",
        "readings/message",
        "wire bytes/reading",
        "agent CPU µs/reading",
        "broker CPU µs/reading",
        "disk bytes/reading",
    )
    return markdown_table(headers, rows)


# --- the agent as a child process: broker up, outage, catch-up


@dataclass
class Phase:
    name: str
    readings: int
    spent: Interval
    rss: list[int]  # KiB, sampled every second
    stored: int = 0  # growth of the buffer files, bytes
    reconnect: float = 0.0  # seconds the agent took to come back, before the phase


@dataclass
class Site:
    """The simulated installation: ``devices`` of 20 float32 points polled every ``interval``."""

    devices: int
    interval: float
    buses: int

    @property
    def nominal_rate(self) -> float:
        return self.devices * READINGS_PER_SAMPLE / self.interval

    def slaves(self) -> list[SimulatedSlave]:
        slaves = [SimulatedSlave(unit, POINTS) for unit in range(1, self.devices + 1)]
        for slave in slaves:
            for name, value in VALUES.items():
                slave.set_value(name, value)
        return slaves

    def config(self, workdir: Path, broker: Broker, modbus_port: int) -> Path:
        timeout = min(1.0, self.interval)  # a longer one draws a warning
        lines = [
            f'[agent]\nid = "bench-gw"\ndata_dir = "{workdir / "data"}"\n',
            f'[mqtt]\nurl = "{broker.url}"\ntopic_prefix = "bench"\n',
            '[[template]]\nname = "bench20"\n',
            *(
                f'[[template.point]]\nname = "{p.name}"\naddress = {p.address}\ntype = "float32"\n'
                for p in POINTS
            ),
            *(
                f'[[bus]]\nname = "plc{b}"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\n'
                f'port = {modbus_port}\ntimeout = "{timeout}s"\n'
                for b in range(self.buses)
            ),
            *(
                f'[[device]]\nname = "meter{d:02d}"\nbus = "plc{d % self.buses}"\n'
                f'unit = {d + 1}\ninterval = "{self.interval}s"\ntemplate = "bench20"\n'
                for d in range(self.devices)
            ),
        ]
        path = workdir / "site.toml"
        path.write_text("\n".join(lines))
        return path


class Arrivals:
    """Every sample the subscribers saw, by id (QoS 1 may deliver one twice)."""

    def __init__(self) -> None:
        self.samples: dict[int, tuple[int, int]] = {}  # id: (ts in ms, readings)
        self.newest_ts = 0
        self.ids = range(0)  # lowest to highest id seen
        self._source: Subscriber | None = None
        self._taken = 0  # of the source's messages

    def collect(self, subscriber: Subscriber) -> None:
        """Take in what arrived since the last call: only the new messages, as hundreds of
        thousands of samples arrive during a catch-up and this process shares the CPU."""
        if subscriber is not self._source:
            self._source, self._taken = subscriber, 0
        new = subscriber.messages[self._taken :]
        self._taken += len(new)
        for _, batch, _ in new:
            for sample in batch["samples"]:
                self.add(sample["id"], sample["ts"], len(sample["values"]))

    def add(self, sample_id: int, ts: int, readings: int) -> None:
        self.samples[sample_id] = (ts, readings)
        self.newest_ts = max(self.newest_ts, ts)
        low = min(self.ids.start, sample_id) if self.ids else sample_id
        self.ids = range(low, max(self.ids.stop, sample_id + 1))

    def readings(self, start_ms: int, end_ms: int) -> int:
        """Readings taken (polled) from ``start_ms`` to ``end_ms``."""
        return sum(n for ts, n in self.samples.values() if start_ms <= ts < end_ms)

    def complete_after(self, ms: int) -> bool:
        """No id is missing, and samples taken after ``ms`` have arrived."""
        return self.newest_ts > ms and len(self.samples) == len(self.ids)


async def watch(
    pid: int, seconds: float, broker: int | None = None
) -> tuple[Interval, list[int], int, int]:
    """Sample the agent's RSS every second for ``seconds``; its CPU and I/O over them; and the
    window in wall-clock ms (the samples' own time base)."""
    start, start_ms = Snapshot.take(pid, broker), int(time.time() * 1000)
    rss = [rss_kib(pid)]
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
        rss.append(rss_kib(pid))
    end_ms = int(time.time() * 1000)
    return Interval.between(start, Snapshot.take(pid, broker)), rss, start_ms, end_ms


def buffer_bytes(data_dir: Path) -> int:
    files = (data_dir / "buffer.sqlite", data_dir / "buffer.sqlite-wal")
    return sum(f.stat().st_size for f in files if f.exists())


async def run_site(workdir: Path, site: Site, up: float, outage: float) -> list[Phase]:
    with running_broker(workdir / "broker") as broker:
        async with ModbusSimulator(site.slaves()) as simulator:
            agent = AgentProcess(site.config(workdir, broker, simulator.port))
            try:
                return await phases(agent, broker, workdir / "data", up, outage)
            finally:
                code = await asyncio.to_thread(agent.stop)
                if code != 0:
                    print(f"agent exited with {code}:\n{agent.output()[-2000:]}")


async def phases(
    agent: AgentProcess, broker: Broker, data_dir: Path, up: float, outage: float
) -> list[Phase]:
    """Broker up for ``up`` s, away for ``outage`` s, then back until the backlog is through."""
    arrivals = Arrivals()
    async with Subscriber(broker.host, broker.port, TOPIC, session="bench-watch") as sub:
        agent.start()
        pid = rig_pid(agent)
        assert pid is not None
        await sub.wait_samples(1, timeout=30)
        await asyncio.sleep(2.0)  # let the first polls and connections settle
        live, live_rss, live_from, live_to = await watch(pid, up, rig_pid(broker))
        arrivals.collect(sub)
    broker.stop()
    stored = buffer_bytes(data_dir)
    away, away_rss, away_from, away_to = await watch(pid, outage)
    stored = buffer_bytes(data_dir) - stored
    broker.start()
    drained, reconnect, back_ms = await catch_up(pid, broker, arrivals, away_from)
    return [
        Phase("broker up", arrivals.readings(live_from, live_to), live, live_rss),
        Phase("outage", arrivals.readings(away_from, away_to), away, away_rss, stored=stored),
        Phase("catch-up", arrivals.readings(away_from, back_ms), drained, [], reconnect=reconnect),
    ]


async def catch_up(
    pid: int, broker: Broker, arrivals: Arrivals, outage_start_ms: int
) -> tuple[Interval, float, int]:
    """Wait for the agent to reconnect, then until all it buffered meanwhile has arrived.

    Returns the catch-up's CPU and I/O, the seconds the agent took to reconnect (its backoff
    draws up to 60 s: not the backlog's doing, and the agent still buffers to disk meanwhile),
    and the wall-clock ms it was back: samples taken before that went through the disk. It is
    back when a sample taken during the outage arrives (what the broker had queued for the
    subscriber before the outage comes first).
    """
    async with Subscriber(broker.host, broker.port, TOPIC, session="bench-watch") as sub:
        waited = time.perf_counter()
        await follow(sub, arrivals, lambda: arrivals.newest_ts >= outage_start_ms)
        reconnect = time.perf_counter() - waited
        start, back_ms = Snapshot.take(pid, rig_pid(broker)), int(time.time() * 1000)
        await follow(sub, arrivals, lambda: arrivals.complete_after(back_ms))
        return Interval.between(start, Snapshot.take(pid, rig_pid(broker))), reconnect, back_ms


async def follow(
    sub: Subscriber, arrivals: Arrivals, condition: Callable[[], bool], timeout: float = 180.0
) -> None:
    """Collect arrivals until ``condition()``; after ``timeout`` the figures are partial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        arrivals.collect(sub)
        if condition():
            return
    print(f"waited {timeout:g}s for the backlog in vain: the catch-up figures are partial")


def site_table(site: Site, phases: list[Phase]) -> str:
    rows = [
        (
            p.name,
            f"{p.spent.seconds:.1f}" + (f" (after {p.reconnect:.1f} s)" if p.reconnect else ""),
            f"{p.readings:,}",
            per_second(p.readings, p.spent.seconds),
            per(p.spent.write_bytes, p.readings, 2),
            per(p.spent.wchar, p.readings, 2),
            per(p.stored, p.readings, 1) if p.stored else "",
            per(p.spent.cpu * 1e6, p.readings, 1),
            rss_range(p.rss),
        )
        for p in phases
    ]
    headers = (
        "phase",
        "s",
        "readings",
        "readings/s",
        "write_bytes/reading",
        "wchar/reading",
        "stored bytes/reading",
        "agent CPU µs/reading",
        "RSS start / peak / end (MiB)",
    )
    title = (
        f"{site.devices} devices × {READINGS_PER_SAMPLE} points every {site.interval:g} s on "
        f"{site.buses} bus(es): nominal {site.nominal_rate:,.0f} readings/s"
    )
    return "\n\n".join((title, markdown_table(headers, rows), rss_series(phases[1].rss)))


def rss_series(rss: list[int], points: int = 12) -> str:
    """The outage's RSS at about ``points`` evenly spaced moments: flat, or growing?"""
    step = max(1, len(rss) // points)
    picked = [f"{kib / 1024:.1f}" for kib in rss[::step]]
    return f"Agent RSS during the outage, every {step} s (MiB): " + ", ".join(picked)


def rss_range(rss: list[int]) -> str:
    if not rss:
        return ""
    return " / ".join(f"{kib / 1024:.1f}" for kib in (rss[0], max(rss), rss[-1]))


# --- command line


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 25 seconds in all")
    parser.add_argument("--seconds", type=float, help="each throughput run (default 8, quick 3)")
    parser.add_argument(
        "--batch-max",
        help="mqtt.batch_max values to try, comma-separated (default 500,100,250,2000; quick 500)",
    )
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.1, help="poll interval, seconds")
    parser.add_argument("--buses", type=int, default=4, help="Modbus TCP connections")
    parser.add_argument("--up", type=float, help="seconds with the broker up (default 10, quick 5)")
    parser.add_argument("--outage", type=float, help="seconds of outage (default 60, quick 10)")
    parser.add_argument("--profile", action="store_true", help="cProfile the throughput runs")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-agent", action="store_true")
    return parser.parse_args()


async def throughput_runs(workdir: Path, args: argparse.Namespace) -> str:
    batches = batch_sizes(args.batch_max, args.quick)
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    profiler = cProfile.Profile() if args.profile else None
    with running_broker(workdir / "broker") as broker:
        # the first batch size once more with a consumer attached, as in production
        runs = [(b, False) for b in batches] + [(batches[0], True)]
        results = [
            await measure_throughput(workdir, broker, b, seconds, s, profiler) for b, s in runs
        ]
    report = throughput_table(results)
    if profiler:
        report = "(under cProfile: slower than without)\n\n" + report
        report += "\n\ncProfile of the runs above:\n" + profile_report(profiler)
    return report


def main() -> None:
    args = arguments()
    with tempfile.TemporaryDirectory(prefix="bench-sf-") as tmp:
        workdir = Path(tmp)
        if not args.skip_throughput:
            report = asyncio.run(throughput_runs(workdir / "throughput", args))
            print("Throughput into Mosquitto at QoS 1 (in-process Buffer + Uplink)\n")
            print(report + "\n")
        if not args.skip_agent:
            site = Site(args.devices, args.interval, args.buses)
            (workdir / "site").mkdir()
            up = args.up or (5.0 if args.quick else 10.0)
            outage = args.outage or (10.0 if args.quick else 60.0)
            results_site = asyncio.run(run_site(workdir / "site", site, up, outage))
            print("edge-agent run: disk writes and memory, broker up and away\n")
            print(site_table(site, results_site))


if __name__ == "__main__":
    main()
