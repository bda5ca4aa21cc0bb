"""Commands: writes to relays, valves and setpoints, from the cloud (``cmd``) or a technician
(``edge-agent write``), each checked before anything moves.

A command from MQTT is ``{"id": …, "device": …, "point": …, "value": …, "ts": ms}``. It is
refused — with a reply naming why when it carries an ``id``, a log line otherwise — when it is
not such an object, names an unknown device or point, a point not ``writable``, a value of the
wrong type or outside ``min``/``max``, or when it is older than ``command_ttl`` (an "open the
valve" queued during an outage must not run hours later) or the gateway's clock cannot tell.
A command repeated with an ``id`` already seen (a QoS 1 redelivery) gets the first answer again
and is not executed twice.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Config, DeviceConfig, PointConfig
from .config.sections import suggest
from .driver import build_driver, load_driver, local_bus
from .errors import DeviceError
from .model import Poll, Value
from .scheduler import BusPoller

log = logging.getLogger(__name__)

#: A command is a few dozen bytes; a larger payload is refused unread.
MAX_PAYLOAD = 4096
MAX_ID = 128
#: Ids remembered with their replies, to answer redeliveries without writing again.
REMEMBERED_IDS = 1000
#: How long a write may wait for its bus (a poll under way, other writes) before it is dropped.
WRITE_WAIT = 30.0


class CommandRefused(ValueError):
    """A command that is not carried out; the message says why, for the reply and the log."""


@dataclass(frozen=True)
class Command:
    id: str | int
    device: str
    point: str
    value: Value
    ts: int  # ms since the epoch, when it was sent


def command_id(payload: Any) -> str | int | None:
    """The command's id when it has a usable one."""
    if not isinstance(payload, dict):
        return None
    given = payload.get("id")
    if isinstance(given, bool) or not isinstance(given, str | int):
        return None
    if isinstance(given, str) and (not 0 < len(given) <= MAX_ID or not _utf8(given)):
        return None  # empty, too long, or not writable as UTF-8 (a reply could not carry it)
    return given


def parse(data: bytes) -> tuple[str | int | None, Command | CommandRefused]:
    """The command in an MQTT payload, or why it is refused; with its id when it has one."""
    if len(data) > MAX_PAYLOAD:
        return None, CommandRefused(f"{len(data)} bytes: a command is at most {MAX_PAYLOAD}")
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError) as exc:  # also bad UTF-8
        return None, CommandRefused(f"not JSON: {str(exc)[:80]}")
    ident = command_id(payload)
    if ident is None:
        return None, CommandRefused(
            'no usable "id" (a string of 1-128 characters or an integer): cannot reply'
        )
    fields = {"device": str, "point": str, "ts": int}
    for key, kind in fields.items():
        value = payload.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            got = "missing" if key not in payload else f"a {type(value).__name__}"
            return ident, CommandRefused(f'"{key}" must be a {kind.__name__}, got {got}')
    value = payload.get("value")
    if not isinstance(value, bool | int | float | str):
        got = "missing" if "value" not in payload else f"a {type(value).__name__}"
        return ident, CommandRefused(f'"value" must be a number, a boolean or a string, got {got}')
    extra = sorted(set(payload) - {"id", "device", "point", "value", "ts"})
    if extra:
        return ident, CommandRefused(f"unknown key(s): {', '.join(map(repr, extra))[:120]}")
    return ident, Command(ident, payload["device"], payload["point"], value, payload["ts"])


def checked_value(point: PointConfig, value: Value) -> Value:
    """``value`` if ``point`` may take it (writable, a number within min/max); else refused."""
    if not point.writable:
        raise CommandRefused(f"{point.name} is not writable")
    if isinstance(value, float) and not math.isfinite(value):
        raise CommandRefused(f"{value} is not a number a device can take")
    if isinstance(value, str):
        if point.min is not None or point.max is not None:
            raise CommandRefused(f"{point.name} takes a number, not a string")
        return value
    number = float(value)
    if point.min is not None and number < point.min:
        raise CommandRefused(f"{value} is below {point.name}'s min {point.min:g}")
    if point.max is not None and number > point.max:
        raise CommandRefused(f"{value} is above {point.name}'s max {point.max:g}")
    return value


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON's \ud800 escapes can carry one)
        return False
    return True


def shown(text: str) -> str:
    """A name from a command, safe in a reply and a log line: cut short, and with what cannot
    be written as UTF-8 (lone surrogates) escaped."""
    cut = text if len(text) <= 80 else text[:80] + "…"
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


def find_target(config: Config, device: str, point: str) -> tuple[DeviceConfig, PointConfig]:
    devices = {d.name: d for d in config.devices}
    if device not in devices:
        raise CommandRefused(f'unknown device "{shown(device)}"{suggest(device, devices)}')
    points = {p.name: p for p in devices[device].points}
    if point not in points:
        raise CommandRefused(
            f'device {device} has no point "{shown(point)}"{suggest(point, points)}'
        )
    return devices[device], points[point]


def read_back(poll: Poll, point: PointConfig) -> Value:
    """The point's value in the poll made after its write."""
    if point.name not in poll.values:
        why = "; ".join(poll.errors) or "no value"
        raise DeviceError(f"written, but reading {point.name} back failed: {why}")
    return poll.values[point.name]


