"""What the store-and-forward benchmarks share: a broker, configurations, samples, /proc figures.

The broker is the test kit's (``agent.testkit``, through ``bench._kit``): run the
benchmarks from the repository root.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.aio import cancel_and_wait
from agent.config import AgentSection, BufferSection, Config, MqttSection
from agent.model import Sample, Value
from agent.store.buffer import Buffer
from agent.testkit.aio import until
from agent.testkit.broker import Broker
from agent.testkit.process import AgentProcess
from agent.uplink.link import Client
from agent.uplink.telemetry import Uplink

READINGS_PER_SAMPLE = 20
#: Point names and values of every benchmark sample. Multiples of 0.25 survive float32 unchanged,
#: so a simulated Modbus device reports exactly these and every benchmark sends the same JSON.
VALUES: dict[str, Value] = {f"p{i:02d}": 100.25 + 7.5 * i for i in range(READINGS_PER_SAMPLE)}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- configuration, buffer and uplink in-process


def uplink_config(data_dir: Path, port: int, batch_max: int) -> Config:
    """The agent's defaults, but for the broker and ``batch_max``: what ships is what we measure."""
    return Config(
        source=data_dir / "bench.toml",
        agent=AgentSection("bench", data_dir),
        buffer=BufferSection(),
        mqtt=MqttSection(
            host=Broker.host,
            port=port,
            client_id="bench-agent",
            topic_prefix="bench",
            batch_max=batch_max,
        ),
    )


class CountingBuffer(Buffer):
    """A ``Buffer`` that counts the samples the broker acknowledged and says when it did."""

    acknowledged = 0

    def __init__(self, path: Path) -> None:
        defaults = BufferSection()
        super().__init__(path, defaults.max_size, defaults.flush_interval)
        self.changed = asyncio.Event()

    def acknowledge(self, samples: Sequence[Sample]) -> None:
        super().acknowledge(samples)
        self.acknowledged += len(samples)
        self.changed.set()


class CountingUplink(Uplink):
    """An ``Uplink`` that counts the telemetry messages and payload bytes it published."""

    messages = 0
    payload_bytes = 0

    async def _publish_telemetry(self, client: Client, payload: bytes) -> None:
        await super()._publish_telemetry(client, payload)
        self.messages += 1
        self.payload_bytes += len(payload)


async def flush_periodically(buffer: Buffer) -> None:
    """What ``Agent._flush_periodically`` does: without it acknowledged backlog is never deleted."""
    while True:
        await asyncio.sleep(buffer.commit_age / 3)  # commit_age is ¾ of flush_interval
        buffer.flush()


@contextlib.asynccontextmanager
async def running_uplink(uplink: Uplink, timeout: float = 10.0) -> AsyncIterator[None]:
    """The uplink and the buffer's flusher, running and connected; stopped cleanly on exit."""
    sender = asyncio.create_task(uplink.run(), name="uplink")
    flusher = asyncio.create_task(flush_periodically(uplink.buffer), name="flush")
    try:
        await until(lambda: uplink.connected, timeout, "the uplink to connect")
        yield
    finally:
        await cancel_and_wait(flusher)
        await uplink.stop()
        await asyncio.wait_for(sender, timeout)


# --- the broker


@contextlib.contextmanager
def running_broker(workdir: Path) -> Iterator[Broker]:
    """A Mosquitto of our own on a free loopback port, stopped (by its PID) on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def rig_pid(rig: Broker | AgentProcess) -> int | None:
    """The PID of a rig's running process (for /proc): the rigs keep their ``Popen`` private."""
    process = getattr(rig, "_process", None)
    return None if process is None else int(process.pid)


# --- figures from /proc


def proc_io(pid: int | str = "self") -> dict[str, int]:
    """``/proc/PID/io``: ``write_bytes`` is what reached the block layer, ``wchar`` what went
    through write(2) (files, pipes; not ``send`` on sockets)."""
    text = Path(f"/proc/{pid}/io").read_text()
    return {key: int(value) for key, value in (line.split(": ") for line in text.splitlines())}


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int | str | None) -> float:
    """User + system CPU time of a process (0 when there is none)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


@dataclass
class Snapshot:
    """Wall clock, CPU and I/O of a process (and of the broker) at one moment."""

    wall: float
    cpu: float
    broker_cpu: float
    io: dict[str, int]

    @classmethod
    def take(cls, pid: int | str = "self", broker: int | None = None) -> Snapshot:
        cpu = time.process_time() if pid == "self" else cpu_seconds(pid)
        return cls(time.perf_counter(), cpu, cpu_seconds(broker), proc_io(pid))


@dataclass
class Interval:
    """What happened between two snapshots."""

    seconds: float
    cpu: float
    broker_cpu: float
    write_bytes: int
    wchar: int

    @classmethod
    def between(cls, start: Snapshot, end: Snapshot) -> Interval:
        return cls(
            end.wall - start.wall,
            end.cpu - start.cpu,
            end.broker_cpu - start.broker_cpu,
            end.io["write_bytes"] - start.io["write_bytes"],
            end.io["wchar"] - start.io["wchar"],
        )


# --- output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def per(amount: float, count: int, digits: int = 1) -> str:
    """``amount / count`` for a table cell; a dash when nothing was counted."""
    return f"{amount / count:,.{digits}f}" if count else "–"


def per_second(count: float, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "–"


@contextlib.contextmanager
def profiling(profiler: cProfile.Profile | None) -> Iterator[None]:
    """Profile the block when there is a profiler (the event loop's thread is the only one)."""
    if profiler is None:
        yield
        return
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()


def profile_report(profiler: cProfile.Profile, top: int = 10) -> str:
    """The costliest calls by cumulative time (where the time goes) and by own time (who spends
    it)."""
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def batch_sizes(given: str | None, quick: bool) -> list[int]:
    """``--batch-max``: the agent's default first; 250 samples of 20 readings fit one message
    (MAX_PAYLOAD), 500 and 2000 are split by the uplink."""
    return [int(b) for b in (given or ("500" if quick else "500,100,250,2000")).split(",")]
