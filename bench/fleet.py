"""A fleet on one machine: N ``edge-agent run`` processes, each with its own id and data dir,
against one Mosquitto that then restarts: how hard the fleet's return hits the broker.

First it reports each agent's memory and CPU (min / median / max over the fleet), the broker's
message rate and CPU, and that every agent's sample ids arrived without a gap. Then it stops the
broker for ``--outage`` seconds and starts it again. The agents probe the broker's port while it
is away and, once it answers, each CONNECTs at a random moment within its ``reconnect_window``
(``--window``, the same for every agent): on average the broker should see agents / window
CONNECTs a second. It reports the rate it did see (CONNECTs per second of the broker's log, and
in any 1 s or 0.1 s span by the stamps of ``bench._fleet_stamp``), the time from the broker's
start until every agent was back and until every agent's backlog had arrived, the samples lost
(gaps in an agent's ids at a subscriber with a persistent session and an unlimited queue; where
a missing one is, by a second subscriber and the agent's buffer: ``bench._fleet_audit``), and
what the probes cost while the broker was away.

Every agent polls the same simulated Modbus TCP slaves, served by ``--slave-processes``
processes (``bench._fleet_slaves``). Agents start in waves, at a lower priority than the rest of
the rig (``--nice``), and no more start once the fleet has taken ``--memory-budget`` GiB of the
machine's memory (the run goes on with those that did: that is how many the machine holds).
``--fork`` forks them from one process that imported the agent once
(``bench._fleet_forkserver``), so that twice as many fit.

Run from the repository root:
    python -m bench.fleet                          # 100 agents: ~2 minutes
    python -m bench.fleet --agents 20 --outage 10  # ~1.5 minutes
    # the big run (~4 minutes; 1,000 agents: see the README's fleet section):
    python -m bench.fleet --fork --agents 1000 --devices 1 --interval 10 --outage 60
        --window 20 --start-batch 50 --slave-processes 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.testkit.aio import until
from agent.testkit.mqtt import Subscriber
from agent.testkit.net import free_port
from agent.uplink.telemetry import PROBE_EVERY, STABLE_SESSION

from ._fleet_audit import Audit, buffered
from ._fleet_broker import HOST, Connect, FleetBroker, peak_within, per_second, tcp_counters
from ._fleet_launch import ExecLauncher, ForkLauncher, Launcher
from ._fleet_slaves import SlaveFarm
from ._rig import READINGS_PER_SAMPLE, cpu_seconds, markdown_table
from .suite import POINTS, private, status_kib, task_cpu

PREFIX = "fleet"
GIB = 1024**3


@dataclass
class Member:
    """One agent of the fleet and what arrived from it."""

    name: str
    workdir: Path
    modbus_port: int
    interval: float  # seconds between its polls
    pid: int = 0
    ids: dict[int, int] = field(default_factory=dict)  # each sample's id: its ts
    newest_id: int = 0
    newest_ts: int = 0
    #: When everything it had taken up to the broker's return had arrived (Unix time; known
    #: once a later reading arrived with no gap before it).
    caught_up_at: float | None = None
    #: When the last of the readings it took before the broker's return arrived.
    backlog_in_at: float | None = None

    def config(self, args: argparse.Namespace, broker_url: str) -> Path:
        lines = [
            f'[agent]\nid = "{self.name}"\ndata_dir = "{self.workdir / "data"}"\n',
            f'[mqtt]\nurl = "{broker_url}"\ntopic_prefix = "{PREFIX}"\n'
            f'reconnect_max = "{args.reconnect_max:g}s"\n'
            f'reconnect_window = "{round(args.window * 1000)}ms"\n',
            *(
                [f'[buffer]\nflush_interval = "{args.flush_interval:g}s"\n']
                if args.flush_interval
                else []
            ),
            '[[template]]\nname = "bench20"\n',
            *(
                f'[[template.point]]\nname = "{p.name}"\naddress = {p.address}\ntype = "float32"\n'
                for p in POINTS
            ),
            f'[[bus]]\nname = "plc"\ntype = "modbus-tcp"\nhost = "{HOST}"\n'
            f'port = {self.modbus_port}\ntimeout = "{args.modbus_timeout:g}s"\n',
            *(
                f'[[device]]\nname = "meter{d}"\nbus = "plc"\nunit = {d + 1}\n'
                f'interval = "{round(self.interval * 1000)}ms"\ntemplate = "bench20"\n'
                for d in range(args.devices)
            ),
        ]
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "agent.toml"
        path.write_text("\n".join(lines))
        return path

    def gaps(self) -> int:
        """Ids missing up to the last that arrived (an agent with a fresh data dir starts at 1)."""
        return self.newest_id - len(self.ids)

    def missing(self) -> list[int]:
        return sorted(set(range(1, self.newest_id + 1)) - self.ids.keys())

    def around(self, sample_id: int) -> str:
        """When the samples either side of ``sample_id`` were taken (Unix ms)."""
        return f"between {self.ids.get(sample_id - 1)} and {self.ids.get(sample_id + 1)} ms"

    def caught_up(self, since_ms: float) -> bool:
        """A reading taken at or after ``since_ms`` arrived, and every one before it: live
        readings go out beside the backlog, so the first alone does not say the backlog is in."""
        return self.newest_ts >= since_ms and self.gaps() == 0


class Watcher:
    """A QoS 1 subscriber with a persistent session on every agent's topics; it follows the
    broker through its restart (the broker keeps what arrives for it meanwhile)."""

    def __init__(self, broker: FleetBroker, members: Sequence[Member]) -> None:
        self.broker = broker
        self.by_name = {m.name: m for m in members}
        self.sub: Subscriber | None = None
        self.messages = 0
        #: Members count as caught up once ``Member.caught_up(since_ms)``.
        self.since_ms = math.inf

    @contextlib.asynccontextmanager
    async def attached(self) -> AsyncIterator[Watcher]:
        async with Subscriber(HOST, self.broker.port, f"{PREFIX}/#", session="fleet-watch") as s:
            self.sub = s
            try:
                yield self
            finally:
                self.collect()
                self.sub = None

    def collect(self) -> int:
        """Take in what arrived (and let the subscriber forget it: a thousand agents' samples
        would otherwise pile up in this process); returns the messages seen so far."""
        if self.sub is None:
            return self.messages
        new = self.sub.messages[:]
        del self.sub.messages[: len(new)]
        self.messages += len(new)
        now = time.time()
        for topic, payload, _ in new:
            if topic.endswith("/telemetry"):
                member = self.by_name[payload["agent"]]
                for sample in payload["samples"]:
                    if sample["ts"] < self.since_ms < math.inf:  # taken before the return
                        member.backlog_in_at = now
                    member.ids[sample["id"]] = sample["ts"]
                    member.newest_id = max(member.newest_id, sample["id"])
                    member.newest_ts = max(member.newest_ts, sample["ts"])
                if member.caught_up_at is None and member.caught_up(self.since_ms):
                    member.caught_up_at = now
        return self.messages


# --- the machine


def mem_available() -> int:
    """``MemAvailable`` of ``/proc/meminfo``, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def busy_cores_since(ticks: tuple[int, int], seconds: float) -> float:
    """Cores the whole machine kept busy since ``ticks`` (``machine_ticks()``), over ``seconds``."""
    busy, idle = machine_ticks()
    done = (busy - ticks[0]) + (idle - ticks[1])
    return (busy - ticks[0]) / done * cores() if done else 0.0


