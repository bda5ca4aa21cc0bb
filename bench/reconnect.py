"""``python -m bench.reconnect``: how soon after a broker outage the agent's first reading is at
the broker again.

One real ``edge-agent run`` at its default ``[mqtt]`` settings (only the URL, the topic prefix
and the protocol are set) polls a simulated Modbus TCP slave every second and publishes to a
Mosquitto of the benchmark's own. For each outage length (``--outages``) the broker is stopped
``--repeat`` times for that long and started again on the same port; between outages it stays up
``--up`` seconds (by default more than the 30 s after which the agent counts a session as
stable: a link lost sooner is met with backoff, not probing). Each protocol and outage length is
a rig of its own (broker, slave, agent, subscriber); the rigs run at once.

Measured at the broker. Mosquitto 2.0.11 stamps its log in whole seconds only
(``log_timestamp_format`` is handed to strftime, which has no sub-second field), but it flushes
its log file after every line: the benchmark reads the log (``log_type all``) as it is written
and stamps each line itself as it reads it (every 2 ms). The time to the first reading runs
from "Opening ipv4 listen socket" to the first "Received PUBLISH" of the agent's telemetry; on
the way, the agent's CONNECT ("New client connected … as <client id>") splits it into the wait
before connecting (the agent's probe and its random ``reconnect_window``) and what follows (the
CONNACK, the retained ``status`` and ``meta`` acknowledged, the first batch).

At the end the backlog drains, the agent stops, and every id is accounted for at a QoS 1
subscriber with a persistent session: lost (ids nobody can account for), repeated with the same
content (at-least-once: a publish whose acknowledgement the outage took), repeated with other
content (never allowed).

    python -m bench.reconnect                          # 20 s and 25 s outages, 5 each (~5.5 min)
    python -m bench.reconnect --protocol 5,3.1.1       # both protocols: four rigs at once, as long
    python -m bench.reconnect --outages 3 --repeat 3 --up 10   # short sessions: backoff
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agent.testkit.aio import KitLoop
from agent.testkit.broker import Broker
from agent.testkit.faults import Reconciled, account, drained
from agent.testkit.modbus import ModbusBus
from agent.testkit.runner import AgentRunner
from drivers.modbus.schema import ModbusPoint

from ._rig import markdown_table

AGENT_ID = "bench-site"
PREFIX = "rc"
TELEMETRY = f"{PREFIX}/{AGENT_ID}/telemetry"
POINTS = (ModbusPoint("level", table="holding", address=0, type="uint16"),)
#: The agent's defaults but for where it publishes (the runner adds the URL).
SITE = f"""
[agent]
id = "{AGENT_ID}"
[mqtt]
topic_prefix = "{PREFIX}"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
[[device]]
name = "meter"
bus = "plc"
unit = 1
interval = "{{interval}}"
  [[device.point]]
  name = "level"
  address = 0
"""
#: How often the broker's log is read for new lines: the resolution of every figure.
LOG_POLL = 0.002
#: The longest wait for the first reading after a return before it counts as none.
FIRST_READING_TIMEOUT = 120.0
LISTENING = re.compile(r"Opening ipv4 listen socket on port")
CONNECTED = re.compile(rf"New client connected from \S+ as {AGENT_ID} ")
FIRST_TELEMETRY = re.compile(rf"Received PUBLISH from {AGENT_ID} \(.*'{TELEMETRY}'")


class LogStamps:
    """Mosquitto's log file followed as it is written, each line stamped (``time.monotonic()``)
    as it is read; ``wait(pattern, after)`` for the first line matching after a given one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="mosquitto log", daemon=True)

    def start(self) -> LogStamps:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def __len__(self) -> int:
        with self._changed:
            return len(self.lines)

    def wait(
        self, pattern: re.Pattern[str], after: int, timeout: float
    ) -> tuple[int, float] | None:
        """The index and stamp of the first line from ``after`` on that matches ``pattern``;
        None when none came within ``timeout`` seconds."""
        scanned = after  # lines before this one were looked at already
        found: tuple[int, float] | None = None

        def seen() -> bool:
            nonlocal scanned, found
            for index in range(scanned, len(self.lines)):
                stamp, line = self.lines[index]
                if pattern.search(line):
                    found = (index, stamp)
                    return True
            scanned = len(self.lines)
            return False

        with self._changed:
            self._changed.wait_for(seen, timeout)
            return found

    def _follow(self) -> None:
        while not self.path.exists():  # the broker creates it as it starts
            if self._stopping.wait(LOG_POLL):
                return
        with self.path.open(errors="replace") as log:
            partial = ""
            while not self._stopping.is_set():
                partial += log.readline()
                if not partial.endswith("\n"):
                    self._stopping.wait(LOG_POLL)  # another process's file: read, not awaited
                    continue
                with self._changed:
                    self.lines.append((time.monotonic(), partial))
                    self._changed.notify_all()
                partial = ""


