"""The scheduler: wall-aligned polls, one transaction per bus, failures logged on transition."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar

import pytest

from agent.aio import cancel_and_wait
from agent.clock import Clock
from agent.config import BusConfig, DeviceConfig, PointConfig
from agent.errors import BusError, DeviceError
from agent.model import Poll, Value
from agent.poll.scheduler import BusPoller, next_slot
from agent.testkit import run, until

BUS = BusConfig("plc", "modbus-tcp", host="127.0.0.1")


def device(name: str, interval: float) -> DeviceConfig:
    return DeviceConfig(name, "plc", "fake", interval, points=(PointConfig("v"),))


class FakeDriver:
    """Records reads and overlapping transactions; fails the devices listed in ``failing``."""

    failing: ClassVar[dict[str, int]] = {}
    delay: ClassVar[dict[str, float]] = {}
    crash_once: ClassVar[bool] = False
    active: ClassVar[int] = 0
    overlaps: ClassVar[int] = 0
    most: ClassVar[int] = 0  # reads under way at once, at most
    reads: ClassVar[list[str]] = []

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        return []

    def __init__(self, bus: BusConfig, context: object = None) -> None:
        self.bus = bus

    async def __aenter__(self) -> FakeDriver:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def read(self, device: DeviceConfig) -> Poll:
        cls = FakeDriver  # the counts are the fixture's, whatever the subclass
        cls.active += 1
        cls.overlaps += cls.active > 1
        cls.most = max(cls.most, cls.active)
        try:
            await asyncio.sleep(cls.delay.get(device.name, 0.005))  # time on the wire
            cls.reads.append(device.name)
            if cls.crash_once:
                cls.crash_once = False
                raise RuntimeError("a bug in the driver")
            if cls.failing.get(device.name, 0) > 0:
                cls.failing[device.name] -= 1
                raise DeviceError("unit 1: no response")
            return Poll({"v": len(cls.reads)})
        finally:
            cls.active -= 1


@pytest.fixture(autouse=True)
def fresh_fake() -> None:
    FakeDriver.failing, FakeDriver.active, FakeDriver.overlaps, FakeDriver.reads = {}, 0, 0, []
    FakeDriver.most = 0
    FakeDriver.delay = {}
    FakeDriver.crash_once = False


@dataclass(frozen=True)
class ShiftedClock(Clock):
    """Real monotonic time; wall time moved so that tests can place slots."""

    shift: float = 0.0

    def wall(self) -> float:
        return super().wall() + self.shift


class Collector:
    """The scheduler's sink: records samples and signals when ``count`` have arrived."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.samples: list[tuple[str, int]] = []
        self.enough = asyncio.Event()

    def __call__(self, name: str, ts: int, mono: float, values: Mapping[str, Value]) -> None:
        self.samples.append((name, ts))
        if len(self.samples) >= self.count:
            self.enough.set()


async def poll_until_enough(poller: BusPoller, collector: Collector) -> None:
    task = asyncio.create_task(poller.run())
    try:
        await collector.enough.wait()
    finally:
        await cancel_and_wait(task)


def test_next_slot_is_aligned_to_the_wall_clock() -> None:
    assert next_slot(1_764_316_803.2, 10) == 1_764_316_810
    assert next_slot(1_764_316_810.0, 10) == 1_764_316_820  # strictly after
    assert next_slot(59.9, 0.25) == 60.0


def test_poll_times_fall_on_interval_multiples() -> None:
    sink = Collector(3)
    poller = BusPoller(BUS, [device("a", 0.1)], FakeDriver, sink, ShiftedClock(0.0))
    run(poll_until_enough(poller, sink), timeout=10)
    # ts is taken when the poll starts; the loop wakes at the slot, a few ms late at most
    assert all(ts % 100 < 60 for _, ts in sink.samples), sink.samples


def test_one_transaction_at_a_time_per_bus() -> None:
    sink = Collector(12)
    devices = [device("a", 0.05), device("b", 0.05), device("c", 0.05)]
    poller = BusPoller(BUS, devices, FakeDriver, sink)
    run(poll_until_enough(poller, sink), timeout=10)
    assert FakeDriver.overlaps == 0
    assert {name for name, _ in sink.samples} == {"a", "b", "c"}


