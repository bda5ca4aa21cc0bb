"""Commands: writes to relays, valves and setpoints, from the cloud (``cmd``) or a technician
(``edge-agent write``), each checked before anything moves.

A command from MQTT is ``{"id": …, "device": …, "point": …, "value": …, "ts": ms}``. It is
refused — with a reply naming why when it carries an ``id``, a log line otherwise — when it is
not such an object, names an unknown device or point, a point not ``writable``, a value of the
wrong type, outside ``min``/``max`` or beyond what any device takes, or when it is older than
``command_ttl`` (an "open the valve" queued during an outage must not run hours later) or the
gateway's clock cannot tell. Every command with an ``id`` gets exactly one reply: even a bug
while carrying it out becomes ``internal error: …``.

At most once: a command carried out (or under way) is remembered by its ``id`` until its ``ts`` +
``command_ttl`` has passed, so that a copy (a QoS 1 redelivery) gets the first answer again, even
after a restart (``CommandRecord``, in ``<data_dir>/commands.json``). A command refused before
anything moved is not remembered: a copy is judged again.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import registry
from ..api import DriverContext, Writes, local_bus
from ..api.keys import suggest
from ..config import Config, DeviceConfig, PointConfig
from ..errors import DeviceError
from ..files import write_atomically
from ..model import Poll, Value
from ..poll.scheduler import BusPoller

log = logging.getLogger(__name__)

#: A command is a few dozen bytes; a larger payload is refused unread.
MAX_PAYLOAD = 4096
MAX_ID = 128
#: Arrays and objects nested deeper than this in a payload are read as null: Python's JSON reader
#: gives up on deep nesting (RecursionError), which would hide the id the reply needs.
MAX_DEPTH = 32
#: ``ts`` is ms since the epoch in a signed 64-bit integer; beyond, its age cannot be reckoned.
TS_LIMIT = 2**63
#: How long a write may wait for its bus (a poll under way, other writes) before it is dropped.
WRITE_WAIT = 30.0
#: Commands carried out remembered at most (a flood within one ``command_ttl``); beyond, the one
#: sent earliest is forgotten, and commands not later than it are refused.
MAX_REMEMBERED = 10_000
#: Under the data dir: the commands carried out, kept across restarts.
COMMANDS_FILE = "commands.json"
#: A record larger than this was not written by the agent (10,000 commands take about 2 MB).
MAX_RECORD_BYTES = 32 * 1024 * 1024
#: How often trouble writing the record is logged again, in seconds.
LOG_EVERY = 60.0

Ident = str | int
Reply = dict[str, Any]


class CommandRefused(ValueError):
    """A command that is not carried out; the message says why, for the reply and the log."""


@dataclass(frozen=True)
class Command:
    id: Ident
    device: str
    point: str
    value: Value
    ts: int  # ms since the epoch, when it was sent


def command_id(payload: Any) -> Ident | None:
    """The command's id when it has a usable one."""
    if not isinstance(payload, dict):
        return None
    given = payload.get("id")
    if isinstance(given, bool) or not isinstance(given, str | int):
        return None
    if isinstance(given, str) and (not 0 < len(given) <= MAX_ID or not _utf8(given)):
        return None  # empty, too long, or not writable as UTF-8 (a reply could not carry it)
    return given


def parse(data: bytes) -> tuple[Ident | None, Command | CommandRefused]:
    """The command in an MQTT payload, or why it is refused; with its id when it has one."""
    if len(data) > MAX_PAYLOAD:
        return None, CommandRefused(f"{len(data)} bytes: a command is at most {MAX_PAYLOAD}")
    try:
        payload = _json_loads(data)
    except ValueError as exc:  # also bad UTF-8
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
    if not -TS_LIMIT <= payload["ts"] < TS_LIMIT:
        return ident, CommandRefused(
            '"ts" does not fit: it is ms since the epoch, a 64-bit integer'
        )
    value = payload.get("value")
    if not isinstance(value, bool | int | float | str):
        got = "missing" if "value" not in payload else f"a {type(value).__name__}"
        return ident, CommandRefused(f'"value" must be a number, a boolean or a string, got {got}')
    extra = sorted(set(payload) - {"id", "device", "point", "value", "ts"})
    if extra:
        return ident, CommandRefused(f"unknown key(s): {', '.join(map(repr, extra))[:120]}")
    return ident, Command(ident, payload["device"], payload["point"], value, payload["ts"])