@dataclass
class Return:
    """One return of the broker: seconds from listening to the agent's CONNECT and to its first
    reading (None: not within ``FIRST_READING_TIMEOUT``)."""

    connect: float | None
    reading: float | None


@dataclass
class Result:
    """One rig: a protocol, an outage length, its returns and the accounting at the end."""

    protocol: str
    outage: float
    returns: list[Return] = field(default_factory=list)
    reconciled: Reconciled | None = None
    repeated: int = 0  # deliveries of an id already delivered, with the same content
    tracebacks: int = 0
    first_log_errors: list[str] = field(default_factory=list)  # the agent's ERROR lines
    error: str = ""

    def readings(self) -> list[float]:
        return sorted(r.reading for r in self.returns if r.reading is not None)

    def connects(self) -> list[float]:
        return sorted(r.connect for r in self.returns if r.connect is not None)


@contextmanager
def rig(workdir: Path, protocol: str, interval: float) -> Iterator[tuple[Broker, AgentRunner]]:
    """A broker (logging everything), a slave and the agent polling it, stopped on exit."""
    kit = KitLoop().start()
    broker = Broker(_dir(workdir / "mosquitto"), settings={"log_type": "all"})
    bus = ModbusBus(kit, _dir(workdir / "modbus"), "tcp")
    runner = AgentRunner(kit, _dir(workdir / "agent"), broker)
    try:
        broker.start()
        bus.start().add(1, points=POINTS).set("level", 42)
        site = SITE.format(interval=f"{interval:g}s")
        runner.start(site, buses={"plc": bus}, overrides={"mqtt": {"protocol": protocol}})
        yield broker, runner
    finally:
        runner.stop()
        bus.stop()
        broker.stop()
        kit.close()


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def measure(
    workdir: Path, protocol: str, outage: float, repeat: int, up: float, interval: float
) -> Result:
    """``repeat`` outages of ``outage`` seconds against one agent, and the accounting."""
    result = Result(protocol, outage)
    with rig(workdir, protocol, interval) as (broker, runner):
        stamps = LogStamps(broker.log).start()
        try:
            runner.telemetry.wait_samples(1, timeout=30)
            time.sleep(up)  # a stable session: what the agent meets an outage with
            for _ in range(repeat):
                result.returns.append(_outage(broker, stamps, outage))
                time.sleep(up)
            if not drained(runner, timeout=120):
                result.error = "the backlog did not drain within 120 s"
            runner.term()
            result.reconciled = account(runner)
            ids = Counter(sample["id"] for sample in runner.telemetry.samples())
            result.repeated = sum(count - 1 for count in ids.values())
            # a chained exception is one traceback with several headers: counted once
            result.first_log_errors = [
                line for line in runner.log.splitlines() if " ERROR " in line
            ][:5]
            result.tracebacks = runner.log.count("Traceback (most recent call last)") - (
                runner.log.count("During handling of the above exception")
                + runner.log.count("The above exception was the direct cause")
            )
        finally:
            stamps.stop()
    return result