def machine_ticks() -> tuple[int, int]:
    """Busy and idle jiffies of every core (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values[:8]) - idle, idle


def cores() -> int:
    return os.cpu_count() or 1


def fleet_cpu(members: Sequence[Member]) -> float:
    return sum(task_cpu(m.pid) for m in members)


# --- starting the fleet


async def launch(
    args: argparse.Namespace,
    members: Sequence[Member],
    launcher: Launcher,
    broker: FleetBroker,
    watcher: Watcher,
) -> list[Member]:
    """Start the agents in waves (their start-ups would otherwise all compete for the cores),
    until all are running or the next wave would take the fleet past the memory budget;
    returns those started."""
    baseline, budget = mem_available(), args.memory_budget * GIB
    started: list[Member] = []
    for first in range(0, len(members), args.start_batch):
        wave = members[first : first + args.start_batch]
        taken = baseline - mem_available()
        each = per_agent(taken, started)
        if each * (len(started) + len(wave)) > budget:
            print(
                f"memory budget ({args.memory_budget:g} GiB) reached: {len(started)} agents "
                f"took {taken / GIB:.1f} GiB so far, {each / 2**20:.1f} MiB each; no more start"
            )
            break
        for member in wave:
            member.pid = launcher.start(
                member.config(args, broker.url), member.workdir / "agent.log"
            )
        started += wave
        await asyncio.sleep(args.start_pause)
        watcher.collect()
    return started


def per_agent(taken: float, started: Sequence[Member]) -> float:
    """Bytes of memory one agent takes: what the fleet took from the machine so far, per agent,
    or the PSS of the first agents started, whichever is more (the agents of the last wave
    are still growing: the machine's figure lags behind them)."""
    if not started:
        return 0.0
    settled = statistics.mean(private(m.pid)[1] for m in started[:10]) * 1024
    return max(taken / len(started), settled)


async def until_delivering(members: Sequence[Member], watcher: Watcher) -> None:
    await until(
        lambda: watcher.collect() >= 0 and all(m.ids for m in members),
        180,
        "a reading from every agent",
        0.2,
    )


# --- measuring the fleet


@dataclass
class Rig:
    """What the benchmark runs beside the agents."""

    launcher: Launcher
    broker: FleetBroker
    farm: SlaveFarm
    audit: Audit

    def cpu(self) -> float:
        """CPU seconds of this process (the watcher) and of the slaves' processes."""
        return time.process_time() + sum(cpu_seconds(pid) for pid in self.farm.pids)


@dataclass
class Usage:
    rss: list[int]
    anon: list[int]
    pss: list[int]
    cpu: list[float]  # share of one core over the window
    helpers_pss: int  # KiB: the fork server's share of the pages it shares with the agents
    message_rate: float
    broker_cpu: float
    rig_cpu: float  # the watcher's and the slaves' processes, cores
    seconds: float
    #: The machine's TCP counters per second meanwhile: what else opens connections on it
    #: (the agents, connected, open none), to be taken off what the probes seem to cost.
    tcp_per_s: dict[str, float]


async def measure(members: Sequence[Member], watcher: Watcher, rig: Rig, seconds: float) -> Usage:
    """Every agent's memory now and its CPU over ``seconds``; the messages the watcher got and
    the broker's CPU meanwhile."""
    before = [task_cpu(m.pid) for m in members]
    broker, messages, started = rig.broker, watcher.messages, time.time()
    broker_before, rig_before, tcp = cpu_seconds(broker.pid), rig.cpu(), tcp_counters()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        watcher.collect()
    elapsed = time.time() - started
    cpu = [(task_cpu(m.pid) - b) / elapsed for m, b in zip(members, before, strict=True)]
    memory = [(status_kib(m.pid, "VmRSS"), *private(m.pid)) for m in members]
    rss, anon, pss = (list(column) for column in zip(*memory, strict=True))
    return Usage(
        rss,
        anon,
        pss,
        cpu,
        sum(private(pid)[1] for pid in rig.launcher.helpers()),
        (watcher.messages - messages) / elapsed,
        (cpu_seconds(broker.pid) - broker_before) / elapsed,
        (rig.cpu() - rig_before) / elapsed,
        elapsed,
        {k: (v - tcp[k]) / elapsed for k, v in tcp_counters().items()},
    )


def spread(values: Sequence[float]) -> str:
    if not values:
        return "–"
    return " / ".join(f"{v:.1f}" for v in (min(values), statistics.median(values), max(values)))


def fleet_table(usage: Usage) -> str:
    rss, anon, pss = ([kib / 1024 for kib in xs] for xs in (usage.rss, usage.anon, usage.pss))
    total = (sum(usage.pss) + usage.helpers_pss) / 1024
    rows = [
        ("agent RSS, MiB", spread(rss)),
        ("agent RssAnon (own pages, and pages shared with the fork server), MiB", spread(anon)),
        ("agent PSS (shared pages divided among the fleet), MiB", spread(pss)),
        ("agent CPU, % of one core", spread([c * 100 for c in usage.cpu])),
        ("fleet CPU, cores", f"{sum(usage.cpu):.2f}"),
        ("fleet memory: sum of PSS (and the fork server's), MiB", f"{total:,.0f}"),
        ("broker CPU, % of one core", f"{usage.broker_cpu * 100:.1f}"),
        ("the watcher's and the simulated slaves' CPU, cores", f"{usage.rig_cpu:.2f}"),
        (
            "messages/s the broker delivered to the watcher (= published by the fleet)",
            f"{usage.message_rate:,.1f}",
        ),
    ]
    return f"Over {usage.seconds:.0f} s (min / median / max over the agents):\n\n" + markdown_table(
        ("measure", "value"), rows
    )


def gap_report(members: Sequence[Member]) -> str:
    gapped = [m for m in members if m.gaps()]
    samples = sum(len(m.ids) for m in members)
    if gapped:
        where = "; ".join(f"{m.name}: {m.missing()[:5]}" for m in gapped[:10])
        return f"{samples:,} samples; GAPS in {len(gapped)} agents (ids missing): {where}"
    return (
        f"{samples:,} samples from {len(members)} agents, every agent's ids from 1 up without a gap"
    )


# --- the outage


@dataclass
class Return:
    """The broker's restart and the fleet's return, as measured."""

    outage: float
    back: float  # Unix time the restarted broker listened
    connects: list[Connect]  # the agents' CONNECTs from then on
    accepts: list[float]  # TCP connections accepted from then on (probes and CONNECTs)
    logged: int  # CONNECTs in the broker's own log meanwhile (the stamps' cross-check)
    caught_up: float  # seconds from ``back`` until every agent's backlog had arrived
    #: The machine's TCP counters per second over the outage's second half, less what they
    #: counted per second before it (``Usage.tcp_per_s``): the agents' probes.
    probes: dict[str, float]
    restart: dict[str, int]  # ... and over the return
    trouble: dict[str, int]
    steady_cores: float  # the fleet's CPU before the outage
    outage_cores: float  # ... while the broker was away (polling on, and probing)
    return_seconds: float  # from the broker's start until every agent's readings were in
    return_cpu: float  # CPU seconds the agents spent meanwhile
    machine_cores: float  # cores the whole machine kept busy meanwhile


async def stop_broker(
    broker: FleetBroker, watcher: Watcher, attached: contextlib.AsyncExitStack
) -> float:
    """Stop the broker with the watcher still attached, then detach it. Its client acknowledges
    each message as it arrives; had it left first, what arrived while it was leaving would be
    acknowledged and never read. What the broker had not sent stays in the watcher's session,
    for after the restart. Returns when it went (``time.monotonic()``)."""
    with quiet("mqtt", "agent.aio"):  # the watcher's client and its reader, ended: expected
        broker.stop()
        went = time.monotonic()
        await asyncio.sleep(1.0)  # the subscriber reads what its client took, then the end
        await attached.aclose()
    return went


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Only critical lines from ``loggers`` meanwhile."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


async def outage(
    args: argparse.Namespace,
    members: Sequence[Member],
    broker: FleetBroker,
    watcher: Watcher,
    usage: Usage,
    went: float,
) -> Return:
    """From the broker's stop at ``went`` (``time.monotonic()``): its restart ``--outage``
    seconds later, and the fleet's return."""
    cpu_before, counted_from = fleet_cpu(members), time.monotonic()
    # The probes are counted over the outage's second half: by then every agent has noticed
    # that the broker went, and probes.
    await asyncio.sleep(went + args.outage / 2 - time.monotonic())
    before = tcp_counters()
    await asyncio.sleep(went + args.outage - time.monotonic())
    during, cpu, ticks, moment = (
        tcp_counters(),
        fleet_cpu(members),
        machine_ticks(),
        time.monotonic(),
    )
    outage_cores = (cpu - cpu_before) / (moment - counted_from)
    spawned = time.time()  # before any connection to the new broker
    detected = await broker.start()
    watcher.since_ms = spawned * 1000
    async with watcher.attached():
        with contextlib.suppress(TimeoutError):  # who did not catch up is in the report
            await until(
                lambda: watcher.collect() >= 0 and all(m.caught_up_at for m in members),
                args.window + args.reconnect_max + 120,
                "every agent's readings up to the broker's return",
                0.2,
            )
        busy = busy_cores_since(ticks, time.monotonic() - moment)
        spent, settled = fleet_cpu(members) - cpu, time.time() - spawned
        await asyncio.sleep(2.0)  # a straggling CONNECT (one agent's second) would show
        watcher.collect()
    names = {m.name for m in members}
    accepts = broker.accepts_since(spawned)
    # When it listened: its first connection accepted (stamped by a process of its own), if
    # that came before this busy process saw the port open.
    back = min(detected, *accepts[:1])
    return Return(
        args.outage,
        back,
        [c for c in broker.connects_since(spawned) if c.client in names],
        accepts,
        broker.logged_connects_since(spawned),
        max(m.backlog_in_at or back for m in members) - back,
        {k: (during[k] - before[k]) / (args.outage / 2) - usage.tcp_per_s[k] for k in before},
        {k: v - during[k] for k, v in tcp_counters().items()},
        broker.trouble_since(spawned),
        sum(usage.cpu),
        outage_cores,
        settled,
        spent,
        busy,
    )


def first_connects(ret: Return) -> dict[str, float]:
    """Each agent's first CONNECT after the restart, seconds after the broker listened."""
    first: dict[str, float] = {}
    for connect in ret.connects:
        first.setdefault(connect.client, connect.at - ret.back)
    return first


def return_rows(
    args: argparse.Namespace, members: Sequence[Member], ret: Return
) -> list[tuple[str, str]]:
    agents, lost = len(members), sum(m.gaps() for m in members)
    first = sorted(first_connects(ret).values())
    seconds = per_second([c.second for c in ret.connects])
    stamped = [c.at for c in ret.connects]
    budget = agents / args.window if args.window > 0 else math.inf
    lag = max((c.at - c.second - 1 for c in ret.connects), default=0.0)
    beyond_steady = ret.return_cpu - ret.steady_cores * ret.return_seconds
    return [
        ("agents, reconnect_window", f"{agents}, {args.window:g} s"),
        ("CONNECT budget the window implies (agents / window), per s", f"{budget:,.0f}"),
        ("peak CONNECTs in one second of the broker's log", f"{max(seconds.values(), default=0)}"),
        ("peak CONNECTs in any 1 s (stamped)", f"{peak_within(stamped, 1.0)}"),
        ("peak CONNECTs in any 0.1 s (stamped), × 10 per s", f"{peak_within(stamped, 0.1) * 10}"),
        ("first / median / last agent back, s after the broker listened", spread(first)),
        ("every agent's backlog arrived, s after the broker listened", f"{ret.caught_up:.1f}"),
        ("CONNECTs after the restart beyond one per agent", f"{len(ret.connects) - len(first)}"),
        ("samples lost (gaps in the ids)", f"{lost} ({lost * READINGS_PER_SAMPLE} readings)"),
        (
            "TCP connections the broker accepted in its first 2 s (probes and CONNECTs); "
            "peak in any 1 s",
            f"{sum(1 for t in ret.accepts if t < ret.back + 2)}; {peak_within(ret.accepts, 1.0)}",
        ),
        (
            "listen queue overflows / drops during the return (machine-wide)",
            f"{ret.restart['ListenOverflows']} / {ret.restart['ListenDrops']}",
        ),
        (
            "probes in the outage's second half, per agent per s (the machine's TCP opens, less "
            "its rate before the outage, / agents)",
            f"{ret.probes['ActiveOpens'] / agents:.2f} "
            f"(refused: {ret.probes['AttemptFails'] / agents:.2f})",
        ),
        (
            "fleet CPU, cores: broker up / broker away / during the return",
            f"{ret.steady_cores:.2f} / {ret.outage_cores:.2f} / "
            f"{ret.return_cpu / ret.return_seconds:.2f}",
        ),
        (
            "agents' CPU for the return beyond their steady rate, ms per agent",
            f"{beyond_steady / agents * 1000:.0f}",
        ),
        ("machine busy during the return, cores", f"{ret.machine_cores:.2f} of {cores()}"),
        ("stamps behind the broker's own second, at most, ms", f"{max(0.0, lag) * 1000:.0f}"),
    ]


def late_agents(args: argparse.Namespace, members: Sequence[Member], ret: Return) -> str:
    """Agents back later than a probe step and the window allow, and the last one caught up:
    the ones to look at in their logs."""
    first = first_connects(ret)
    allowed = args.window + PROBE_EVERY * 1.5 + 0.5  # half a second for the machine's load
    late = sorted((delay, name) for name, delay in first.items() if delay > allowed)
    last = max(members, key=lambda m: m.backlog_in_at or 0.0)
    lines = [
        f"last backlog in: {last.name}'s, back {first.get(last.name, math.nan):.1f} s and its "
        f"backlog in {(last.backlog_in_at or math.nan) - ret.back:.1f} s after the broker listened"
    ]
    if late:
        latest = ", ".join(f"{name} {delay:.1f} s" for delay, name in late[-5:])
        lines.append(
            f"{len(late)} agents back later than a probe step and the window allow "
            f"({allowed:.2f} s); the latest: {latest}"
        )
    return "\n".join(lines)


def timeline(ret: Return, bins: int = 20) -> str:
    """Agents reconnecting per slot after the broker listened, as bars."""
    delays = [c.at - ret.back for c in ret.connects]
    if not delays:
        return "  (none)"
    width = nice_width(max(delays) / bins)
    counts = [0] * (int(max(delays) // width) + 1)
    for d in delays:
        counts[int(d // width)] += 1
    scale = max(1.0, max(counts) / 50)
    return "\n".join(
        f"  {i * width:6.2f}–{(i + 1) * width:<6.2f}s {n:5d} {'#' * math.ceil(n / scale)}"
        for i, n in enumerate(counts)
    )


def nice_width(rough: float) -> float:
    """The smallest of 0.1, 0.25, 0.5, 1, 2, 5, 10, … s at least ``rough``."""
    for width in (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500):
        if width >= rough:
            return width
    return 1000.0


def gap_diagnosis(members: Sequence[Member], audit: Audit) -> str:
    """For each agent with a gap (while it still runs), where its missing samples are."""
    lines = []
    for member in [m for m in members if m.gaps()][:10]:
        missing = member.missing()
        held = buffered(member.workdir / "data" / "buffer.sqlite", missing)
        audited = audit.ids(member.name)
        for sample_id in missing[:5]:
            lines.append(
                f"  {member.name} sample {sample_id} (taken {member.around(sample_id)}): "
                f"in the agent's buffer: {'yes' if sample_id in held else 'no'}; "
                f"at the audit subscriber: {'yes' if sample_id in audited else 'no'}"
            )
    return ("where the missing samples are:\n" + "\n".join(lines)) if lines else ""


def return_report(args: argparse.Namespace, members: Sequence[Member], ret: Return) -> str:
    missing = sorted({m.name for m in members} - set(first_connects(ret)))
    lines = [
        f"broker back; every agent back and its backlog arrived {ret.caught_up:.1f} s later\n",
        markdown_table(("measure", "value"), return_rows(args, members, ret)),
        late_agents(args, members, ret),
        "\nCONNECTs after the broker listened (stamped):",
        timeline(ret),
        f"\nids after the outage: {gap_report(members)}",
        f"CONNECTs in the broker's own log since the restart: {ret.logged}, the agents' "
        f"({len(ret.connects)} stamped), the watcher's and the audit subscriber's",
    ]
    if missing:
        lines.append(f"NOT seen reconnecting: {missing}")
    behind = [m.name for m in members if not m.caught_up_at]
    if behind:
        lines.append(f"NOT caught up (a gap, or nothing taken since the restart): {behind}")
    if ret.trouble:
        lines.append(f"broker log since the restart: {ret.trouble}")
    return "\n".join(lines)


# --- the run


def header(args: argparse.Namespace) -> str:
    readings_per_s = args.agents * args.devices * READINGS_PER_SAMPLE / args.interval
    launched = "forked" if args.fork else "exec'd"
    return (
        f"{args.agents} agents ({launched}) × {args.devices} devices × {READINGS_PER_SAMPLE} "
        f"points every {args.interval:g} s (+0 to 9.9 %; {readings_per_s:,.0f} readings/s), one "
        f"Mosquitto; outage {args.outage:g} s, reconnect_window {args.window:g} s; agents probe "
        f"the broker every {PROBE_EVERY / 2:g}–{PROBE_EVERY * 1.5:g} s while it is away\n"
    )


def staggered(interval: float, n: int) -> float:
    """The n-th agent's poll interval: ``interval`` stretched by 0 to 9.9 %.

    Each agent aligns its polls to the wall clock (a 10 s device reads at :00, :10, …), so with
    one interval a thousand agents would all poll, decode and publish at the same instant, on
    the two cores they share here (in the field each gateway has its own): their polls would
    time out for want of a core. Slightly different intervals spread their slots over time.
    """
    return interval * (1 + (n % 100) / 1000)


async def run(args: argparse.Namespace, workdir: Path) -> None:
    print(header(args))
    broker = FleetBroker(workdir / "broker", free_port())
    broker.configure()
    broker.start_stamper()
    farm = SlaveFarm(args.slave_processes, args.devices)
    launcher: Launcher = ForkLauncher(args.nice) if args.fork else ExecLauncher(args.nice)
    members = [
        Member(f"gw{n:04d}", workdir / f"gw{n:04d}", farm.port_for(n), staggered(args.interval, n))
        for n in range(args.agents)
    ]
    audit: Audit | None = None
    try:
        await broker.start()
        audit = Audit(broker.port, PREFIX, workdir / "broker" / "audit.log")
        await fleet(args, members, Rig(launcher, broker, farm, audit))
    finally:
        codes = await asyncio.to_thread(launcher.stop_all, 30.0)
        failed = {pid: code for pid, code in codes.items() if code != 0}
        if failed:
            names = {m.pid: m.name for m in members}
            said = ", ".join(f"{names.get(pid, pid)}: {code}" for pid, code in failed.items())
            print(f"agents that did not exit cleanly (exit code; None: killed): {said}")
        farm.stop()
        if audit is not None:
            audit.stop()
        broker.close()


async def fleet(args: argparse.Namespace, members: list[Member], rig: Rig) -> None:
    watcher = Watcher(rig.broker, members)
    began = time.monotonic()
    async with contextlib.AsyncExitStack() as attached:
        await attached.enter_async_context(watcher.attached())
        members = await launch(args, members, rig.launcher, rig.broker, watcher)
        await until_delivering(members, watcher)
        delivering = time.monotonic()
        print(f"all {len(members)} agents delivering after {delivering - began:.0f} s")
        await asyncio.sleep(args.settle)
        usage = await measure(members, watcher, rig, args.measure)
        # An agent whose session was younger than STABLE_SESSION when the broker went treats
        # the loss as a broker that drops it and backs off first: not the case measured.
        await asyncio.sleep(max(0.0, delivering + STABLE_SESSION + 5 - time.monotonic()))
        print(fleet_table(usage))
        print(f"\nids before the outage: {gap_report(members)}")
        print(f"\nbroker stopped for {args.outage:g} s")
        went = await stop_broker(rig.broker, watcher, attached)
    ret = await outage(args, members, rig.broker, watcher, usage, went)
    print(return_report(args, members, ret))
    print(gap_diagnosis(members, rig.audit))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--devices", type=int, default=2, help="devices of 20 points per agent")
    parser.add_argument("--interval", type=float, default=5.0, help="poll interval, seconds")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds without the broker")
    parser.add_argument(
        "--window", type=float, default=0.5, help="the agents' mqtt.reconnect_window, seconds"
    )
    parser.add_argument(
        "--reconnect-max", type=float, default=60.0, help="the agents' mqtt.reconnect_max"
    )
    parser.add_argument("--measure", type=float, default=20.0, help="seconds of measurement")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--fork", action="store_true", help="fork the agents from one process")
    parser.add_argument(
        "--flush-interval",
        type=float,
        help="the agents' buffer.flush_interval, seconds (default: the agent's own)",
    )
    parser.add_argument(
        "--nice", type=int, default=19, help="the agents' niceness: the rig's processes come first"
    )
    parser.add_argument(
        "--slave-processes", type=int, default=2, help="processes serving the simulated slaves"
    )
    parser.add_argument(
        "--modbus-timeout", type=float, default=1.0, help="the agents' Modbus timeout, seconds"
    )
    parser.add_argument("--start-batch", type=int, default=10, help="agents started at once")
    parser.add_argument("--start-pause", type=float, default=3.0, help="seconds between batches")
    parser.add_argument(
        "--memory-budget",
        type=float,
        default=12.0,
        help="GiB of the machine's memory the fleet may take; no more agents start past it",
    )
    parser.add_argument(
        "--keep", type=Path, help="keep the agents' and the broker's files and logs in this dir"
    )
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)  # never another run's files
        asyncio.run(run(args, args.keep.resolve()))
        return
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
