"""Backlog drain: how fast a buffer of one million readings on disk empties into Mosquitto.

A ``Buffer`` is filled on disk (samples of 20 readings, committed in chunks, as a long outage
leaves it), then an ``Uplink`` connects to a local broker at QoS 1 and sends it all, oldest
first, with the buffer's periodic flush deleting what was acknowledged. The clock runs from
the uplink's start until the buffer is empty; "last PUBACK" is when the broker had it all.

``--profile`` runs the drain under cProfile and prints the ten costliest calls by cumulative
and by own time (the drain is slower under the profiler: read the shares, not the seconds).

Run from the repository root:
    python -m bench.backlog_drain              # 1,000,000 readings, 4 batch sizes, ~30 s
    python -m bench.backlog_drain --quick      # 100,000 readings, ~10 seconds
    python -m bench.backlog_drain --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.testkit.broker import Broker

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
    running_broker,
    running_uplink,
    until,
    uplink_config,
)

#: Samples added between two forced commits while filling: well below the buffer's memory limit.
FILL_CHUNK = 10_000
DRAIN_TIMEOUT = 600.0
DEVICES = [f"meter{i:02d}" for i in range(20)]


@dataclass
class Drain:
    batch_max: int
    samples: int
    fill: Interval
    stored: int  # bytes of the buffer files once filled
    drain: Interval  # uplink start to empty buffer
    acked_after: float  # seconds from the uplink's start to the last PUBACK
    messages: int

    @property
    def readings(self) -> int:
        return self.samples * READINGS_PER_SAMPLE


def fill(buffer: CountingBuffer, samples: int) -> None:
    """``samples`` samples, one every 10 ms of sample time, ending now; committed in chunks."""
    first_ts = int(time.time() * 1000) - samples * 10
    for start in range(0, samples, FILL_CHUNK):
        for n in range(start, min(samples, start + FILL_CHUNK)):
            buffer.add(DEVICES[n % len(DEVICES)], first_ts + n * 10, VALUES, now=0.0)
        buffer.flush(force=True)


async def drain(buffer: CountingBuffer, uplink: CountingUplink, samples: int) -> float:
    """Run the uplink until the buffer is empty; returns the seconds to the last PUBACK."""
    started = time.perf_counter()
    async with running_uplink(uplink):
        await until(
            lambda: buffer.acknowledged >= samples, DRAIN_TIMEOUT, "every sample acknowledged"
        )
        acked_after = time.perf_counter() - started
        await until(lambda: buffer.depth == 0, DRAIN_TIMEOUT, "the buffer to empty")
    return acked_after


async def measure(
    workdir: Path, broker: Broker, batch_max: int, samples: int, profiler: cProfile.Profile | None
) -> Drain:
    config = uplink_config(workdir / f"data-{batch_max}", broker.port, batch_max)
    buffer = CountingBuffer(config.agent.data_dir / "buffer.sqlite")
    buffer.open()
    start = Snapshot.take()
    fill(buffer, samples)
    filled = Snapshot.take(broker=rig_pid(broker))
    stored = buffer.stats().bytes
    uplink = CountingUplink(config, buffer)
    with profiling(profiler):
        acked_after = await drain(buffer, uplink, samples)
    drained = Snapshot.take(broker=rig_pid(broker))
    buffer.close()
    return Drain(
        batch_max,
        samples,
        Interval.between(start, filled),
        stored,
        Interval.between(filled, drained),
        acked_after,
        uplink.messages,
    )


def drain_table(results: list[Drain]) -> str:
    rows = [
        (
            r.batch_max,
            f"{r.readings:,}",
            per_second(r.readings, r.fill.seconds),
            per(r.stored, r.readings),
            per(r.fill.write_bytes, r.readings),
            f"{r.acked_after:.1f}",
            f"{r.drain.seconds:.1f}",
            per_second(r.readings, r.drain.seconds),
            per(r.readings, r.messages, 0),
            per(r.drain.cpu * 1e6, r.readings, 2),
            f"{r.drain.cpu / r.drain.seconds:.0%}",
            per(r.drain.broker_cpu * 1e6, r.readings, 2),
            per(r.drain.write_bytes, r.readings),
        )
        for r in results
    ]
    headers = (
        "batch_max",
        "readings",
        "fill readings/s",
        "stored bytes/reading",
        "fill write_bytes/reading",
        "last PUBACK (s)",
        "empty (s)",
        "drain readings/s",
        "readings/message",
        "agent CPU µs/reading",
        "agent CPU busy",
        "broker CPU µs/reading",
        "drain write_bytes/reading",
    )
    return markdown_table(headers, rows)


async def runs(workdir: Path, batches: list[int], samples: int, profile: bool) -> str:
    profiler = cProfile.Profile() if profile else None
    with running_broker(workdir / "broker") as broker:
        results = [await measure(workdir, broker, b, samples, profiler) for b in batches]
    report = drain_table(results)
    if profiler:
        report = "(under cProfile: slower than without)\n\n" + report
        report += "\n\ncProfile of the drains above:\n" + profile_report(profiler)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 readings")
    parser.add_argument("--readings", type=int, help="default 1,000,000 (quick 100,000)")
    parser.add_argument(
        "--batch-max",
        help="mqtt.batch_max values to try, comma-separated (default 500,100,250,2000; quick 500)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the drain")
    args = parser.parse_args()
    readings = args.readings or (100_000 if args.quick else 1_000_000)
    batches = batch_sizes(args.batch_max, args.quick)
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        samples = readings // READINGS_PER_SAMPLE
        print(asyncio.run(runs(Path(tmp), batches, samples, args.profile)))


if __name__ == "__main__":
    main()
