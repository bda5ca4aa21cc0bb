"""Polling: one owner task per bus, devices polled on their interval, one transaction at a time
(or, for a driver that takes them, the polls of the devices due together at once).

Polls are aligned to the wall clock (a 10 s device reads at :00, :10, …) but waited for on the
monotonic clock, so a clock step does not stall or burst the schedule. A poll that comes due while
the bus is busy waits its turn; one whose slot passed entirely is skipped and counted as an overrun.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import registry
from ..api import Driver, DriverContext, KeepsRaw, PollsAtOnce, Writes
from ..backoff import Backoff
from ..clock import Clock
from ..config import BusConfig, DeviceConfig, PointConfig
from ..errors import BusError, DeviceError
from ..model import Poll, Value

log = logging.getLogger(__name__)

#: Receives each poll's values: device name, wall-clock time (ms) and monotonic time (s) when
#: the poll started, values.
Sink = Callable[[str, int, float, Mapping[str, Value]], None]


@dataclass
class DeviceHealth:
    """What the scheduler knows of one device, for logs, ``health`` and ``status``."""

    @property
    def state(self) -> str:
        """``failing`` (its last poll read nothing, or some of it failed), ``degraded`` (it
        lacks some points: the rest are read), or ``ok``."""
        if self.failing:
            return "failing"
        return "degraded" if self.missing else "ok"

    ok: int = 0
    errors: int = 0
    overruns: int = 0
    last_error: str = ""
    failing: bool = False
    #: Failing wholly: its last poll read nothing (not only some points failed). A Sparkplug
    #: node says so of the device with DDEATH.
    unreachable: bool = False
    #: Points the device does not have (it refuses them as such), as its last poll said.
    missing: tuple[str, ...] = ()
    #: Polls in a row that read nothing; from BACKOFF_AFTER on the device is polled less often.
    consecutive_failures: int = 0
    #: While backing off: seconds between attempts, and the monotonic time of the next one.
    backoff: float = 0.0
    retry_at: float = 0.0
    #: Wall-clock time (ms) of the last poll that read something.
    last_good: int | None = None
    #: Each point's latest value read (what a command's log calls the old value).
    last_values: dict[str, Value] = field(default_factory=dict)


#: Failed polls in a row before a device is retried with growing backoff instead of every slot.
BACKOFF_AFTER = 3
#: The longest wait between attempts at a device that does not answer.
MAX_DEVICE_BACKOFF = 300.0
#: A driver call lasting this long (plus twice the longest interval) means a wedged poll loop.
WEDGED_AFTER = 300.0
#: Seconds: devices due within this of each other are due together (their slots, computed at
#: different moments, differ by microseconds), polled at once where the driver takes that.
TOGETHER = 0.001


@dataclass(eq=False)  # one write is not another with the same fields: compared by identity
class _Write:
    """A write waiting for its turn on the bus; ``result`` is the poll read back after it.
    Without a ``point``: a read asked for now (a remote ``diag/read``), with its raw values."""

    device: DeviceConfig
    point: PointConfig | None
    value: Value | None
    result: asyncio.Future[Poll]
    #: Called just before the write is sent (its caller records that it is under way).
    on_start: Callable[[], None] | None = None
    started: bool = False

    def succeeded(self, poll: Poll) -> None:
        if not self.result.done():
            self.result.set_result(poll)

    def failed(self, exc: BaseException) -> None:
        if not self.result.done():
            self.result.set_exception(exc)


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def next_slot(wall: float, interval: float) -> float:
    """The first wall-clock multiple of ``interval`` strictly after ``wall``."""
    return (math.floor(wall / interval) + 1) * interval


class BusPoller:
    """Owns one bus: connects its driver, polls each device when due, reconnects with backoff."""

    def __init__(
        self,
        bus: BusConfig,
        devices: Sequence[DeviceConfig],
        driver: type[Driver],
        sink: Sink,
        clock: Clock | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.bus = bus
        self.state_dir = state_dir
        self.devices = list(devices)
        self.driver = driver
        self.sink = sink
        self.clock = clock or Clock()
        self.health = {d.name: DeviceHealth() for d in devices}
        self.connected = False
        self.driver_instance: Driver | None = None
        #: Monotonic time the driver call under way (connecting or polling) began; None
        #: between calls. The watchdog judges a poll loop wedged by it.
        self.busy_since: float | None = None
        self._calls = 0  # driver calls under way (several: polls at once)
        self.wedged_after = WEDGED_AFTER
        self._writes: collections.deque[_Write] = collections.deque()
        #: What the poll loop awaits between polls; a queued write resolves it early.
        self._wakeup: asyncio.Future[bool] | None = None

    @property
    def owner(self) -> tuple[str, str]:
        """What this loop polls, as reload matches old and new: a bus, or a device on none."""
        return ("device" if self.bus.type == "local" else "bus", self.bus.name)

    def same_work(self, other: BusPoller) -> bool:
        """Whether ``other`` would poll exactly what this one does, the same way."""
        return (self.bus, self.devices, self.driver) == (other.bus, other.devices, other.driver)

    @property
    def stuck_after(self) -> float:
        """How long one driver call may last before the poll loop counts as wedged: well past
        any timeout, and past the longest interval (an SDI-12 measurement may hold the bus for
        minutes, as long as its device's interval allows)."""
        return self.wedged_after + 2 * max((d.interval for d in self.devices), default=0.0)

    def stuck_for(self) -> float:
        """Seconds the current driver call has lasted beyond ``stuck_after``; 0 when none has."""
        if self.busy_since is None:
            return 0.0
        return max(0.0, self.clock.monotonic() - self.busy_since - self.stuck_after)

    @contextlib.contextmanager
    def _calling(self) -> Iterator[None]:
        if not self._calls:
            self.busy_since = self.clock.monotonic()
        self._calls += 1
        try:
            yield
        finally:
            self._calls -= 1
            if not self._calls:
                self.busy_since = None

    async def run(self) -> None:
        """Poll until cancelled; writes queued and not made then are failed."""
        try:
            await self._run()
        finally:
            while self._writes:
                self._writes.popleft().failed(
                    DeviceError(f"bus {self.bus.name}: stopped before the write was made")
                )

    async def _run(self) -> None:
        backoff = Backoff(initial=0.5, maximum=30.0)
        # One driver for the poller's life, re-entered to reconnect: what it learned about the
        # devices (refused merged reads, counters) survives a lost connection.
        context = DriverContext(tuple(self.devices), self.state_dir, self.clock)
        driver = self.driver_instance = registry.build_driver(self.driver, self.bus, context)
        while True:
            try:
                async with contextlib.AsyncExitStack() as connection:
                    with self._calling():
                        await connection.enter_async_context(driver)
                    self._set_connected(True, "")
                    backoff.reset()
                    await self._poll(driver)
            except BusError as exc:
                self._set_connected(False, str(exc))
                for name in self.health:
                    self._failed(name, str(exc))
                await asyncio.sleep(backoff.next_delay())
            except Exception:  # a bug in a driver must not stop the other buses, nor crash-loop
                log.exception("bus %s: unexpected error; restarting its polling", self.bus.name)
                self.connected = False
                await asyncio.sleep(backoff.next_delay())

    async def _poll(self, driver: Driver) -> None:
        at_once = driver.polls_at_once if isinstance(driver, PollsAtOnce) else 1
        due: list[tuple[float, int, DeviceConfig]] = []
        for order, device in enumerate(self.devices):
            heapq.heappush(due, (self._next_due(device), order, device))
        while True:
            batch = self._due_together(due, at_once)
            when = batch[-1][0]  # the latest of them: none is polled before its slot
            # Writes go ahead of polls: each waits only for the transactions under way.
            await self._run_writes(driver)
            while await self._sleep_until(when):
                await self._run_writes(driver)
            if len(batch) == 1:
                await self._poll_device(driver, batch[0][2])
            else:
                await self._poll_together(driver, [device for _, _, device in batch])
            for slot, order, device in batch:
                heapq.heappush(due, (self._next_due(device, after=slot), order, device))

    def _due_together(
        self, due: list[tuple[float, int, DeviceConfig]], at_once: int
    ) -> list[tuple[float, int, DeviceConfig]]:
        """The next device due, and up to ``at_once`` - 1 more due by then (or already)."""
        batch = [heapq.heappop(due)]
        until = max(batch[0][0], self.clock.monotonic()) + TOGETHER
        while due and len(batch) < at_once and due[0][0] <= until:
            batch.append(heapq.heappop(due))
        return batch

    async def _poll_together(self, driver: Driver, devices: list[DeviceConfig]) -> None:
        """Poll ``devices`` at once; the first error that is not a device's (a lost bus, a
        driver's bug) stops the others and is raised, as one poll's would be."""
        polls = [asyncio.ensure_future(self._poll_device(driver, device)) for device in devices]
        try:
            await asyncio.wait(polls, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for poll in polls:
                poll.cancel()  # those still under way: after an error, or when we are cancelled
            await asyncio.wait(polls)
        # Each one's exception taken, so that asyncio does not log the others' as never seen.
        errors = [e for poll in polls if not poll.cancelled() and (e := poll.exception())]
        if errors:
            raise errors[0]

    # --- writes

    async def write(
        self,
        device: DeviceConfig,
        point: PointConfig,
        value: Value,
        timeout: float,
        on_start: Callable[[], None] | None = None,
    ) -> Poll:
        """Write ``value`` to ``point`` between two transactions, ahead of the polls waiting,
        and read the device back: the poll that followed the write. ``on_start`` is called just
        before the write is sent: from then on it may have been made.

        ``DeviceError`` when the bus is down, the driver cannot write, the device refused or did
        not answer; ``ValueError`` when the value cannot be written to that point; ``TimeoutError``
        when the write could not start within ``timeout`` (it is then never made). Cancelled
        while it waits for its turn, the write is withdrawn and never made; cancelled once
        under way, it ends within the driver's own timeouts.
        """
        if not self.connected:
            raise DeviceError(f"bus {self.bus.name} is not connected: the write was not made")
        job = _Write(device, point, value, asyncio.get_running_loop().create_future(), on_start)
        return await self._queued(job, timeout)

    async def read_now(self, device: DeviceConfig, timeout: float) -> Poll:
        """One poll of ``device`` between two transactions, ahead of the polls waiting, with
        the raw registers behind each value (where the driver keeps them). Raises as ``write``
        does; the poll is not stored as a sample."""
        if not self.connected:
            raise DeviceError(f"bus {self.bus.name} is not connected: nothing was read")
        job = _Write(device, None, None, asyncio.get_running_loop().create_future())
        return await self._queued(job, timeout)

    async def _queued(self, job: _Write, timeout: float) -> Poll:
        self._writes.append(job)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(True)
        try:
            return await self._outcome(job, timeout)
        except asyncio.CancelledError:
            self._withdraw(job)  # a caller gone (the agent stops) must not have it made later
            raise

    async def _outcome(self, job: _Write, timeout: float) -> Poll:
        # Shielded: the caller's timeout or cancellation must not cancel the future the poll
        # loop is to settle.
        try:
            return await asyncio.wait_for(asyncio.shield(job.result), timeout)
        except asyncio.TimeoutError:
            if job.started:  # under way: it ends within the driver's own timeouts
                return await asyncio.shield(job.result)
            self._withdraw(job)
            raise TimeoutError(
                f"bus {self.bus.name} stayed busy for {timeout:g}s: the write was not made"
            ) from None

    def _withdraw(self, job: _Write) -> None:
        """Take a write that has not started off the queue: it is never made."""
        if not job.started and job in self._writes:
            self._writes.remove(job)

    async def _sleep_until(self, when: float) -> bool:
        """Until monotonic ``when`` (False), or until a write is queued (True): a sleep that
        writes can cut short, with no task per poll (``asyncio.wait_for`` would make one)."""
        if self._writes:
            return True
        delay = when - self.clock.monotonic()
        if delay <= 0:
            return False
        loop = asyncio.get_running_loop()
        wakeup: asyncio.Future[bool] = loop.create_future()
        self._wakeup = wakeup
        timer = loop.call_later(delay, _resolve, wakeup, False)
        try:
            return await wakeup
        finally:
            timer.cancel()
            self._wakeup = None

    async def _run_writes(self, driver: Driver) -> None:
        while self._writes:
            job = self._writes.popleft()
            job.started = True
            if not self._announce(job):
                continue
            try:
                job.succeeded(await self._write_and_read(driver, job))
            except (DeviceError, ValueError) as exc:
                job.failed(exc)
            except BusError as exc:
                job.failed(DeviceError(str(exc)))
                raise
            except asyncio.CancelledError:  # the loop stops (agent stop, reload) mid-write
                job.failed(
                    DeviceError(
                        f"bus {self.bus.name}: stopped during the write, which may or "
                        "may not have been made"
                    )
                )
                raise
            except Exception as exc:  # a driver's bug: the command fails, the bus restarts
                job.failed(DeviceError(f"the driver failed: {exc!r}"))
                raise

    @staticmethod
    def _announce(job: _Write) -> bool:
        """Tell the caller its write goes out now; False (the write failed with the error, not
        made) when that fails: the caller's bug, not the bus's."""
        if job.on_start is None:
            return True
        try:
            job.on_start()
        except Exception as exc:
            job.failed(exc)
            return False
        return True

    async def _write_and_read(self, driver: Driver, job: _Write) -> Poll:
        if job.point is None or job.value is None:
            return await self._read_raw(driver, job.device)
        if not isinstance(driver, Writes):
            raise DeviceError(f"device {job.device.name}: its driver cannot write")
        with self._calling():
            await driver.write(job.device, job.point, job.value)
            return await driver.read(job.device)

    async def _read_raw(self, driver: Driver, device: DeviceConfig) -> Poll:
        with self._calling():
            if not isinstance(driver, KeepsRaw):
                return await driver.read(device)
            driver.keep_raw = True
            try:
                return await driver.read(device)
            finally:
                driver.keep_raw = False

    def _next_due(self, device: DeviceConfig, after: float | None = None) -> float:
        """Monotonic time of the device's next wall-aligned slot (after its backoff, if any).

        Slots that passed while the bus was busy since ``after`` (when the previous poll was
        due) are counted as overruns: they are skipped, never queued up behind each other.
        """
        health = self.health[device.name]
        now_mono, now_wall = self.clock.monotonic(), self.clock.wall()
        if after is not None:
            self._count_overruns(device, int((now_mono - after) / device.interval))
        earliest = now_wall + max(0.0, health.retry_at - now_mono)
        return now_mono + (next_slot(earliest, device.interval) - now_wall)

    def _count_overruns(self, device: DeviceConfig, missed: int) -> None:
        health = self.health[device.name]
        if missed <= 0:
            return
        if not health.overruns:
            log.warning(
                "device %s: a poll could not start before the next was due (the bus is busier "
                "than the intervals allow: lengthen them, or check for slow devices); "
                "counting overruns in health",
                device.name,
            )
        health.overruns += missed

    async def _poll_device(self, driver: Driver, device: DeviceConfig) -> None:
        ts, mono = self.clock.wall_ms(), self.clock.monotonic()
        try:
            with self._calling():
                poll = await driver.read(device)
        except DeviceError as exc:
            self._failed(device.name, str(exc))
            self._back_off(device)
            return
        except BusError:
            raise  # the bus's: its loop says so of every device
        except Exception as exc:  # a driver's bug: this device read nothing; the bus restarts
            self._failed(device.name, f"the driver failed: {exc!r}")
            raise
        health = self.health[device.name]
        health.consecutive_failures, health.retry_at, health.backoff = 0, 0.0, 0.0
        health.missing = poll.missing
        if poll.errors:
            self._failed(device.name, "; ".join(poll.errors), read_some=bool(poll.values))
        else:
            self._recovered(device.name)
        if poll.values:
            health.ok += 1
            health.last_good = ts
            health.last_values.update(poll.values)
            self.sink(device.name, ts, mono, poll.values)

    def _back_off(self, device: DeviceConfig) -> None:
        """After BACKOFF_AFTER failures in a row, wait longer and longer before trying again,
        so a dead device cannot eat the bus time of the live ones."""
        health = self.health[device.name]
        health.consecutive_failures += 1
        beyond = health.consecutive_failures - BACKOFF_AFTER
        if beyond < 0:
            return
        # the exponent bounded: a device dead for days must not overflow the float
        health.backoff = min(MAX_DEVICE_BACKOFF, device.interval * 2 ** min(beyond + 1, 64))
        health.retry_at = self.clock.monotonic() + health.backoff
        if beyond == 0:
            log.warning(
                "device %s: %d polls in a row failed; retrying with backoff (up to every %.0fs) "
                "until it answers",
                device.name,
                health.consecutive_failures,
                MAX_DEVICE_BACKOFF,
            )

    def _failed(self, name: str, error: str, read_some: bool = False) -> None:
        health = self.health[name]
        health.unreachable = not read_some
        health.errors += 1
        health.last_error = error
        if not health.failing:
            health.failing = True
            # drivers' errors mostly name the device already: said once in the log line
            log.warning("device %s: %s", name, error.removeprefix(f"device {name}: "))

    def _recovered(self, name: str) -> None:
        health = self.health[name]
        health.unreachable = False
        if health.failing:
            health.failing = False
            log.info("device %s: answering again", name)

    def _set_connected(self, connected: bool, error: str) -> None:
        # A device on no bus has no connection worth a line: its failures are its device's.
        if self.bus.type != "local":
            if connected and not self.connected:
                log.info("bus %s: connected", self.bus.name)
            elif not connected and self.connected:
                log.warning("bus %s: lost: %s", self.bus.name, error)
        self.connected = connected