def payload_id(data: bytes, limit: int = MAX_PAYLOAD) -> Ident | None:
    """The payload's id, if it has a usable one, whatever else is wrong with it (a command's,
    a configuration push's: payloads over ``limit`` bytes are not read)."""
    try:
        return command_id(_json_loads(data)) if len(data) <= limit else None
    except Exception:  # not JSON: no id
        return None


def _json_loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except RecursionError:  # nested too deeply for the reader: read the deep parts as null
        return json.loads(flattened(data.decode("utf-8")))


def flattened(text: str, limit: int = MAX_DEPTH) -> str:
    """JSON ``text`` with each array or object nested deeper than ``limit`` replaced by
    ``null``, so that hostile nesting cannot hide a command's id (strings are left whole)."""
    out: list[str] = []
    depth = 0
    skipping = in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth == limit + 1 and not skipping:
                skipping = True
                out.append("null")
        elif char in "]}":
            depth -= 1
            if skipping and depth == limit:
                skipping = False
                continue  # the end of the container replaced
        if not skipping:
            out.append(char)
    return "".join(out)


def checked_value(point: PointConfig, value: Value) -> Value:
    """``value`` if ``point`` may take it (writable, a number within min/max); else refused."""
    if not point.writable:
        raise CommandRefused(f"{point.name} is not writable")
    if isinstance(value, str):
        if point.min is not None or point.max is not None:
            raise CommandRefused(f"{point.name} takes a number, not a string")
        return value
    _check_representable(value)
    # int against float compares exactly in Python: no conversion that could overflow
    if point.min is not None and value < point.min:
        raise CommandRefused(f"{_number(value)} is below {point.name}'s min {point.min:g}")
    if point.max is not None and value > point.max:
        raise CommandRefused(f"{_number(value)} is above {point.name}'s max {point.max:g}")
    return value


def _check_representable(value: int | float) -> None:
    """Refuse numbers no device register takes: NaN, infinities (JSON's ``1e400`` reads as
    inf) and integers beyond the range of a 64-bit float (``10**400`` as an integer literal)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CommandRefused(f"{value} does not fit any point: not a finite number")
    try:
        float(value)
    except OverflowError:
        raise CommandRefused(
            f"{_number(value)} does not fit any point: numbers go up to about ±1.8e308"
        ) from None


def _number(value: int | float) -> str:
    """A number for a message: a huge integer shortened (1.000e+400), not 401 digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**16:
        from decimal import Decimal  # only here: most gateways never need it

        return f"{Decimal(value):.3e}"
    return f"{value}"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON's \ud800 escapes can carry one)
        return False
    return True


