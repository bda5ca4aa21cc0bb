"""Remote diagnostics (``diag/NAME`` → ``diag/reply``), each on only when ``[remote]`` says:
``status``, ``log``, ``frames``, ``read`` (one poll now, with raw registers) and ``scan``
(refused while the bus's devices are polled, unless asked to pause them). docs/remote.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from ..api import KeepsRaw
from ..config import Config
from ..errors import AgentError
from ..poll.scheduler import BusPoller
from .commands import TS_LIMIT, Ident, Reply, command_id, refusal, shown

log = logging.getLogger(__name__)

REPLY_TOPIC = "diag/reply"
MAX_PAYLOAD = 4096
#: How many log lines a ``diag/log`` gives by default, and at most.
LOG_LINES, MAX_LOG_LINES = 50, 200
#: How long a ``diag/read`` may wait for its turn on the bus.
READ_WAIT = 30.0


class DiagnosticRefused(ValueError):
    """A request not answered with a result; the message says why."""


class Host(Protocol):
    """What the diagnostics ask of the agent that runs them."""

    @property
    def config(self) -> Config: ...

    @property
    def pollers(self) -> Sequence[BusPoller]: ...

    def status_snapshot(self) -> dict[str, Any]: ...

    def paused(self, bus: str) -> contextlib.AbstractAsyncContextManager[None]: ...


class Diagnostics:
    """Answers each ``diag/NAME`` request that ``[remote]`` turns on."""

    def __init__(
        self,
        host: Host,
        log_lines: Callable[[], list[dict[str, object]]],
        now_ms: Callable[[], int | None],
        scan: Callable[[Config, str, str | None], Awaitable[tuple[list[str], list[str]]]],
    ) -> None:
        self._host = host
        self._log_lines = log_lines
        self._now_ms = now_ms
        #: ``edge-agent scan``'s work: (config, bus name, units) → the lines it printed.
        self._scan = scan
        #: The buses being scanned now.
        self._scanning: set[str] = set()

    async def answer(self, name: str, data: bytes) -> Reply | None:
        """The reply to a request on ``diag/NAME``; None when it has no id to reply to."""
        try:
            request = _request(data)
        except DiagnosticRefused as exc:
            log.warning("diag/%s: not answered: %s", name, exc)
            return None
        ident: Ident = request["id"]
        try:
            if name not in self._host.config.remote.diagnostics:
                raise DiagnosticRefused(f"diag/{name} is not turned on in [remote]")
            result = await self._result(name, request)
        except (DiagnosticRefused, AgentError, ValueError, TimeoutError) as exc:
            log.warning("diag/%s %s: refused: %s", name, shown(str(ident)), exc)
            return refusal(ident, str(exc))
        log.info("diag/%s %s: answered", name, shown(str(ident)))
        return {"id": ident, "ok": True, "what": name, "result": result}

    async def _result(self, name: str, request: Mapping[str, Any]) -> Any:
        if name == "status":
            return self._host.status_snapshot()
        if name == "log":
            return self._log(request)
        if name == "frames":
            return self._frames(self._device(request))
        if name == "read":
            return await self._read(self._device(request))
        return await self._scan_bus(request)

    def _log(self, request: Mapping[str, Any]) -> list[dict[str, object]]:
        count = request.get("lines", LOG_LINES)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= MAX_LOG_LINES:
            raise DiagnosticRefused(f'"lines" must be a whole number from 1 to {MAX_LOG_LINES}')
        return self._log_lines()[-count:]

    def _device(self, request: Mapping[str, Any]) -> str:
        name = request.get("device")
        if not isinstance(name, str) or name not in {d.name for d in self._host.config.devices}:
            raise DiagnosticRefused(f'no device "{shown(str(name))}" in the configuration')
        return name

    def _frames(self, device: str) -> dict[str, Any]:
        poller = self._poller_of(device)
        driver = poller.driver_instance
        if not isinstance(driver, KeepsRaw):
            raise DiagnosticRefused(f"device {device}: its driver keeps no raw frames")
        health = poller.health[device]
        return {"device": device, "state": health.state, "frames": list(driver.frames(device))}

    async def _read(self, device: str) -> dict[str, Any]:
        poller = self._poller_of(device)
        configured = self._host.config.device(device)
        poll = await poller.read_now(configured, READ_WAIT)
        driver = poller.driver_instance
        points = {p.name: p for p in configured.points}
        shown_raw: dict[str, str] = {}
        if isinstance(driver, KeepsRaw):  # as `edge-agent read` shows them (0x00E6 0x0001)
            shown_raw = {
                name: driver.show_raw(points[name], raw)
                for name, raw in poll.raw.items()
                if name in points
            }
        return {
            "device": device,
            "values": dict(poll.values),
            "errors": list(poll.errors),
            "missing": list(poll.missing),
            "raw": {name: list(raw) for name, raw in poll.raw.items()},
            "raw_shown": shown_raw,
        }

    async def _scan_bus(self, request: Mapping[str, Any]) -> dict[str, Any]:
        self._check_age(request)
        bus = request.get("bus")
        config = self._host.config
        if not isinstance(bus, str) or bus not in {b.name for b in config.buses}:
            raise DiagnosticRefused(f'no bus "{shown(str(bus))}" in the configuration')
        units = request.get("units")
        if units is not None and not isinstance(units, str):
            raise DiagnosticRefused('"units" must be a string in the bus driver\'s terms ("1-10")')
        pause = request.get("pause", False)
        polled = [d.name for d in config.devices_on(bus)]
        if polled and pause is not True:
            raise DiagnosticRefused(
                f"bus {bus} has devices being polled ({', '.join(polled)}): a scan would "
                'collide with their requests; send "pause": true to stop them for its duration'
            )
        if bus in self._scanning:  # two scans on one line would garble each other
            raise DiagnosticRefused(f"bus {bus}: a scan is under way already")
        self._scanning.add(bus)
        try:
            async with self._host.paused(bus):
                found, printed = await self._scan(config, bus, units)
        finally:
            self._scanning.discard(bus)
        return {"bus": bus, "found": found, "output": printed, "paused": polled}

    def _check_age(self, request: Mapping[str, Any]) -> None:
        ts = request.get("ts")
        if not isinstance(ts, int) or isinstance(ts, bool) or not -TS_LIMIT <= ts < TS_LIMIT:
            raise DiagnosticRefused('"ts" must be an integer: ms since the epoch, when it was sent')
        now = self._now_ms()
        if now is None:
            raise DiagnosticRefused("the gateway's clock is not set yet: the age cannot be told")
        ttl = self._host.config.mqtt.command_ttl
        if abs(now - ts) > ttl * 1000:
            raise DiagnosticRefused(
                f"expired (or from the future): sent {(now - ts) / 1000:.0f}s ago, "
                f"command_ttl is {ttl:g}s"
            )

    def _poller_of(self, device: str) -> BusPoller:
        poller = next((p for p in self._host.pollers if device in p.health), None)
        if poller is None:
            raise DiagnosticRefused(f"device {device} is not being polled")
        return poller


def _request(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_PAYLOAD:
        raise DiagnosticRefused(f"{len(data)} bytes: a request is at most {MAX_PAYLOAD}")
    try:
        request = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise DiagnosticRefused(f"not JSON: {str(exc)[:80]}") from None
    if command_id(request) is None:
        raise DiagnosticRefused('no usable "id" (a string of 1-128 characters or an integer)')
    result: dict[str, Any] = request
    return result
