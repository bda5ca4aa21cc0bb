"""A fault campaign: the real agent against a real broker and simulated slaves, with the faults of
the field injected at moments drawn from a seed, and every sample id accounted for at the end.

FoundationDB's lesson: faults at seeded random moments, and a failing seed replays. Jepsen's:
account for every write at the client. A ``Campaign`` runs one scenario:

* a Mosquitto of its own, a Modbus TCP bus of simulated slaves, and ``edge-agent run`` with its
  data dir on an ``Ext4Card`` (an ext4 image on a loop device mounted ``errors=remount-ro``, as
  an SD card is; a plain directory where that cannot be had, and then no disk faults), its
  crash journal in a runtime directory of its own;
* a timeline of faults (``plan``): ``kill`` (``kill -9``, then started again), ``term``
  (SIGTERM in the middle of whatever it was doing), ``hup`` (a changed config), ``broker``
  (stopped for a while), ``flap`` (stopped and started in quick succession), ``full`` (the card
  filled), ``readonly`` (the card fails into read-only, as ext4 does after an I/O error; the
  agent may be killed and started on the read-only card; later it is stopped, the card checked
  with e2fsck and mounted again, the agent started), ``slow`` (every byte to and from the
  broker seconds late), ``stall`` (every byte held for a while), ``cut`` (the connection
  dropped without a word),
  ``refuse`` (the broker restarted with an ACL that denies the agent's telemetry topic for a
  while, then restarted without it: MQTT 5 refusals keep the samples), ``limit`` (an outage,
  then the broker restarted with ``message_size_limit`` and/or ``max_packet_size`` a few kB
  under the backlog's batch, or under a lone sample's message, for a while),
  ``damage`` (``kill -9``, random bytes of the database, its WAL or the ids file flipped, started
  again), ``slave`` (a slave dead, slow, answering garbage or the wrong transaction id, or
  dripping bytes, for a while);
* the end: every fault undone, the backlog drained, SIGTERM; then ``IdLedger.reconcile``.

An ``Outcome`` is good when no id is unaccounted for (generated = delivered + buffered + dropped
+ lost to damage), none came twice with different content, the agent never exited by itself
(no crash loop), its log holds no traceback, and the campaign itself did not fail. Beside it,
each time the broker came back (``RETURN_KINDS``) the time until the next reading reached a
subscriber of its own (``Outcome.returns``), unless the next fault came first. The mounts need
root.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import random
import shutil
import subprocess
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from agent.store.buffer import BUFFER_FILE

from . import toml
from .aio import KitLoop
from .broker import Broker
from .faults import MountError, Reconciled, TinyFilesystem, account, damage_bytes, drained
from .link import SlowLink
from .modbus import ModbusBus, SimSlave
from .runner import AgentRunner, site_config

KINDS = (
    "kill",
    "term",
    "hup",
    "broker",
    "flap",
    "slow",
    "stall",
    "cut",
    "full",
    "readonly",
    "damage",
    "slave",
    "refuse",
    "limit",
)
#: Faults that need the card (root, a loop device).
DISK_KINDS = ("full", "readonly", "damage")
#: Faults after which the broker comes back: the time to the next reading is measured.
RETURN_KINDS = ("broker", "flap", "full", "refuse", "limit")
#: How long a subscriber waits for the first reading after the broker came back.
RETURN_TIMEOUT = 30.0
#: The loose bound the short form (tests/faults) holds that first reading to: the agent probes
#: a broker that went away every half second, and meets one that refused it with backoff up to
#: ``reconnect_max`` (2 s here); several scenarios (and, in CI, three Pythons) share the
#: machine, so the bound is loose: the tight figures are ``bench.reconnect``'s.
RETURN_WITHIN = 15.0
SLAVE_FAULTS = ("dead", "slow", "garbage", "wrong_tid", "drip", "noise")
UNITS = (1, 2, 3)

SITE = """
[agent]
id = "field"
[buffer]
flush_interval = "500ms"
max_size = "3MB"
[mqtt]
topic_prefix = "fc"
batch_interval = "100ms"
reconnect_max = "2s"
health_interval = "5s"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
timeout = "250ms"
"""
#: The agent's topics (``topic_prefix`` and ``agent.id`` above).
TOPIC_PREFIX = "fc"
AGENT_TOPIC = f"{TOPIC_PREFIX}/field"
#: A lone sample of this site is a PUBLISH of about 135 bytes; the agent's CONNECT and its
#: ``status`` are smaller. A ``max_packet_size`` between them lets the agent in and no sample out.
LONE_SAMPLE_LIMITS = (96, 128)
#: Size limits a few kB under the backlog of an outage of a few seconds (this site's three
#: devices make about 1.2 kB of telemetry a second), over ``meta`` (about 560 bytes).
BATCH_LIMITS = (1024, 4096)
DEVICE = """
[[device]]
name = "tank{unit}"
bus = "plc"
unit = {unit}
interval = "{interval}"
  [[device.point]]
  name = "level"
  address = 0
  [[device.point]]
  name = "temp"
  table = "input"
  type = "int16"
  address = 0