def _escaped(text: str) -> str:
    """``text`` with what cannot be written as UTF-8 (lone surrogates) escaped."""
    return text if _utf8(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def shown(text: str) -> str:
    """A name from a command, safe in a reply and a log line: cut short, and with what cannot
    be written as UTF-8 (lone surrogates) escaped."""
    return _escaped(text if len(text) <= 80 else text[:80] + "…")


def refusal(ident: Ident, why: str) -> Reply:
    """A reply saying the command was not (or may not have been) carried out, and why."""
    return {"id": ident, "ok": False, "error": _escaped(why)}


def success(ident: Ident, value: Value) -> Reply:
    return {"id": ident, "ok": True, "value": _escaped(value) if isinstance(value, str) else value}


def internal_error(ident: Ident, exc: Exception) -> Reply:
    """For a command whose carrying out hit a bug: the traceback goes to the log."""
    return refusal(ident, f"internal error: {type(exc).__name__}")


def stopped_reply(ident: Ident) -> Reply:
    """For a copy of a command whose write was under way when the agent last stopped."""
    return refusal(
        ident,
        "was being carried out when the agent stopped: it may or may not have been made; "
        "not run again",
    )


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
    context = DriverContext(devices=(device,))
    driver = registry.build_driver(registry.load_driver(device.driver), bus, context)
    if not isinstance(driver, Writes):
        raise CommandRefused(f"device {device.name}: its driver cannot write")
    async with driver:
        try:
            await driver.write(device, point, value)
        except ValueError as exc:
            raise CommandRefused(f"{point.name}: {exc}") from None
        return read_back(await driver.read(device), point)


# --- the record of commands carried out


@dataclass
class _Remembered:
    ts: int
    #: Tells this entry from an older one of the same id in the heap.
    seq: int
    #: None while the write is under way.
    reply: Reply | None = None


class CommandRecord:
    """The commands carried out or under way, by id, each for as long as a copy of it could
    still pass the age check: until its ``ts`` + ``command_ttl`` has passed on the wall clock.

    At most MAX_REMEMBERED: beyond, the one sent earliest is forgotten. ``forgotten_before`` is
    the latest ``ts`` ever forgotten (expired, or pushed out): a command not remembered whose
    ``ts`` is not later may be a copy of a forgotten one, and is refused — which still holds if
    the wall clock steps back. Kept in ``path`` (None: in memory only) across restarts, written
    before each write goes out and again with its reply; a record that cannot be read stands for
    everything before this start forgotten.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[Ident, _Remembered] = {}
        #: (ts, seq, id), the earliest sent first: what expires, or is pushed out, next.
        self._by_ts: list[tuple[int, int, Ident]] = []
        self._seq = itertools.count()
        self.forgotten_before: int | None = None
        #: Whether ``forgotten_before`` stands for a record that could not be read.
        self._lost = False
        #: Monotonic time of this start while a lost record waits for a trusted wall clock.
        self._lost_at: float | None = None
        self._last_complaint = -LOG_EVERY

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, ident: Ident) -> _Remembered | None:
        return self._entries.get(ident)

    def load(self, now_ms: int | None, ttl_ms: float) -> None:
        """What the previous run remembered, less what expired since (when the clock tells)."""
        if self.path is None:
            return
        try:
            forgotten, lost, entries = _read_record(self.path)
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError) as exc:  # damaged, or unreadable
            log.error(
                "commands: cannot read %s (%s): which commands ran before this start is lost; "
                "commands sent before it will be refused",
                self.path,
                str(exc)[:200],
            )
            self._lost_at = time.monotonic()
            self.clock_trusted(now_ms)
            return
        if forgotten is not None:
            self._forget_up_to(forgotten, lost)
        for ident, ts, reply in entries:
            self._add(ident, ts, reply)
        self._keep_within_bound()
        if now_ms is not None:
            self.forget_expired(now_ms, ttl_ms)
        if self._entries:
            log.info("commands: %d recent command(s) remembered from %s", len(self), self.path)

    def clock_trusted(self, now_ms: int | None) -> None:
        """With a trusted wall clock, a lost record refuses what was sent before this start."""
        if now_ms is None or self._lost_at is None:
            return
        started_ms = now_ms - round((time.monotonic() - self._lost_at) * 1000)
        self._lost_at = None
        self._forget_up_to(started_ms - 1, lost=True)

    def forget_expired(self, now_ms: int, ttl_ms: float) -> None:
        """Forget what no copy could pass the age check for any more. Not written down: the
        next load drops the same entries."""
        self.clock_trusted(now_ms)
        while self._by_ts and now_ms - self._by_ts[0][0] > ttl_ms:
            self._forget_earliest()

    def refusal(self, ts: int) -> str | None:
        """Why a command sent at ``ts`` and not remembered may have run already, if it may."""
        if self.forgotten_before is None or ts > self.forgotten_before:
            return None
        if self._lost:
            return (
                "sent before this agent started, and the record of the commands carried out "
                f"before then was lost ({COMMANDS_FILE} could not be read): it may have run "
                "already; not run"
            )
        return (
            "older than the commands this agent still remembers: it may have run already; not run"
        )

    def under_way(self, ident: Ident, ts: int) -> None:
        """The write of command ``ident`` goes out now: on disk before it does."""
        self._add(ident, ts, None)
        self._keep_within_bound()
        self._save()

    def answered(self, ident: Ident, reply: Reply) -> None:
        entry = self._entries.get(ident)
        if entry is None:  # never under way, or pushed out since: forgotten_before covers it
            return
        entry.reply = reply
        self._save()

    def _add(self, ident: Ident, ts: int, reply: Reply | None) -> None:
        seq = next(self._seq)
        self._entries[ident] = _Remembered(ts, seq, reply)
        heapq.heappush(self._by_ts, (ts, seq, ident))

    def _keep_within_bound(self) -> None:
        while len(self._entries) > MAX_REMEMBERED:
            self._forget_earliest()

    def _forget_earliest(self) -> None:
        ts, seq, ident = heapq.heappop(self._by_ts)
        entry = self._entries.get(ident)
        if entry is not None and entry.seq == seq:
            del self._entries[ident]
            self._forget_up_to(ts, lost=False)

    def _forget_up_to(self, ts: int, lost: bool) -> None:
        if self.forgotten_before is None or ts > self.forgotten_before:
            self.forgotten_before, self._lost = ts, lost

    def _save(self) -> None:
        """Atomically: a temporary file, synced, renamed over the record (mode 0600)."""
        if self.path is None:
            return
        state = {
            "version": 1,
            "forgotten_before": self.forgotten_before,
            "record_lost": self._lost,
            "commands": [_entry_json(ident, e) for ident, e in self._entries.items()],
        }
        try:
            text = json.dumps(state, separators=(",", ":"))  # ASCII: lone surrogates escaped
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, text, 0o600, encoding="ascii")
        except (OSError, ValueError, TypeError) as exc:
            self._complain(
                f"commands: cannot write {self.path} ({exc}); remembering the commands carried "
                "out in memory only: a restart would forget them"
            )

    def _complain(self, message: str) -> None:
        """At most once a minute: a full or read-only card must not fill the journal."""
        now = time.monotonic()
        if now - self._last_complaint >= LOG_EVERY:
            self._last_complaint = now
            log.error("%s", message)


def _entry_json(ident: Ident, entry: _Remembered) -> dict[str, Any]:
    if entry.reply is None:
        return {"id": ident, "ts": entry.ts, "under_way": True}
    return {"id": ident, "ts": entry.ts, "reply": entry.reply}


def _read_record(path: Path) -> tuple[int | None, bool, list[tuple[Ident, int, Reply]]]:
    """``forgotten_before``, whether it stands for a lost record, and the entries, each with its
    reply (one under way when the agent stopped gets ``stopped_reply``). ``ValueError`` when the
    file is not such a record."""
    with path.open("rb") as file:
        data = file.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
    state = json.loads(data)
    if not isinstance(state, dict) or state.get("version") != 1:
        raise ValueError("not a record of commands (version 1)")
    forgotten = state.get("forgotten_before")
    if forgotten is not None and not _is_ts(forgotten):
        raise ValueError(f"forgotten_before is not a time: {str(forgotten)[:40]}")
    entries = state.get("commands")
    if not isinstance(entries, list):
        raise ValueError('no list of "commands"')
    return forgotten, state.get("record_lost") is True, [_read_entry(e) for e in entries]


def _read_entry(entry: Any) -> tuple[Ident, int, Reply]:
    ident = command_id(entry)
    if ident is None or not isinstance(entry, dict) or not _is_ts(entry.get("ts")):
        raise ValueError(f"not a command remembered: {str(entry)[:80]}")
    if entry.get("under_way") is True:
        return ident, entry["ts"], stopped_reply(ident)
    reply = entry.get("reply")
    if not isinstance(reply, dict) or reply.get("id") != ident:
        raise ValueError(f"command {shown(str(ident))}: no reply of its own")
    if reply.get("ok") is True and "value" in reply:
        value = reply["value"]
        if isinstance(value, bool | int | float | str):
            return ident, entry["ts"], success(ident, value)
    if reply.get("ok") is False and isinstance(reply.get("error"), str):
        return ident, entry["ts"], refusal(ident, reply["error"])
    raise ValueError(f"command {shown(str(ident))}: its reply is neither ok nor an error")


def _is_ts(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -TS_LIMIT <= value < TS_LIMIT


# --- carrying commands out


class Commands:
    """Carries out commands through the poll loop that owns each device's bus, one at a time
    per bus and ahead of its polls; remembers those carried out (``CommandRecord``); counts
    outcomes."""

    def __init__(
        self,
        config: Callable[[], Config],
        pollers: Callable[[], Sequence[BusPoller]],
        now_ms: Callable[[], int | None],
        data_dir: Path | None = None,
    ) -> None:
        self._config = config
        self._pollers = pollers
        #: The wall clock in ms, or None while it cannot be trusted (no NTP yet).
        self._now_ms = now_ms
        #: ``ok``, ``refused`` (never sent to a device), ``failed`` (the device refused or did
        #: not answer, or the agent failed), ``repeated`` (answered from memory).
        self.counts: Counter[str] = Counter()
        self.record = CommandRecord(data_dir / COMMANDS_FILE if data_dir is not None else None)
        # Loaded now: a record lost refuses commands sent before this moment, the agent's start.
        self.record.load(now_ms(), self._ttl_ms())
        #: Commands being carried out, by id: a copy arriving meanwhile awaits the first one's
        #: reply (None: the first ended before anything moved, so the copy is judged afresh).
        self._under_way: dict[Ident, asyncio.Future[Reply | None]] = {}

    async def handle(self, data: bytes, topic: str) -> Reply | None:
        """The reply to an MQTT command payload; None when it has no id to reply to. A bug
        anywhere costs the command an ``internal error`` reply and one traceback in the log."""
        try:
            return await self._handle(data, topic)
        except Exception as exc:
            ident = payload_id(data)
            self.counts["failed"] += 1
            log.exception("cmd %s on %s: internal error", shown(str(ident)), topic)
            return None if ident is None else internal_error(ident, exc)

    async def _handle(self, data: bytes, topic: str) -> Reply | None:
        ident, parsed = parse(data)
        if ident is None:
            self.counts["refused"] += 1
            log.warning("cmd on %s: refused: %s", topic, parsed)
            return None
        what = f"cmd {shown(str(ident))} on {topic}"
        while (first := self._under_way.get(ident)) is not None:
            reply = await asyncio.shield(first)
            if reply is not None:
                return self._repeated(what, reply)
        remembered = self._remembered(ident)
        if remembered is not None:
            return self._repeated(what, remembered)
        return await self._once(ident, parsed, what)

    async def refuse_busy(self, data: bytes, topic: str) -> Reply | None:
        """The reply to a command that came while too many were under way: not carried out."""
        ident, _ = parse(data)
        self.counts["refused"] += 1
        log.warning("cmd %s on %s: refused: too many commands at once", shown(str(ident)), topic)
        if ident is None:
            return None
        return refusal(ident, "busy: too many commands at once; send again")

    def _repeated(self, what: str, reply: Reply) -> Reply:
        self.counts["repeated"] += 1
        log.info("%s: repeated: answered again, not executed twice", what)
        return reply

    def _remembered(self, ident: Ident) -> Reply | None:
        now = self._now_ms()
        if now is not None:
            self.record.forget_expired(now, self._ttl_ms())
        entry = self.record.get(ident)
        if entry is None:
            return None
        # No reply and not under way here: only a bug could leave it so; still, not run twice.
        return entry.reply if entry.reply is not None else stopped_reply(ident)

    async def _once(self, ident: Ident, parsed: Command | CommandRefused, what: str) -> Reply:
        """Carry the command out, with copies arriving meanwhile waiting for its reply."""
        answer: asyncio.Future[Reply | None] = asyncio.get_running_loop().create_future()
        self._under_way[ident] = answer
        try:
            reply = await self._guarded(ident, parsed, what)
        except BaseException:  # cancelled (the agent stops): the reply made, if anything moved
            entry = self.record.get(ident)
            answer.set_result(entry.reply if entry is not None else None)
            raise
        finally:
            del self._under_way[ident]
        self.record.answered(ident, reply)
        answer.set_result(reply)
        return reply

    async def _guarded(self, ident: Ident, parsed: Command | CommandRefused, what: str) -> Reply:
        """A bug while carrying a command out costs it an ``internal error`` reply (and one
        traceback in the log), which is remembered like any other if its write went out."""
        try:
            return await self._carry_out(ident, parsed, what)
        except Exception as exc:
            self.counts["failed"] += 1
            log.exception("%s: internal error", what)
            return internal_error(ident, exc)

    async def _carry_out(self, ident: Ident, parsed: Command | CommandRefused, what: str) -> Reply:
        try:
            if isinstance(parsed, CommandRefused):
                raise parsed
            device, point = find_target(self._config(), parsed.device, parsed.point)
            value = checked_value(point, parsed.value)
            self._check_age(parsed.ts)
        except CommandRefused as exc:
            self.counts["refused"] += 1
            log.warning("%s: refused: %s", what, exc)
            return refusal(ident, str(exc))
        return await self._set(device, point, value, what, parsed)

    async def write_from_page(
        self, device_name: str, point_name: str, value: Value, client: str
    ) -> Reply:
        """A write asked for on the technician's page by ``client`` (its address): the checks of
        a command but its age (the page asks now, on the gateway itself), then the same write,
        log lines and counts. Not remembered: it has no id that a copy could carry."""
        return await self.write_direct(device_name, point_name, value, f"web write from {client}")

    async def write_direct(
        self,
        device_name: str,
        point_name: str,
        value: Value,
        what: str,
        sent_ms: int | None = None,
    ) -> Reply:
        """A write that is not a ``cmd`` (the page's, a Sparkplug DCMD's), said as ``what``: the
        checks of a command, its age only when ``sent_ms`` says when it was sent, then the same
        write, log lines and counts. Not remembered: it has no id that a copy could carry."""
        try:
            device, point = find_target(self._config(), device_name, point_name)
            value = checked_value(point, value)
            if sent_ms is not None:
                self._check_age(sent_ms)
        except CommandRefused as exc:
            self.counts["refused"] += 1
            log.warning("%s: refused: %s", what, exc)
            return refusal(what, str(exc))
        return await self._set(device, point, value, what)

    async def _set(
        self,
        device: DeviceConfig,
        point: PointConfig,
        value: Value,
        what: str,
        command: Command | None = None,
    ) -> Reply:
        """Write a checked value and read it back; the reply, logged and counted."""
        ident = command.id if command is not None else what
        old = self._last_value(device, point)
        log.info("%s: %s.%s = %r (was %r)", what, device.name, point.name, value, old)
        try:
            read_back = await self._write(command, device, point, value, what)
        except (CommandRefused, DeviceError, ValueError, TimeoutError) as exc:
            self.counts["failed" if isinstance(exc, DeviceError) else "refused"] += 1
            log.warning("%s: %s.%s not set: %s", what, device.name, point.name, exc)
            return refusal(ident, str(exc))
        self.counts["ok"] += 1
        log.info("%s: %s.%s set: read back %r", what, device.name, point.name, read_back)
        return success(ident, read_back)

    async def _write(
        self,
        command: Command | None,
        device: DeviceConfig,
        point: PointConfig,
        value: Value,
        what: str,
    ) -> Value:
        poller = next((p for p in self._pollers() if device.name in p.health), None)
        if poller is None:  # a reload took the device away meanwhile
            raise DeviceError(f"device {device.name}: not polled any more: the write was not made")
        went_out = False

        def going_out() -> None:  # called by the poll loop just before the write is sent
            nonlocal went_out
            went_out = True
            if command is not None:
                self.record.under_way(command.id, command.ts)

        try:
            poll = await poller.write(device, point, value, WRITE_WAIT, on_start=going_out)
        except ValueError as exc:  # the driver cannot encode it for that point
            raise CommandRefused(f"{point.name}: {exc}") from None
        except asyncio.CancelledError:
            # Still queued, the write was withdrawn: never made, nothing to remember. Once
            # sent, it may have been made, and a copy of the command must not make it again.
            if went_out:
                self._interrupted(command, device, point, what)
            raise
        return read_back(poll, point)

    def _interrupted(
        self, command: Command | None, device: DeviceConfig, point: PointConfig, what: str
    ) -> None:
        self.counts["failed"] += 1
        why = (
            f"device {device.name}: {point.name}: the agent stopped during the write: it may or "
            "may not have been made"
        )
        if command is None:
            log.warning("%s: %s", what, why)
            return
        reply = refusal(command.id, why + "; not run again")
        log.warning("%s: %s", what, reply["error"])
        self.record.answered(command.id, reply)

    def _check_age(self, ts: int) -> None:
        now = self._now_ms()
        if now is None:
            raise CommandRefused(
                "the gateway's clock is not set yet (no NTP): the command's age cannot be "
                "told, so it is not run"
            )
        ttl_ms = self._ttl_ms()
        if now - ts > ttl_ms:
            raise CommandRefused(
                f"expired: sent {(now - ts) / 1000:.0f}s ago, command_ttl is {ttl_ms / 1000:g}s"
            )
        if ts - now > ttl_ms:
            raise CommandRefused(
                f"sent {(ts - now) / 1000:.0f}s in the future: check the sender's clock"
            )
        why = self.record.refusal(ts)
        if why is not None:
            raise CommandRefused(why)

    def _ttl_ms(self) -> float:
        return self._config().mqtt.command_ttl * 1000

    def _last_value(self, device: DeviceConfig, point: PointConfig) -> Value | None:
        for poller in self._pollers():
            health = poller.health.get(device.name)
            if health is not None:
                return health.last_values.get(point.name)
        return None

    def summary(self) -> Mapping[str, int]:
        return dict(self.counts)
