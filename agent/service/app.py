"""The supervisor: owns the buffer, the uplink and one poller per bus, and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .. import __version__
from ..aio import cancel_and_wait
from ..api import local_bus
from ..cli.scan import scan_command
from ..cli.tools import plan_lines
from ..clock import Clock, ClockGuard
from ..config import Config, load_config
from ..config.secrets import known_secrets, scrubbed
from ..errors import ConfigError
from ..model import Value
from ..poll.health import health_payload, status_snapshot
from ..poll.report import ReportFilter
from ..poll.scheduler import BusPoller, Sink
from ..registry import bus_driver, load_driver
from ..store.buffer import open_buffer
from ..uplink.commands import Commands, shown
from ..uplink.diagnostics import REPLY_TOPIC as DIAG_REPLY
from ..uplink.diagnostics import Diagnostics
from ..uplink.remote import RemotePushes
from ..uplink.telemetry import Uplink
from .history import History
from .lock import data_dir_lock
from .logs import RecentLines, flush_suppressed
from .page import device_detail, device_history
from .status import StatusServer, status_path
from .systemd import notify, watchdog_interval
from .web import Sources, WebServer

log = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0
#: Commands carried out at once; more are refused as "busy" (a flood must not pile up tasks).
MAX_PENDING_COMMANDS = 50
#: How often STATUS= is refreshed without a watchdog (with one: at each of its pings).
STATUS_EVERY = 5.0
#: Under the data dir: what drivers keep across restarts (pulse counts).


class Agent:
    """Everything ``edge-agent run`` runs, for one configuration (reloadable on SIGHUP)."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.guard = ClockGuard(self.clock)
        self.buffer = open_buffer(
            config.agent.data_dir,
            config.buffer.max_size,
            config.buffer.flush_interval,
            trusted_ms=self._id_clock_ms,
            boot=self.guard.boot,
        )
        self.commands = Commands(
            lambda: self.config,
            lambda: self.pollers,
            self._trusted_now_ms,
            data_dir=config.agent.data_dir,
        )
        self.uplink: Uplink
        if config.sparkplug.enabled:
            # Imported only for a Sparkplug node: most of a megabyte that others do without.
            from ..uplink.sparkplug.link import SparkplugUplink

            self.uplink = SparkplugUplink(
                config,
                self.buffer,
                self.clock,
                self.guard,
                current=self._current_values,
                unreachable=self._unreachable_devices,
                write=self._sparkplug_write,
            )
        else:
            self.uplink = Uplink(
                config, self.buffer, self.clock, self.guard, on_command=self._command_arrived
            )
        #: Configuration pushed over MQTT (``config/set``), when ``[remote] config`` is on.
        #: Held while the files are read and applied (a reload, a push): one at a time.
        self._applying = asyncio.Lock()
        #: Buses whose polling a remote scan has paused.
        self._paused: set[str] = set()
        self.remote = RemotePushes(
            lambda: self.config,
            self._apply_now,
            self._publish_scrubbed,
            self.uplink.published,
            self._trusted_now_ms,
            restart_sections,
            lambda: self.uplink.last_error,
            turn=self._applying,
        )
        #: Commands being carried out, owned here: cancelled at stop.
        self._command_tasks: set[asyncio.Task[None]] = set()
        self.reports = {d.name: ReportFilter.for_device(d) for d in config.devices}
        #: Each point's last hour, for the technician's page: kept only while it is served.
        self.history = History() if config.web.enabled else None
        #: The recent log lines, for the page: kept from the start (its first lines say most).
        self.recent = RecentLines()
        self.pollers: list[BusPoller] = build_pollers(config, self._store, self.clock)
        self.diagnostics = Diagnostics(self, self.recent.lines, self._trusted_now_ms, self._scan)
        self._started_mono = self.clock.monotonic()
        #: Each poller's task, owned here: started in ``run``, replaced on reload, cancelled at
        #: stop.
        self._poll_tasks: dict[BusPoller, asyncio.Task[None]] = {}
        self._reload_requested = asyncio.Event()
        self._status = ""  # the STATUS= line last sent to systemd

    # --- commands

    def _command_arrived(self, topic: str, data: bytes) -> None:
        """A message on a topic the agent subscribes to: ``cmd``, or what ``[remote]`` takes."""
        subtopic = topic.removeprefix(self.uplink.topic + "/")
        if subtopic in ("config/set", "config/get"):
            work = self._remote_arrived(subtopic, data)
        elif subtopic.startswith("diag/"):
            work = self._diagnose(subtopic.removeprefix("diag/"), data)
        else:
            busy = len(self._command_tasks) >= MAX_PENDING_COMMANDS
            work = self._answer(topic, data, busy)
        task = asyncio.create_task(work, name=subtopic)
        self._command_tasks.add(task)
        task.add_done_callback(self._command_tasks.discard)

    async def _diagnose(self, name: str, data: bytes) -> None:
        try:
            reply = await self.diagnostics.answer(name, data)
            if reply is not None and not await self._publish_scrubbed(reply, DIAG_REPLY):
                log.warning("diag/%s: the reply was not sent: the link is down", name)
        except Exception:  # a bug costs one reply and a traceback here, never a stray error
            log.exception("diag/%s: cannot be answered", name)

    async def _publish_scrubbed(self, reply: dict[str, Any], subtopic: str) -> bool:
        """A reply with every secret the configuration knows replaced, whatever put it there."""
        return await self.uplink.publish_reply(
            scrubbed(reply, known_secrets(self.config)), subtopic
        )

    async def _scan(
        self, config: Config, bus: str, units: str | None
    ) -> tuple[list[str], list[str]]:
        """``edge-agent scan``'s work, with what it prints kept for the reply."""
        out = io.StringIO()
        found = await scan_command(config, config.bus(bus), units, out=out)
        return found, out.getvalue().splitlines()

    @contextlib.asynccontextmanager
    async def paused(self, bus: str) -> AsyncIterator[None]:
        """The poll loop of ``bus`` stopped (its port let go) while the block runs, then
        started again: the one the configuration has then (a reload meanwhile may have
        replaced it, or given the bus its first devices; it waits too)."""
        self._paused.add(bus)
        pollers = [p for p in self.pollers if p.bus.name == bus]
        await cancel_and_wait(*(t for p in pollers if (t := self._poll_tasks.pop(p, None))))
        try:
            yield
        finally:
            self._paused.discard(bus)
            for poller in self.pollers:
                if poller.bus.name == bus and poller not in self._poll_tasks:
                    self._start(poller)

    async def _remote_arrived(self, subtopic: str, data: bytes) -> None:
        try:
            await self.remote.arrived(subtopic, data)
        except Exception:  # a bug costs one message and a traceback here, never a stray error
            log.exception("%s: cannot be answered", subtopic)

    async def _answer(self, topic: str, data: bytes, busy: bool) -> None:
        commands = self.commands
        try:
            reply = await (commands.refuse_busy if busy else commands.handle)(data, topic)
            if reply is not None and not await self.uplink.publish_reply(reply):
                log.warning(
                    "cmd %s: the reply was not sent: the link is down", shown(str(reply["id"]))
                )
        except Exception:  # a bug costs one reply and a traceback here, never a stray task error
            log.exception("cmd on %s: cannot be answered", topic)

    def _current_values(self, device: str) -> tuple[Mapping[str, Value], int | None]:
        """The device's latest readings and when the last of them was read (a Sparkplug
        DBIRTH carries them)."""
        for poller in self.pollers:
            health = poller.health.get(device)
            if health is not None:
                return health.last_values, health.last_good
        return {}, None

    def _unreachable_devices(self) -> set[str]:
        """Devices whose last poll read nothing (a Sparkplug DDEATH)."""
        return {name for p in self.pollers for name, h in p.health.items() if h.unreachable}

    async def _sparkplug_write(
        self, device: str, point: str, value: Value, sent_ms: int | None
    ) -> dict[str, Any]:
        return await self.commands.write_direct(device, point, value, "sparkplug DCMD", sent_ms)

    def _trusted_now_ms(self) -> int | None:
        """The wall clock in ms, None while it cannot be trusted."""
        now, mono = self.clock.wall_ms(), self.clock.monotonic()
        return now if self.guard.trusted(now, mono) else None

    def _id_clock_ms(self) -> int | None:
        """The wall clock in ms for ids from the clock: trusted, and synchronised by the
        kernel's account, so that it cannot repeat itself after a reboot."""
        now = self._trusted_now_ms()
        return now if now is not None and self.clock.ntp_synced() else None

    def request_reload(self) -> None:
        """Re-read the configuration file (SIGHUP): applied by ``run`` between polls."""
        self._reload_requested.set()

    def _store(self, device: str, ts: int, mono: float, values: Mapping[str, Value]) -> None:
        """A poll's values, less what report-by-exception holds back, become a sample."""
        if self.history is not None:  # the page plots every value read, sent or not
            self.history.add(device, ts, values)
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
        with data_dir_lock(self.config.agent.data_dir), self.recent:
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        self.buffer.open()
        self.guard.remember(self.buffer.newest_ts)
        for poller in self.pollers:
            self._start(poller)
        workers = [
            asyncio.create_task(self._flush_periodically(), name="buffer flush"),
            asyncio.create_task(self._report_health(), name="health"),
            asyncio.create_task(self._supervise(), name="watchdog"),
            asyncio.create_task(self._reload_when_asked(), name="reload"),
            asyncio.create_task(self.remote.run(), name="remote config"),
        ]
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
        try:
            async with (
                StatusServer(status_path(self.config.agent.data_dir), self.status_snapshot),
                WebServer(self.config.web, self._page_sources()),
            ):
                # Workers run until cancelled; one that ends early has failed and stops the
                # agent. (Pollers never end: a bus's failures, even a driver's bugs, are retried.)
                done, _ = await asyncio.wait(
                    [stopper, uplink, *workers], return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            notify("STOPPING=1")
            await cancel_and_wait(stopper, *self._command_tasks)
            await cancel_and_wait(*self._poll_tasks.values(), *workers)
            await self.uplink.stop()
            _, late = await asyncio.wait([uplink], timeout=STOP_TIMEOUT)
            if late:
                log.warning("mqtt: could not say goodbye within %.0fs", STOP_TIMEOUT)
                await cancel_and_wait(uplink)
            self.buffer.close()
            log.info("stopped")
        for task in done - {stopper}:
            task.result()  # re-raise what ended it

    def _start(self, poller: BusPoller) -> None:
        if poller.bus.name in self._paused:  # a scan holds the line: started after it
            return
        self._poll_tasks[poller] = asyncio.create_task(poller.run(), name=f"bus {poller.bus.name}")

    # --- reload

    async def _reload_when_asked(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            notify(
                f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
            )
            try:
                await self.reload()
            finally:
                notify("READY=1")

    async def reload(self) -> bool:
        """Read the configuration file again and apply it; False (the old one kept) when it is
        invalid. Only the buses and devices that changed are restarted: the buffer, the MQTT
        session and every other poll loop go on."""
        # One turn from reading the files to applying them: a push is not written meanwhile (what
        # was read before it would pass for a technician's file that supersedes it).
        async with self._applying:
            path = self.config.source
            try:
                new, warnings = load_config(path)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload: %s", problem)
                log.error(
                    "reload: %s is invalid; still running the configuration loaded before", path
                )
                return False
            for warning in warnings:
                log.warning("reload: %s", warning)
            await self._apply_now(new)
            self.remote.reloaded(new)  # the site's file wins over a push waiting to be confirmed
        return True

    async def _apply_now(self, new: Config) -> None:
        """Apply ``new`` (a reload, or a push), holding ``_applying``: one at a time."""
        old = self.config
        kept = restart_sections(old, new)
        if kept:
            log.warning(
                "reload: [%s] changed: that takes a restart (systemctl restart edge-agent); "
                "the rest is applied now",
                "], [".join(kept),
            )
            agent = replace(old.agent, include=new.agent.include)
            new = replace(new, agent=agent, buffer=old.buffer, web=old.web, sparkplug=old.sparkplug)
        current = {p.owner: p for p in self.pollers}
        wanted = build_pollers(new, self._store, self.clock)
        same = {f.owner for f in wanted if f.owner in current and current[f.owner].same_work(f)}
        pollers = [current[f.owner] if f.owner in same else f for f in wanted]
        started = [p for p in pollers if p.owner not in same]
        # The old loop lets go of its port or pins before the new one takes them.
        retired = [p for p in current.values() if p.owner not in same]
        await cancel_and_wait(*(t for p in retired if (t := self._poll_tasks.pop(p, None))))
        old_devices = {d.name: d for d in old.devices}
        self.reports = {
            d.name: self.reports[d.name]
            if old_devices.get(d.name) == d
            else ReportFilter.for_device(d)
            for d in new.devices
        }
        self.config, self.pollers = new, pollers
        if self.history is not None:
            self.history.keep_only({d.name: [p.name for p in d.points] for d in new.devices})
        for poller in started:
            self._start(poller)
        await self.uplink.reconfigure(new)
        changed = sum(p.owner in current for p in started)
        log.info(
            "reload: %s applied: %d poll loop(s) changed, %d added, %d removed, %d unchanged",
            new.source,
            changed,
            len(started) - changed,
            len(current.keys() - {p.owner for p in pollers}),
            len(same),
        )

    # --- systemd

    async def _supervise(self) -> None:
        """Tell systemd how things are: ``STATUS=`` when it changed, and ``WATCHDOG=1`` only
        while every poll loop progresses (that this task runs at all shows the event loop does).
        """
        interval = watchdog_interval()
        wedged: set[str] = set()
        while True:
            await asyncio.sleep(interval or STATUS_EVERY)
            status = self.status_line()
            if status != self._status:
                self._status = status
                notify(f"STATUS={status}")
            self.uplink.wake()  # a Sparkplug link tells devices that started failing (DDEATH)
            stuck = {p.bus.name for p in self.pollers if p.stuck_for() > 0}
            for name in sorted(stuck - wedged):
                log.error(
                    "bus %s: a poll has lasted far beyond any timeout: its poll loop is wedged; %s",
                    name,
                    "withholding the watchdog so that systemd restarts the agent"
                    if interval
                    else "restart the agent",
                )
            for name in sorted(wedged - stuck):
                log.info("bus %s: its poll loop goes on again", name)
            wedged = stuck
            if interval and not stuck:
                notify("WATCHDOG=1")

    def status_snapshot(self) -> dict[str, Any]:
        """What ``edge-agent status`` shows, from the status socket."""
        link: dict[str, Any] = {
            "state": "connected" if self.uplink.connected else "disconnected",
            "broker": self.config.mqtt.url,
            "protocol": self.config.mqtt.protocol,
            **self.uplink.counts(),
            "sent": self.uplink.sent,
        }
        if self.uplink.broker_limits:
            link["broker_limits"] = dict(self.uplink.broker_limits)
        if self.uplink.last_error:
            link["last_error"] = self.uplink.last_error
        link["commands"] = dict(self.commands.counts)
        about = {
            "id": self.config.agent.id,
            "version": __version__,
            # from the monotonic clock: an agent started before NTP answered is not 54 years old
            "started": self.clock.wall_ms()
            - round(1000 * (self.clock.monotonic() - self._started_mono)),
            "pid": os.getpid(),
            "config": str(self.config.source),
        }
        snapshot = status_snapshot(self.pollers, self.buffer, link, about, self.clock.wall_ms())
        snapshot["config"] = self.remote.health()
        return snapshot

    def _page_sources(self) -> Sources:
        def device(name: str) -> dict[str, Any] | None:
            return device_detail(name, self.status_snapshot(), self.config, self.pollers)

        def history(name: str) -> dict[str, Any] | None:
            if self.history is None:
                return None
            return device_history(name, self.config, self.history, self.clock.wall_ms())

        return Sources(
            self.status_snapshot, device, history, self.commands.write_from_page, self.recent.lines
        )

    def uptime(self) -> float:
        return self.clock.monotonic() - self._started_mono

    def status_line(self) -> str:
        """One line for ``systemctl status``: devices, buffer, link."""
        health = [(name, h) for p in self.pollers for name, h in p.health.items()]
        failing = [name for name, h in health if h.failing]
        devices = f"{len(health) - len(failing)}/{len(health)} device(s) ok"
        if failing:
            more = f" +{len(failing) - 3}" if len(failing) > 3 else ""
            devices += f", failing: {', '.join(failing[:3])}{more}"
        link = "connected" if self.uplink.connected else "disconnected"
        return f"{devices}; buffer {self.buffer.depth} waiting; mqtt {link}"

    async def _report_health(self) -> None:
        while True:
            await asyncio.sleep(self.config.mqtt.health_interval)
            try:
                payload = health_payload(
                    self.pollers,
                    self.buffer,
                    self.uplink.counts(),
                    self.clock.wall_ms(),
                    self.commands.counts,
                )
                payload["config"] = self.remote.health()
            except Exception:  # a health report is not worth stopping the agent for
                log.exception("health: cannot build the report")
                continue
            await self.uplink.publish_health(payload)
            lacking = {n: h.missing for p in self.pollers for n, h in p.health.items() if h.missing}
            await self.uplink.points_missing(lacking)

    async def _flush_periodically(self) -> None:
        """Commit what stayed unacknowledged for ¾ of flush_interval, every quarter of it: a
        sample is on disk within one flush_interval of being taken."""
        while True:
            await asyncio.sleep(self.config.buffer.flush_interval / 4)
            self.buffer.flush()
            flush_suppressed()  # "N similar messages suppressed" without waiting for a next line


def restart_sections(old: Config, new: Config) -> list[str]:
    """The sections that changed and that a reload cannot apply (the data dir, the buffer, the
    page's server): [mqtt] reconnects, buses and devices restart their poll loops."""
    changed = [s for s in ("buffer", "web", "sparkplug") if getattr(old, s) != getattr(new, s)]
    if replace(old.agent, include=()) != replace(new.agent, include=()):
        changed.insert(0, "agent")
    return changed


def build_pollers(config: Config, sink: Sink, clock: Clock) -> list[BusPoller]:
    """One poller per bus with devices, and one per device on no bus."""
    state_dir = config.agent.state_dir
    pollers = [
        BusPoller(bus, devices, load_driver(driver), sink, clock, state_dir)
        for bus in config.buses
        if (devices := config.devices_on(bus.name)) and (driver := bus_driver(bus, devices))
    ]
    pollers += [  # a device on no bus has an owner task of its own, like a bus
        BusPoller(local_bus(d), [d], load_driver(d.driver), sink, clock, state_dir)
        for d in config.devices
        if not d.bus
    ]
    return pollers


async def run_until_signalled(config: Config, hangups: Sequence[int] = ()) -> None:
    """``edge-agent run``: the agent until SIGTERM or SIGINT; SIGHUP reloads the config (also
    one of ``hangups``, received while starting up)."""
    stop = asyncio.Event()
    agent = Agent(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    if hangups:
        agent.request_reload()
    await agent.run(stop)