"""


@dataclass(frozen=True)
class Event:
    """One fault: what, when (seconds into the run), for how long, and a number of its own
    (which slave, which file, which bytes)."""

    at: float
    kind: str
    length: float
    pick: int

    def __str__(self) -> str:
        return f"{self.at:5.1f}s {self.kind} ({self.length:.1f}s, #{self.pick})"


def plan(seed: int, duration: float, kinds: Sequence[str] = KINDS, count: int = 8) -> list[Event]:
    """``count`` faults of ``kinds`` at moments drawn from ``seed`` within ``duration``."""
    rng = random.Random(seed)
    moments = sorted(rng.uniform(1.0, duration * 0.8) for _ in range(count))
    return [
        Event(
            round(at, 2),
            rng.choice(list(kinds)),
            round(rng.uniform(0.5, 5.0), 2),
            rng.randrange(10**6),
        )
        for at in moments
    ]


class Ext4Card:
    """An SD card: ext4 in an image file on a loop device, ``errors=remount-ro``. ``fail()``
    makes the kernel remount it read-only as after an I/O error (writes then fail with EROFS
    until it is unmounted); ``repair()`` unmounts, checks (``e2fsck``) and mounts it again (the
    agent must have let go of it); ``fill()``/``free()`` as a ``TinyFilesystem``."""

    def __init__(self, image: Path, path: Path, size: int = 16_000_000) -> None:
        self.image = image
        self.path = path
        self.size = size
        self._filler = TinyFilesystem(path)
        self.mounted = False

    def mount(self) -> Ext4Card:
        if not self.image.exists():
            with self.image.open("wb") as file:
                file.truncate(self.size)
            # no blocks reserved for root: "full" is full for the agent too, root as it may be
            _run("mkfs.ext4", "-q", "-F", "-m", "0", str(self.image))
        self.path.mkdir(parents=True, exist_ok=True)
        _run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.path))
        self.mounted = True
        self.path.chmod(0o700)
        return self

    def fail(self) -> None:
        device = _source(self.path).removeprefix("/dev/")
        Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("fault campaign\n")

    def repair(self) -> None:
        self.unmount()
        subprocess.run(["e2fsck", "-fy", str(self.image)], capture_output=True, check=False)
        self.mount()

    def fill(self) -> None:
        with contextlib.suppress(OSError):  # full already (the agent's own files): as asked
            self._filler.fill()

    def free(self) -> None:
        with contextlib.suppress(OSError):
            self._filler.free()

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.path)], capture_output=True, check=False)
            self.mounted = False


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MountError(f"{' '.join(command)}: {done.stderr.strip()}")


def _source(path: Path) -> str:
    done = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", str(path)], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


@dataclass(frozen=True)
class Return:
    """The broker back after ``event``: seconds until the next reading reached a subscriber
    (None: none within ``RETURN_TIMEOUT``). ``interrupted``: the next fault came first, so the
    time is not the return's alone."""

    event: Event
    seconds: float | None
    interrupted: bool

    def slower_than(self, limit: float) -> bool:
        """An uninterrupted return whose first reading took longer than ``limit`` (or never
        came)."""
        return not self.interrupted and (self.seconds is None or self.seconds > limit)

    def __str__(self) -> str:
        took = "none" if self.seconds is None else f"{self.seconds:.2f}s"
        cut = " (the next fault came first)" if self.interrupted else ""
        return f"the broker back after {self.event}: first reading {took}{cut}"


