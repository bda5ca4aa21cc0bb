"""The supervisor: owns the buffer, the uplink and one poller per bus, and stops them in order."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping

from .aio import cancel_and_wait
from .buffer import BUFFER_FILE, Buffer
from .clock import Clock, ClockGuard
from .config import Config
from .driver import bus_driver, load_driver, local_bus
from .health import health_payload
from .lock import data_dir_lock
from .model import Value
from .report import ReportFilter
from .scheduler import BusPoller
from .systemd import notify
from .tools import plan_lines
from .uplink import Uplink

log = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0
#: Under the data dir: what drivers keep across restarts (pulse counts).
STATE_DIR = "state"


class Agent:
    """Everything ``edge-agent run`` runs, for one configuration."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.buffer = Buffer(
            config.agent.data_dir / BUFFER_FILE,
            config.buffer.max_size,
            config.buffer.flush_interval,
        )
        self.guard = ClockGuard(self.clock)
        self.uplink = Uplink(config, self.buffer, self.clock, self.guard)
        self.reports = {d.name: ReportFilter.for_device(d) for d in config.devices}
        state_dir = config.agent.data_dir / STATE_DIR
        self.pollers = [
            BusPoller(
                bus,
                config.devices_on(bus.name),
                load_driver(driver),
                self._store,
                self.clock,
                state_dir,
            )
            for bus in config.buses
            if (driver := bus_driver(bus, config.devices))  # a bus without devices: nothing to do
        ] + [  # a device on no bus has an owner task of its own, like a bus
            BusPoller(local_bus(d), [d], load_driver(d.driver), self._store, self.clock, state_dir)
            for d in config.devices
            if not d.bus
        ]

    def _store(self, device: str, ts: int, mono: float, values: Mapping[str, Value]) -> None:
        """A poll's values, less what report-by-exception holds back, become a sample."""
        worth_sending = self.reports[device].apply(values, mono)
        if not worth_sending:  # a poll that leaves nothing to send makes no sample (and no id)
            return
        if self.guard.trusted(ts, mono):
            self.buffer.add(device, ts, worth_sending)
        else:  # keep what re-stamping it needs once the clock is right
            self.buffer.add(device, ts, worth_sending, mono=mono, boot=self.guard.boot)
        self.uplink.wake()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then stop polling, commit the buffer and go offline."""
        with data_dir_lock(self.config.agent.data_dir):
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        self.buffer.open()
        self.guard.remember(self.buffer.newest_ts)
        pollers = [asyncio.create_task(p.run(), name=f"bus {p.bus.name}") for p in self.pollers]
        flusher = asyncio.create_task(self._flush_periodically(), name="buffer flush")
        reporter = asyncio.create_task(self._report_health(), name="health")
        uplink = asyncio.create_task(self.uplink.run(), name="uplink")
        for line in plan_lines(self.config):
            log.info("plan: %s", line.strip())
        notify("READY=1")
        log.info(
            "running: %d device(s) on %d bus(es), broker %s",
            len(self.config.devices),
            len(self.config.buses),  # devices on no bus are not counted as buses
            self.config.mqtt.url,
        )
        stopper = asyncio.create_task(stop.wait(), name="stop")
        workers = [*pollers, flusher, reporter, uplink]
        try:
            # Workers run until cancelled; one that ends early has failed and stops the agent.
            done, _ = await asyncio.wait([stopper, *workers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            notify("STOPPING=1")
            await cancel_and_wait(stopper, *pollers, flusher, reporter)
            await self.uplink.stop()
            _, late = await asyncio.wait([uplink], timeout=STOP_TIMEOUT)
            if late:
                log.warning("mqtt: could not say goodbye within %.0fs", STOP_TIMEOUT)
                await cancel_and_wait(uplink)
            self.buffer.close()
            log.info("stopped")
        for task in done - {stopper}:
            task.result()  # re-raise what ended it

    async def _report_health(self) -> None:
        while True:
            await asyncio.sleep(self.config.mqtt.health_interval)
            reconnects = max(0, self.uplink.connects - 1)
            try:
                payload = health_payload(
                    self.pollers, self.buffer, reconnects, self.clock.wall_ms()
                )
            except Exception:  # a health report is not worth stopping the agent for
                log.exception("health: cannot build the report")
                continue
            await self.uplink.publish_health(payload)

    async def _flush_periodically(self) -> None:
        """Commit what stayed unacknowledged for ¾ of flush_interval, every quarter of it: a
        sample is on disk within one flush_interval of being taken."""
        while True:
            await asyncio.sleep(self.config.buffer.flush_interval / 4)
            self.buffer.flush()


async def run_until_signalled(config: Config) -> None:
    """``edge-agent run``: the agent until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Agent(config).run(stop)