def _outage(broker: Broker, stamps: LogStamps, outage: float) -> Return:
    """Stop the broker for ``outage`` seconds, start it on the same port, and time the agent's
    CONNECT and first telemetry from the moment the broker listened."""
    broker.stop()
    time.sleep(outage)
    mark = len(stamps)
    broker.start()
    listening = stamps.wait(LISTENING, mark, timeout=10)
    if listening is None:
        raise RuntimeError(f"no listening line in the broker's log:\n{broker.log_text()[-2000:]}")
    index, back = listening
    reading = stamps.wait(FIRST_TELEMETRY, index, FIRST_READING_TIMEOUT)
    connect = stamps.wait(CONNECTED, index, timeout=0 if reading else 1)
    return Return(
        None if connect is None else connect[1] - back,
        None if reading is None else reading[1] - back,
    )


def table(results: Sequence[Result]) -> str:
    headers = [
        "MQTT",
        "outage, s",
        "returns",
        "first reading at the broker, s: min / median / max",
        "of which before CONNECT (median)",
        "no reading",
        "ids lost",
        "repeated (same content)",
        "other content",
        "tracebacks",
    ]
    rows = [_row(r) for r in results]
    return markdown_table(headers, rows)


def _row(result: Result) -> list[object]:
    readings, connects = result.readings(), result.connects()
    spread = (
        f"{readings[0]:.2f} / {statistics.median(readings):.2f} / {readings[-1]:.2f}"
        if readings
        else "–"
    )
    before = f"{statistics.median(connects):.2f}" if connects else "–"
    r = result.reconciled
    lost = "–" if r is None else str(len(r.unaccounted))
    clashes = "–" if r is None else str(len(r.clashes))
    missing = len(result.returns) - len(readings)
    return [
        result.protocol,
        f"{result.outage:g}",
        len(result.returns),
        spread,
        before,
        missing,
        lost,
        result.repeated,
        clashes,
        result.tracebacks,
    ]


def details(results: Sequence[Result]) -> str:
    """Every return, and each rig's accounting."""
    lines = []
    for result in results:
        times = ", ".join(
            "none" if r.reading is None else f"{r.reading:.2f}" for r in result.returns
        )
        lines.append(f"MQTT {result.protocol}, {result.outage:g} s outages: {times}")
        lines.append(f"  {result.reconciled}; tracebacks {result.tracebacks}")
        lines += [f"  {line}" for line in result.first_log_errors]
        if result.error:
            lines.append(f"  {result.error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    outages = [float(o) for o in args.outages.split(",")]
    protocols = args.protocol.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-reconnect-"))
    runs = [(p, o) for p in protocols for o in outages]
    started = time.monotonic()

    def one(run: tuple[str, float]) -> Result:
        protocol, outage = run
        directory = workdir / f"mqtt{protocol}-{outage:g}s"
        return measure(directory, protocol, outage, args.repeat, args.up, args.interval)

    try:
        with ThreadPoolExecutor(max_workers=args.parallel or len(runs)) as pool:
            results = list(pool.map(one, runs))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))
    print()
    print(details(results))
    print(f"\n({(time.monotonic() - started) / 60:.1f} min)")
    if args.keep:
        print(f"kept: {workdir}")
    failed = [
        r for r in results if r.error or r.tracebacks or r.reconciled is None or not r.reconciled.ok
    ]
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reconnect", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--outages", default="20,25", help="outage lengths, s (default 20,25)")
    parser.add_argument("--repeat", type=int, default=5, help="outages of each length (5)")
    parser.add_argument(
        "--protocol", default="5", help='MQTT protocol(s), comma-separated: "5", "3.1.1"'
    )
    parser.add_argument(
        "--up",
        type=float,
        default=32.0,
        help="seconds the broker stays up between outages (32: past the agent's stable session)",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="the device's poll interval")
    parser.add_argument("--parallel", type=int, help="rigs at once (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the rigs' directories")
    return parser


if __name__ == "__main__":
    sys.exit(main())