@dataclass
class Outcome:
    """What one scenario came to."""

    seed: int
    kinds: tuple[str, ...]
    events: list[Event]
    reconciled: Reconciled | None = None
    tracebacks: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # faults that could not be injected here
    errors: list[str] = field(default_factory=list)  # the campaign's own failures
    returns: list[Return] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.reconciled is not None
            and self.reconciled.ok
            and not self.tracebacks
            and not self.crashes
            and not self.errors
        )

    def __str__(self) -> str:
        lines = [f"seed {self.seed} ({', '.join(self.kinds)}): {'ok' if self.ok else 'FAILED'}"]
        lines += [f"  {e}" for e in self.events]
        lines.append(f"  {self.reconciled}")
        lines += [f"  {r}" for r in self.returns]
        lines += [f"  crash: {c}" for c in self.crashes]
        lines += [f"  traceback: {t}" for t in self.tracebacks[:3]]
        lines += [f"  the campaign failed: {e}" for e in self.errors]
        lines += [f"  not injected here: {s}" for s in self.skipped]
        return "\n".join(lines)


@dataclass
class _PendingReturn:
    """A return being timed: the event, the moment the broker listened again, and the moment
    the first reading arrived (a future of the kit's loop)."""

    event: Event
    index: int  # the event's place in the timeline
    back: float
    arrival: concurrent.futures.Future[float | None]


_subscriber_ids = itertools.count(1)
#: paho's complaints while the broker is away belong to the campaign, not to the log.
_QUIET = logging.getLogger(f"{__name__}.mqtt")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


async def first_reading(host: str, port: int, topic: str, timeout: float) -> float | None:
    """The moment (``time.monotonic()``) the first message published on ``topic`` from now on
    reached a subscriber of its own, or None after ``timeout`` seconds. A clean session, so
    nothing queued before it (a reading taken before the fault) counts."""
    try:
        return await asyncio.wait_for(_first_message(host, port, topic), timeout)
    except asyncio.TimeoutError:
        return None


async def _first_message(host: str, port: int, topic: str) -> float:
    identifier = f"edge-agent-campaign-return-{next(_subscriber_ids)}"
    while True:
        client = aiomqtt.Client(host, port, identifier=identifier, logger=_QUIET, timeout=5)
        try:
            async with client:
                await client.subscribe(topic, qos=0)
                async for _ in client.messages:
                    return time.monotonic()
        except aiomqtt.MqttError:
            pass  # the broker is away again, or not there yet: tried again soon
        finally:
            gone = getattr(client, "_disconnected", None)  # aiomqtt keeps why it went here
            if isinstance(gone, asyncio.Future) and gone.done() and not gone.cancelled():
                gone.exception()  # retrieved: no "Future exception was never retrieved"
        await asyncio.sleep(0.02)  # a refused connect fails at once: no busy loop


