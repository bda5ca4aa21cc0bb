"""``serial-line``: sensors that speak lines of ASCII on a plain serial port (weather stations,
particle counters, level sensors, anything that prints ``T=21.4,H=55``).

Its devices sit on a ``[[bus]]`` of ``type = "serial"`` (keys ``port``, ``baudrate``, ``parity``,
``stopbits``, ``bytesize``, ``timeout``, ``request_gap``, as for ``modbus-rtu``) and say
``driver = "serial-line"``. Several devices may share one port: they are polled one at a time.

Device keys:

* ``command`` — text sent at each poll, e.g. ``"R\\r"``; the escapes ``\\r``, ``\\n``, ``\\t``,
  ``\\\\`` and ``\\xNN`` are decoded (so they work in TOML literal strings too). Without it the
  driver waits for the next line the sensor prints by itself.
* ``terminator`` — what ends a line (default ``"\\n"``; a ``\\r`` before it is dropped, so
  ``\\r\\n`` sensors need nothing; ``"\\r"`` for sensors that end lines with a carriage return).
* ``line_timeout`` — how long to wait for the line (default: the bus ``timeout``). Lines that
  arrived between polls are dropped, so for a sensor that prints on its own make it longer than
  the sensor's period.
* ``pattern`` — a Python regular expression with named groups, searched for in the line (anchor
  it with ``^…$`` to require a whole-line match); **or**
* ``delimiter`` — the separator of the line's fields, e.g. ``","``.

Point keys:

* ``group`` — with ``pattern``: the named group holding the value (default: the point's name);
* ``field`` — with ``delimiter``: the 0-based index of the field holding the value;
* ``type`` — ``"number"`` (default), ``"int"``, ``"string"`` or ``"bool"`` (1/0, true/false,
  on/off, yes/no); ``scale`` and ``offset`` apply to numbers and ints.

A line the pattern does not match (or with too few fields) is malformed: the poll fails, the
line is counted, and the last five are quoted in the error so that a technician sees what the
sensor says. A point whose group did not match, or whose text is not of its type, is an error
for that point only.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

# pyserial ships no types (types-pyserial is not a dependency): its few calls here are checked
# by the tests on real pseudo-terminals.
from agent.api import (
    BusConfig,
    DeviceConfig,
    DeviceError,
    DriverContext,
    PointConfig,
    Poll,
    Value,
    scaled,
)
from agent.api import keys as conv
from agent.api.keys import Convert, suggest
from agent.api.serial import SerialDriver, line_timeout

#: Malformed lines quoted per device in errors.
KEEP_MALFORMED = 5
#: Longest part of a malformed line quoted (a sensor gone mad may print kilobytes without an end).
QUOTE_CHARS = 80
POINT_TYPES = ("number", "int", "string", "bool")
TRUE_WORDS = frozenset({"1", "true", "on", "yes"})
FALSE_WORDS = frozenset({"0", "false", "off", "no"})
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.?)", re.DOTALL)
_SIMPLE_ESCAPES = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"\\": b"\\"}


def decode_escapes(text: str) -> bytes:
    """``text`` as bytes to send, with ``\\r \\n \\t \\\\ \\xNN`` decoded; other escapes are errors
    (a typo such as ``\\m`` must not reach a sensor as two characters)."""

    def one(match: re.Match[bytes]) -> bytes:
        escape = match.group(1)
        if escape.startswith(b"x") and len(escape) == 3:
            return bytes([int(escape[1:], 16)])
        if escape in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[escape]
        shown = escape.decode("utf-8", "replace")
        raise ValueError(f'"\\{shown}" is not an escape: use \\r, \\n, \\t, \\\\ or \\xNN')

    return _ESCAPE.sub(one, text.encode("utf-8"))


def _escaped_text(value: Any) -> str:
    conv.text(value)
    decode_escapes(value)
    return str(value)


def _terminator(value: Any) -> str:
    if not decode_escapes(_escaped_text(value)):
        raise ValueError('cannot be empty: e.g. "\\n" or "\\r"')
    return str(value)


def _pattern(value: Any) -> str:
    """A regular expression with at least one named group; kept as text (the config stays plain
    data), compiled by the driver (``re`` caches it)."""
    text = conv.text(value)
    try:
        compiled = re.compile(text)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression: {exc}") from None
    if not compiled.groupindex:
        raise ValueError(
            'has no named group: write the values as (?P<name>…), e.g. "T=(?P<t>\\S+)"'
        )
    return text


def _delimiter(value: Any) -> str:
    if not conv.text(value):
        raise ValueError('cannot be empty: e.g. ","')
    return str(value)


def _field(value: Any) -> int:
    index = conv.integer(value)
    if index < 0:
        raise ValueError("is a 0-based index: it cannot be negative")
    return index


class SerialLineDriver(SerialDriver):
    """One serial port; each poll of a device sends its command and parses the line that comes."""

    driver_name: ClassVar[str] = "serial-line"
    device_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "command": _escaped_text,
        "terminator": _terminator,
        "line_timeout": conv.positive_duration,
        "pattern": _pattern,
        "delimiter": _delimiter,
    }
    point_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "group": conv.name,
        "field": _field,
        "type": conv.one_of(*POINT_TYPES),
    }

    def __init__(self, bus: BusConfig, context: DriverContext | None = None) -> None:
        super().__init__(bus, context)
        #: Per device name: ``lines`` parsed, ``malformed`` lines, ``timeouts``.
        self.counters: dict[str, Counter[str]] = {}
        self._malformed: dict[str, deque[str]] = {}
        self._last_request = -float("inf")

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        problems.extend(cls.bus_problems(bus))
        for device in devices:
            problems.extend(_device_problems(device))
        return problems

    def describe(self, device: DeviceConfig) -> list[str]:
        command = device.options.get("command")
        wait = f"wait {line_timeout(self.bus, device):g}s for a line"
        return [f"send {command!r}, {wait}" if command else wait]

    async def read(self, device: DeviceConfig) -> Poll:
        """Send the device's command (if any), read one line and parse its points."""
        counters = self.counters.setdefault(device.name, Counter())
        timeout = line_timeout(self.bus, device)
        terminator = decode_escapes(device.options.get("terminator", "\n"))
        await self._quiet_gap()
        self._line.discard_stale(timeout)
        command = device.options.get("command")
        deadline = time.monotonic() + timeout
        try:
            if command:
                await self._line.write(decode_escapes(command), deadline)
            line = await self._line.read_line(terminator, deadline)
        except TimeoutError:
            counters["timeouts"] += 1
            asked = f"to {command!r} " if command else ""
            raise DeviceError(
                f"device {device.name}: no line {asked}within {timeout:g}s"
                f" on {self.bus.serial_port}"
            ) from None
        finally:
            self._last_request = time.monotonic()
        texts = _split(device, line)
        if texts is None:
            counters["malformed"] += 1
            kept = self._malformed.setdefault(device.name, deque(maxlen=KEEP_MALFORMED))
            kept.append(_quote(line))
            raise DeviceError(
                f"device {device.name}: malformed line ({counters['malformed']} so far); "
                f"last {len(kept)}: {', '.join(kept)}"
            )
        counters["lines"] += 1
        values: dict[str, Value] = {}
        errors: list[str] = []
        for point in device.points:
            key = _key(device, point)
            text = texts.get(key)
            if text is None:
                where = "group" if "pattern" in device.options else "field"
                errors.append(
                    f"device {device.name}: {point.name}: no {where} {key} in {_quote(line)}"
                )
                continue
            try:
                values[point.name] = _convert(point, text)
            except ValueError as exc:
                errors.append(f"device {device.name}: {point.name}: {exc}")
        if errors and not values:
            raise DeviceError("; ".join(errors))
        return Poll(values, tuple(errors))

    async def _quiet_gap(self) -> None:
        """Honour the bus's ``request_gap`` between one device's poll and the next."""
        wait = self._last_request + self.bus.request_gap - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)