def value_from_text(text: str) -> Value:
    """A value typed on the command line: JSON's true/false and numbers, else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float) else text


async def write_now(config: Config, device_name: str, point_name: str, value: Value) -> Value:
    """``edge-agent write``: the checks of a command (but no age), the write through the
    device's own driver, and the value read back. The agent, if it runs, is not asked: on a
    serial bus it holds the port, and this says so."""
    device, point = find_target(config, device_name, point_name)
    value = checked_value(point, value)
    bus = config.bus(device.bus) if device.bus else local_bus(device)
    driver = build_driver(load_driver(device.driver), bus, None, [device])
    write = getattr(driver, "write", None)
    if write is None:
        raise CommandRefused(f"device {device.name}: its driver cannot write")
    async with driver:
        try:
            await write(device, point, value)
        except ValueError as exc:
            raise CommandRefused(f"{point.name}: {exc}") from None
        return read_back(await driver.read(device), point)


class Commands:
    """Carries out commands through the poll loop that owns each device's bus, one at a time
    per bus and ahead of its polls; remembers the ids it answered; counts outcomes."""

    def __init__(
        self,
        config: Callable[[], Config],
        pollers: Callable[[], Sequence[BusPoller]],
        now_ms: Callable[[], int | None],
    ) -> None:
        self._config = config
        self._pollers = pollers
        #: The wall clock in ms, or None while it cannot be trusted (no NTP yet).
        self._now_ms = now_ms
        #: ``ok``, ``refused`` (never sent to a device), ``failed`` (the device refused or did
        #: not answer), ``repeated`` (answered from memory).
        self.counts: Counter[str] = Counter()
        self._answered: collections.OrderedDict[str | int, asyncio.Future[dict[str, Any]]] = (
            collections.OrderedDict()
        )

    async def handle(self, data: bytes, topic: str) -> dict[str, Any] | None:
        """The reply to an MQTT command payload; None when it has no id to reply to."""
        ident, parsed = parse(data)
        if ident is None:
            self.counts["refused"] += 1
            log.warning("cmd on %s: refused: %s", topic, parsed)
            return None
        if ident in self._answered:  # a redelivery: the same answer, no second write
            self.counts["repeated"] += 1
            reply = await asyncio.shield(self._answered[ident])
            log.info(
                "cmd %s on %s: repeated: answered again, not executed twice",
                shown(str(ident)),
                topic,
            )
            return reply
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._remember(ident, answer)
        try:
            reply = await self._carry_out(ident, parsed, topic)
        except BaseException:  # stopping: a redelivery after the restart is judged afresh
            self._answered.pop(ident, None)
            answer.cancel()
            raise
        answer.set_result(reply)
        return reply

    async def refuse_busy(self, data: bytes, topic: str) -> dict[str, Any] | None:
        """The reply to a command that came while too many were under way: not carried out."""
        ident, _ = parse(data)
        self.counts["refused"] += 1
        log.warning("cmd %s on %s: refused: too many commands at once", shown(str(ident)), topic)
        if ident is None:
            return None
        return {"id": ident, "ok": False, "error": "busy: too many commands at once; send again"}

    async def _carry_out(
        self, ident: str | int, parsed: Command | CommandRefused, topic: str
    ) -> dict[str, Any]:
        what = f"cmd {shown(str(ident))} on {topic}"
        try:
            if isinstance(parsed, CommandRefused):
                raise parsed
            device, point = find_target(self._config(), parsed.device, parsed.point)
            value = checked_value(point, parsed.value)
            self._check_age(parsed.ts)
        except CommandRefused as exc:
            self.counts["refused"] += 1
            log.warning("%s: refused: %s", what, exc)
            return {"id": ident, "ok": False, "error": str(exc)}
        old = self._last_value(device, point)
        log.info("%s: %s.%s = %r (was %r)", what, device.name, point.name, value, old)
        try:
            read_back = await self._write(device, point, value)
        except (CommandRefused, DeviceError, ValueError, TimeoutError) as exc:
            self.counts["failed" if isinstance(exc, DeviceError) else "refused"] += 1
            log.warning("%s: %s.%s not set: %s", what, device.name, point.name, exc)
            return {"id": ident, "ok": False, "error": str(exc)}
        self.counts["ok"] += 1
        log.info("%s: %s.%s set: read back %r", what, device.name, point.name, read_back)
        return {"id": ident, "ok": True, "value": read_back}

    async def _write(self, device: DeviceConfig, point: PointConfig, value: Value) -> Value:
        poller = next(p for p in self._pollers() if device.name in p.health)
        try:
            poll = await poller.write(device, point, value, WRITE_WAIT)
        except ValueError as exc:  # the driver cannot encode it for that point
            raise CommandRefused(f"{point.name}: {exc}") from None
        return read_back(poll, point)

    def _check_age(self, ts: int) -> None:
        now = self._now_ms()
        if now is None:
            raise CommandRefused(
                "the gateway's clock is not set yet (no NTP): the command's age cannot be "
                "told, so it is not run"
            )
        ttl_ms = self._config().mqtt.command_ttl * 1000
        if now - ts > ttl_ms:
            raise CommandRefused(
                f"expired: sent {(now - ts) / 1000:.0f}s ago, command_ttl is {ttl_ms / 1000:g}s"
            )
        if ts - now > ttl_ms:
            raise CommandRefused(
                f"sent {(ts - now) / 1000:.0f}s in the future: check the sender's clock"
            )

    def _last_value(self, device: DeviceConfig, point: PointConfig) -> Value | None:
        for poller in self._pollers():
            health = poller.health.get(device.name)
            if health is not None:
                return health.last_values.get(point.name)
        return None

    def _remember(self, ident: str | int, answer: asyncio.Future[dict[str, Any]]) -> None:
        self._answered[ident] = answer
        while len(self._answered) > REMEMBERED_IDS:
            self._answered.popitem(last=False)

    def summary(self) -> Mapping[str, int]:
        return dict(self.counts)