class ThreeAtOnce(FakeDriver):
    polls_at_once = 3


def test_a_driver_that_takes_polls_at_once_gets_the_devices_due_together() -> None:
    """Five devices due in the same slots, polls of three at once: three together, then two;
    each device still once per slot, on its slot."""
    sink = Collector(25)
    devices = [device(name, 0.1) for name in "abcde"]
    poller = BusPoller(BUS, devices, ThreeAtOnce, sink)
    run(poll_until_enough(poller, sink), timeout=10)
    assert FakeDriver.most == 3
    for name in "abcde":
        slots = [ts // 100 for n, ts in sink.samples if n == name]
        assert len(slots) >= 4, (name, sink.samples)
        assert len(set(slots)) == len(slots), (name, slots)  # never twice in a slot
    assert all(ts % 100 < 60 for _, ts in sink.samples), sink.samples


def test_devices_due_at_other_times_are_not_polled_together() -> None:
    """A device every 50 ms and one every 70 ms meet only on common slots: polls at once
    are for devices that are due, never a poll ahead of its slot."""
    sink = Collector(20)
    poller = BusPoller(BUS, [device("a", 0.05), device("b", 0.07)], ThreeAtOnce, sink)
    run(poll_until_enough(poller, sink), timeout=10)
    for name, interval_ms in (("a", 50), ("b", 70)):
        late = [ts % interval_ms for n, ts in sink.samples if n == name]
        assert all(ms < 30 for ms in late), (name, late)


class BusLostWhileOthersRead(ThreeAtOnce):
    """The first poll of ``lost`` loses the bus while the others are under way."""

    lost_once: ClassVar[bool] = True
    entered: ClassVar[int] = 0
    finished: ClassVar[list[tuple[str, int]]] = []  # reads that ended: device, connection

    async def __aenter__(self) -> FakeDriver:
        type(self).entered += 1
        return self

    async def read(self, device: DeviceConfig) -> Poll:
        if device.name == "lost" and type(self).lost_once:
            type(self).lost_once = False
            raise BusError("bus plc: lost: the connection was reset")
        if device.name != "lost":
            await asyncio.sleep(0.05)  # still under way when the bus goes
        poll = await super().read(device)
        type(self).finished.append((device.name, type(self).entered))
        return poll


def test_a_bus_lost_during_polls_at_once_stops_them_and_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other polls are cancelled (not left reading a dead connection), the bus is
    entered again, every device reads after it; no asyncio line about a task never seen."""
    caplog.set_level(logging.INFO)
    BusLostWhileOthersRead.lost_once, BusLostWhileOthersRead.entered = True, 0
    BusLostWhileOthersRead.finished = []
    sink = Collector(9)
    devices = [device("a", 0.1), device("lost", 0.1), device("b", 0.1)]
    poller = BusPoller(BUS, devices, BusLostWhileOthersRead, sink)
    run(poll_until_enough(poller, sink), timeout=10)
    assert BusLostWhileOthersRead.entered == 2
    assert {name for name, _ in sink.samples} == {"a", "b", "lost"}
    assert {connection for _, connection in BusLostWhileOthersRead.finished} == {2}
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.records


def test_failure_is_logged_once_on_the_transition_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.poll.scheduler")
    FakeDriver.failing = {"a": 4}
    sink = Collector(2)
    poller = BusPoller(BUS, [device("a", 0.02)], FakeDriver, sink)
    run(poll_until_enough(poller, sink), timeout=10)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("device a: unit 1: no response") == 1
    assert messages.count("device a: answering again") == 1
    health = poller.health["a"]
    assert health.errors == 4
    assert health.ok >= 2
    assert not health.failing
    assert health.last_error == "unit 1: no response"


def test_a_dead_device_backs_off_and_the_live_ones_keep_their_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.poll.scheduler")
    FakeDriver.failing = {"dead": 10**6}
    FakeDriver.delay["dead"] = 0.04  # each attempt waits out a timeout on the bus
    sink = Collector(count=50)  # only the live devices give samples
    live = [device("a", 0.05), device("b", 0.05)]
    poller = BusPoller(BUS, [*live, device("dead", 0.05)], FakeDriver, sink)
    run(poll_until_enough(poller, sink), timeout=10)
    attempts = FakeDriver.reads.count("dead")
    # ~25 slots passed; after 3 failures the dead device waits 0.1, 0.2, 0.4, 0.8 s between tries
    assert 3 <= attempts <= 8, attempts
    for name in ("a", "b"):
        polled = sum(1 for n, _ in sink.samples if n == name)
        assert polled >= 20, (name, polled)
        assert poller.health[name].overruns <= 8  # a few slots lost to the dead one's timeouts
    health = poller.health["dead"]
    assert health.consecutive_failures == attempts
    assert health.backoff > 0.05
    backoff_logs = [r for r in caplog.records if "retrying with backoff" in r.getMessage()]
    assert len(backoff_logs) == 1


def test_polls_that_cannot_start_in_time_are_counted_as_overruns() -> None:
    FakeDriver.delay["slow"] = 0.12  # longer than its own interval
    sink = Collector(4)
    poller = BusPoller(BUS, [device("slow", 0.05)], FakeDriver, sink)
    run(poll_until_enough(poller, sink), timeout=10)
    assert poller.health["slow"].overruns >= 4


def test_a_driver_bug_is_logged_and_polling_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    FakeDriver.crash_once = True
    sink = Collector(3)
    poller = BusPoller(BUS, [device("a", 0.02)], FakeDriver, sink)
    run(poll_until_enough(poller, sink), timeout=10)
    crashes = [r for r in caplog.records if "restarting its polling" in r.getMessage()]
    assert len(crashes) == 1
    assert crashes[0].exc_info is not None


class BuggyDriver(FakeDriver):
    """Reads of ``bad`` raise what is neither a BusError nor a DeviceError: a driver's bug."""

    async def read(self, device: DeviceConfig) -> Poll:
        if device.name == "bad":
            raise KeyError("a bug")
        return await super().read(device)


def test_a_device_its_driver_fails_on_unexpectedly_is_failing_and_unreachable() -> None:
    """The bus's polling restarts; the device it failed on read nothing: failing in
    ``status``, unreachable for a Sparkplug host (DDEATH), never "ok". The other device on
    the bus, which reads, is not blamed."""

    async def scenario() -> None:
        devices = [device("good", 0.05), device("bad", 0.05)]
        poller = BusPoller(BUS, devices, BuggyDriver, lambda *a: None)
        task = asyncio.create_task(poller.run())
        try:
            await until(lambda: poller.health["bad"].failing, 10, "the device failing")
            await until(lambda: poller.health["good"].ok >= 2, 10, "the other one read")
        finally:
            await cancel_and_wait(task)
        bad, good = poller.health["bad"], poller.health["good"]
        assert (bad.state, bad.unreachable) == ("failing", True)
        assert "a bug" in bad.last_error
        assert (good.state, good.unreachable, good.errors) == ("ok", False, 0)

    run(scenario())


def test_a_device_dead_for_days_backs_off_without_overflowing() -> None:
    poller = BusPoller(BUS, [device("pump", 1.0)], FakeDriver, lambda *a: None)
    poller.health["pump"].consecutive_failures = 5000  # days of a dead device
    poller._back_off(device("pump", 1.0))  # noqa: SLF001 - the arithmetic alone
    assert poller.health["pump"].backoff == 300.0


@pytest.mark.parametrize(
    ("poll", "unreachable"),
    [(Poll({}, errors=("e",)), True), (Poll({"v": 1}, errors=("e",)), False)],
)
def test_a_poll_that_reads_nothing_is_unreachable_and_one_that_reads_some_is_not(
    poll: Poll, unreachable: bool
) -> None:
    """Both are failing (``status``); only the one that read nothing is unreachable (a
    Sparkplug DDEATH): the other still sends what it read."""

    class Once(FakeDriver):
        async def read(self, device: DeviceConfig) -> Poll:
            if type(self).reads:
                await asyncio.Event().wait()  # one poll only: the state it left is looked at
            type(self).reads.append(device.name)
            return poll

    async def scenario() -> None:
        poller = BusPoller(BUS, [device("pump", 0.05)], Once, lambda *a: None)
        task = asyncio.create_task(poller.run())
        try:
            await until(lambda: poller.health["pump"].failing, 10, "the poll with errors")
        finally:
            await cancel_and_wait(task)
        assert poller.health["pump"].unreachable is unreachable

    run(scenario())