# --- parsing


def _key(device: DeviceConfig, point: PointConfig) -> str:
    """The group name or field index (as text) that holds ``point``."""
    if "pattern" in device.options:
        return str(point.options.get("group", point.name))
    return str(point.options.get("field", ""))


def _split(device: DeviceConfig, line: str) -> dict[str, str] | None:
    """The line's values by group name or field index; None when the line is malformed."""
    pattern = device.options.get("pattern")
    if pattern is not None:
        match = re.search(pattern, line)
        if match is None:
            return None
        return {k: v for k, v in match.groupdict().items() if v is not None}
    fields = [f.strip() for f in line.split(device.options["delimiter"])]
    # A line shorter than the points need is a cut-off one, not a set of missing points.
    needed = max((int(p.options.get("field", 0)) for p in device.points), default=0)
    if len(fields) <= needed:
        return None
    return {str(i): f for i, f in enumerate(fields)}


def _convert(point: PointConfig, text: str) -> Value:
    kind = point.options.get("type", "number")
    if kind == "string":
        return text
    if kind == "bool":
        word = text.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError(f"{_quote(text)} is not a boolean (1/0, true/false, on/off, yes/no)")
    raw: float | int
    try:
        raw = int(text) if kind == "int" else float(text)
    except ValueError:
        raise ValueError(
            f"{_quote(text)} is not {'an int' if kind == 'int' else 'a number'}"
        ) from None
    return scaled(point, raw)


def _quote(text: str) -> str:
    return repr(text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "…")


def _device_problems(device: DeviceConfig) -> list[tuple[str, str]]:
    options, path = device.options, f"device.{device.name}"
    problems: list[tuple[str, str]] = []
    pattern = options.get("pattern")
    delimiter = options.get("delimiter")
    if pattern is not None and delimiter is not None:
        problems.append((f"{path}.delimiter", "a device has a pattern or a delimiter, not both"))
    elif pattern is None and delimiter is None:
        problems.append(
            (
                path,
                'needs a valid pattern (named groups, e.g. "T=(?P<t>\\S+)") '
                'or a delimiter (e.g. ",")',
            )
        )
        return problems
    groups = list(re.compile(pattern).groupindex) if pattern is not None else []
    for point in device.points:
        at = f"{path}.point.{point.name}"
        kind = point.options.get("type", "number")
        if kind in ("string", "bool") and (point.scale != 1 or point.offset != 0):
            problems.append((f"{at}.type", f"scale and offset apply to numbers, not to {kind}"))
        if pattern is not None:
            if "field" in point.options:
                problems.append((f"{at}.field", "applies with delimiter; with pattern use group"))
            group = str(point.options.get("group", point.name))
            if group not in groups:
                key = "group" if "group" in point.options else "name"
                problems.append(
                    (
                        f"{at}.{key}",
                        f'the pattern has no group "{group}"{suggest(group, groups)}; '
                        f"its groups: {', '.join(groups)}",
                    )
                )
        else:
            if "group" in point.options:
                problems.append((f"{at}.group", "applies with pattern; with delimiter use field"))
            if "field" not in point.options:
                problems.append((f"{at}.field", "is required with delimiter (a 0-based index)"))
    return problems