class Campaign:
    """One scenario in ``workdir``: ``run(seed, duration, kinds)`` → ``Outcome``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.kit = KitLoop()
        self.broker: Broker | None = None
        self.bus: ModbusBus | None = None
        self.link: SlowLink | None = None
        self.slaves: list[SimSlave] = []
        self.card: Ext4Card | None = None
        self.runner: AgentRunner | None = None
        self.intervals = dict.fromkeys(UNITS, "200ms")
        self._expected_exit = True  # the agent is not running, or we stopped it
        self._returns: list[_PendingReturn] = []
        self._injected: list[float] = []  # when each fault began (monotonic)

    def run(self, seed: int, duration: float = 30.0, kinds: Sequence[str] = KINDS) -> Outcome:
        events = plan(seed, duration, kinds)
        outcome = Outcome(seed, tuple(kinds), events)
        with self._rig(outcome):
            try:
                self._play(events, duration, outcome)
            except Exception:  # the campaign's own trouble: an outcome with its seed, not a crash
                outcome.errors.append(traceback.format_exc(limit=4).strip())
        return outcome

    def _play(self, events: list[Event], duration: float, outcome: Outcome) -> None:
        assert self.runner is not None
        self._start_agent()
        started = time.monotonic()
        for event in events:
            self._check_alive(outcome)
            pause = started + event.at - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the campaign's own clock: faults at their moments
            self._injected.append(time.monotonic())
            self._inject(event, random.Random(event.pick), outcome)
        time.sleep(max(0.0, started + duration - time.monotonic()))
        self._check_alive(outcome)
        self._settle(outcome)

    # --- the rig

    @contextlib.contextmanager
    def _rig(self, outcome: Outcome) -> Iterator[None]:
        self.kit.start()
        try:
            self.broker = Broker(self._dir("mosquitto"))
            self.broker.start()
            self.link = SlowLink(self.kit, self.broker.host, self.broker.port).start()
            self.bus = ModbusBus(self.kit, self._dir("modbus"), "tcp").start()
            site = self._dir("site") / "config.toml"
            site.write_text(self._config(), encoding="utf-8")
            slaves = self.bus.add_devices(site, "plc", {"STATE_DIRECTORY": str(self._dir("data"))})
            for unit in UNITS:
                slave = slaves[f"tank{unit}"]
                slave.set("level", 100 + unit)
                self.slaves.append(slave)
            card = Ext4Card(self.workdir / "card.img", self.workdir / "card")
            try:
                self.card = card.mount()
            except (MountError, OSError) as exc:
                self.card = None
                outcome.skipped.append(f"disk faults: {exc}")
            self.runner = AgentRunner(self.kit, self._dir("agent"), self.broker)
            if self.card is not None:
                self.runner.data_dir = self.card.path / "data"
            yield
        finally:
            if self.runner is not None:
                outcome.log = self.runner.log
                self.runner.stop()
            if self.card is not None:
                self.card.unmount()
            if self.bus is not None:
                self.bus.stop()
            if self.link is not None:
                self.link.stop()
            if self.broker is not None:
                self.broker.stop()
            self.kit.close()

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _config(self) -> str:
        devices = "".join(DEVICE.format(unit=u, interval=self.intervals[u]) for u in UNITS)
        return SITE + devices

    def _start_agent(self) -> None:
        assert self.runner is not None
        assert self.bus is not None
        runtime = self._dir("runtime")
        assert self.link is not None
        env = {"RUNTIME_DIRECTORY": str(runtime)}
        link = {"mqtt": {"url": self.link.url}}  # the agent reaches the broker over the link
        self.runner.start(self._config(), buses={"plc": self.bus}, env=env, overrides=link)
        self._expected_exit = False

    def _stop_agent(self, how: str) -> int:
        assert self.runner is not None
        self._expected_exit = True
        return self.runner.kill() if how == "kill" else self.runner.term()

    def _check_alive(self, outcome: Outcome) -> None:
        """An agent that exited by itself crashed: said, and started again (as systemd would)."""
        assert self.runner is not None
        process = self.runner.process
        if self._expected_exit or process is None or process.poll() is None:
            return
        outcome.crashes.append(f"the agent exited by itself with {process.poll()}")
        self._expected_exit = True
        process.wait()
        self._start_agent()

    # --- the faults

    def _inject(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        if event.kind in DISK_KINDS and self.card is None:
            return
        getattr(self, f"_{event.kind}")(event, rng, outcome)

    def _kill(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        self._stop_agent("kill")
        time.sleep(min(event.length, 1.0))
        self._start_agent()

    def _term(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        code = self._stop_agent("term")
        if code != 0:
            outcome.crashes.append(f"SIGTERM ended the agent with {code}")
        self._start_agent()

    def _hup(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        assert self.runner is not None
        assert self.link is not None
        assert self.bus is not None
        unit = rng.choice(UNITS)
        self.intervals[unit] = "300ms" if self.intervals[unit] == "200ms" else "200ms"
        changed = site_config(
            self._config(),
            buses={"plc": self.bus},
            mqtt_url=self.link.url,
            data_dir=self.runner.data_dir,
        )
        self.runner.config_path.write_text(toml.dumps(changed))
        self.runner.hup()

    def _broker(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        assert self.broker is not None
        self.broker.stop()
        time.sleep(event.length)
        self._broker_back(event)

    def _flap(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        assert self.broker is not None
        for flap in range(3):
            self.broker.stop()
            time.sleep(rng.uniform(0.1, 0.6))
            if flap < 2:
                self.broker.start()
            else:
                self._broker_back(event)  # the last return is the one timed
            time.sleep(rng.uniform(0.1, 0.6))

    def _refuse(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        """The broker's access rules deny the agent's telemetry for a while (an operator's
        mistake, mended by another restart): at MQTT 5 each refused publish is a PUBACK reason
        code, and its samples stay in the buffer."""
        assert self.broker is not None
        # the agent's own telemetry (its client id is its agent id), not its subscriber's reading
        self.broker.deny_patterns = [f"{TOPIC_PREFIX}/%c/telemetry"]
        self.broker.restart()
        time.sleep(1.5 + event.length)  # long enough to reconnect and be refused
        self.broker.deny_patterns = []
        self.broker.stop()
        self._broker_back(event)

    def _limit(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        """A backlog builds in an outage, and the broker comes back with size limits under its
        batch (the agent splits it: Maximum Packet Size from CONNACK, or a limit learnt from the
        link mosquitto drops at a message above ``message_size_limit``), or under a lone sample
        (which can never be sent: dropped, counted). Then the limits are lifted."""
        assert self.broker is not None
        self.broker.stop()
        time.sleep(2.0 + event.length)  # a backlog of a few kB
        self.broker.settings = size_limits(rng)
        self.broker.start()
        time.sleep(1.0 + event.length)
        self.broker.settings = {}
        self.broker.stop()
        self._broker_back(event)

    def _broker_back(self, event: Event) -> None:
        """Start the broker and time the first reading that reaches a subscriber after it."""
        assert self.broker is not None
        self.broker.start()  # returns once it listens
        back = time.monotonic()
        reading = first_reading(
            self.broker.host, self.broker.port, f"{AGENT_TOPIC}/telemetry", RETURN_TIMEOUT
        )
        arrival = asyncio.run_coroutine_threadsafe(reading, self.kit.loop)
        self._returns.append(_PendingReturn(event, len(self._injected) - 1, back, arrival))

    def _slow(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        assert self.link is not None
        self.link.delay = rng.uniform(0.2, 2.0)  # a cellular round trip on a bad day
        time.sleep(event.length)
        self.link.delay = 0.0

    def _stall(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        assert self.link is not None
        self.link.stalled = True  # every byte held: acknowledgements time out past 10 s
        time.sleep(event.length * 3)
        self.link.stalled = False

    def _cut(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        assert self.link is not None
        self.link.cut()

    def _full(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        assert self.card is not None
        assert self.broker is not None
        self.card.fill()
        outage = rng.random() < 0.5  # a full card matters when samples must go to it
        if outage:
            self.broker.stop()
        time.sleep(event.length)
        if outage:
            self._broker_back(event)
        self.card.free()

    def _readonly(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        assert self.card is not None
        self.card.fail()
        time.sleep(event.length)  # live samples go on
        self._check_alive(outcome)
        if rng.random() < 0.5:  # a crash while the card is read-only: ids come from the clock
            self._stop_agent("kill")
            self._start_agent()
            time.sleep(event.length)
            self._check_alive(outcome)
        self._stop_agent("term")  # a technician's reboot: stop, check the card, start
        self.card.repair()
        self._start_agent()

    def _damage(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        assert self.runner is not None
        self._stop_agent("kill" if rng.random() < 0.7 else "term")
        target = rng.choice([BUFFER_FILE, f"{BUFFER_FILE}-wal", "buffer.ids"])
        damage_bytes(self.runner.data_dir / target, rng, count=rng.choice([1, 1, 2, 3]))
        self._start_agent()

    def _slave(self, event: Event, rng: random.Random, outcome: Outcome) -> None:
        slave = rng.choice(self.slaves)
        fault = rng.choice(SLAVE_FAULTS)
        slave.random = random.Random(event.pick)
        _set_fault(slave, fault, True)
        time.sleep(event.length)
        _set_fault(slave, fault, False)

    # --- the end

    def _settle(self, outcome: Outcome) -> None:
        """Undo every fault, let the backlog drain, stop the agent, and account for every id."""
        assert self.runner is not None
        assert self.broker is not None
        for slave in self.slaves:
            for fault in SLAVE_FAULTS:
                _set_fault(slave, fault, False)
        if self.card is not None:
            self.card.free()
        if self.link is not None:
            self.link.delay, self.link.stalled = 0.0, False
        self._check_alive(outcome)
        drained(self.runner, timeout=60)
        outcome.returns = self._timed_returns()
        code = self._stop_agent("term")
        if code != 0:
            outcome.crashes.append(f"SIGTERM ended the agent with {code}")
        outcome.reconciled = account(self.runner)
        outcome.tracebacks = tracebacks(self.runner.log)

    def _timed_returns(self) -> list[Return]:
        """Each return's time to its first reading; interrupted when the next fault began
        before that reading arrived."""
        returns = []
        for pending in self._returns:
            arrival = pending.arrival.result(RETURN_TIMEOUT + 5)  # bounded by first_reading
            following = self._injected[pending.index + 1 : pending.index + 2]
            interrupted = bool(following) and (arrival is None or arrival > following[0])
            seconds = None if arrival is None else arrival - pending.back
            returns.append(Return(pending.event, seconds, interrupted))
        return returns


def tracebacks(log: str) -> list[str]:
    """Each ``Traceback`` line of the agent's log, told by the line before it (what logged it)
    and the line that ends it (the exception): a bare "Traceback" says nothing to replay by."""
    lines = log.splitlines()
    found = []
    for at, line in enumerate(lines):
        if "Traceback" not in line:
            continue
        said = next((t for t in reversed(lines[:at]) if t[:1].strip()), "")
        ended = next((t for t in lines[at + 1 :] if t[:1].strip()), "")
        found.append(f"{said[:200]} … {ended[:200]}")
    return found


def size_limits(rng: random.Random) -> dict[str, object]:
    """Mosquitto settings for ``limit``: one time in four a ``max_packet_size`` under a lone
    sample's message, else ``message_size_limit``, ``max_packet_size`` or both a few kB under
    the backlog's batch."""
    if rng.random() < 0.25:
        return {"max_packet_size": rng.randint(*LONE_SAMPLE_LIMITS)}
    limit = rng.randint(*BATCH_LIMITS)
    keys = rng.choice(
        [("message_size_limit",), ("max_packet_size",), ("message_size_limit", "max_packet_size")]
    )
    return dict.fromkeys(keys, limit)


def _set_fault(slave: SimSlave, fault: str, on: bool) -> None:
    if fault == "dead":
        slave.dead = on
    elif fault == "slow":
        slave.slow_ms = 400 if on else 0
    elif fault == "drip":
        slave.drip_ms = 40 if on else 0
    else:
        setattr(slave, fault, on)


def run_campaign(
    workdir: Path, seeds: Sequence[int], duration: float, kinds: Sequence[str] = KINDS
) -> list[Outcome]:
    """Each seed in a directory of its own under ``workdir``."""
    outcomes = []
    for seed in seeds:
        directory = workdir / f"seed-{seed}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        outcomes.append(Campaign(directory).run(seed, duration, kinds))
    return outcomes
