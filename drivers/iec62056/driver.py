"""``iec62056``: electricity, heat and water meters read out by IEC 62056-21 mode C through an
optical head or an RS-485 adapter.

The head or adapter is a ``[[bus]]`` of ``type = "serial"`` at the sign-on speed, 300 baud 7E1
(the bus's line when its table writes none: ``line_defaults``); each meter is a device with
``driver = "iec62056"``. A poll is one data readout: the sign-on ``/?address!``, the meter's
identification, the option select that moves both ends to the fastest speed the meter offers
and the device allows, and the data block, its BCC checked. The port returns to the sign-on
speed after every readout.

Device keys:

* ``address`` — the meter's device address (up to 32 characters: digits, letters, spaces), for
  several meters on one RS-485 bus; without it any meter answers (an optical head: one meter).
* ``max_baudrate`` — the fastest speed to accept (default 9600; 300 to 19200).
* ``identification`` — the meter's ident as its identification line gives it after the baud
  character (``\\2ZMD3104407.B32``; with or without the ``\\W`` characters), or the whole line
  (``/LGZ5\\2ZMD3104407.B32``): a readout from a meter that says otherwise is refused. Without
  it, the identification of the first readout is remembered and a different one is refused
  until the agent restarts.
* ``line_timeout`` — how long to wait for the identification and for each part of the data
  block (default: the standard's: a meter may take 1.5 s to answer, plus the identification's
  time on the line; see ``identification_wait``).
* ``reaction_time`` — the wait between the identification and the option select (default
  200 ms, the least reaction time the standard gives a meter).
* ``readout_timeout`` — the longest a whole data block may take (default: the largest block's
  time at the readout speed, at least 120 s).
* ``break_on_failure`` — after a readout that failed once the meter had answered, send the break
  (SOH B0 ETX BCC) so that the next sign-on finds it idle (default true).

Point keys:

* ``obis`` — the identifier of its data line: ``"1.8.0"`` matches ``1.8.0``, ``1-0:1.8.0`` and
  ``1-0:1.8.0*255``; the full form ``"1-0:1.8.0"`` matches only that medium and channel;
  ``"1.8.0*01"`` the value of billing period 01.
* ``index`` — which value of a line with several, ``ID(v1)(v2)``, counted from 1 (default 1).
* ``type`` — ``"number"`` (default) or ``"string"`` (serial numbers, dates, error codes).

A point's ``unit``, when the data line carries one too, must be the same: a mismatch (``Wh``
for ``kWh``) is an error for that point, not a value published under the wrong unit.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TextIO

from agent.api import (
    BusConfig,
    DeviceConfig,
    DeviceError,
    DriverContext,
    PointConfig,
    Poll,
    SimulateAt,
    Simulation,
    Value,
    scaled,
)
from agent.api import keys as conv
from agent.api.keys import Convert
from agent.api.serial import SerialDriver, line_timeout

from . import protocol
from .protocol import DataSet, Identification, Obis, ProtocolError

log = logging.getLogger(__name__)

DEFAULT_MAX_BAUDRATE = 9600
DEFAULT_REACTION_TIME = 0.2
#: The least limit on a whole data block; a slow line gets the time its largest block takes.
DEFAULT_READOUT_TIMEOUT = 120.0
#: The longest a meter may take to start an answer, and to send its next character (the
#: standard's 1500 ms): what the waits default to at least.
REACTION_MAX = 1.5
#: The longest identification line: "/XXXZ", a \W sequence, 16 characters of ident, CR LF.
IDENTIFICATION_CHARS = 25
#: The largest data block taken: a meter that never sends ETX cannot fill the memory.
MAX_BLOCK = 65536
POINT_TYPES = ("number", "string")
#: An identification message among the bytes before a data block: a second meter answering.
_IDENTIFICATION = re.compile(rb"/[A-Za-z]{3}[!-~][ -~]*\r\n")
_ADDRESS_CHARACTERS = frozenset("0123456789 abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _address(value: Any) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    text = conv.text(text)
    if not 1 <= len(text) <= protocol.MAX_ADDRESS or not set(text) <= _ADDRESS_CHARACTERS:
        raise ValueError(
            f"{conv.shown(text)} is not a device address: 1 to 32 digits, letters or spaces "
            '(write it as a string, "00012345", to keep leading zeros)'
        )
    return text


def _baudrate(value: Any) -> int:
    rate = conv.integer(value)
    if rate not in protocol.BAUD_RATES:
        raise ValueError(
            f"{rate} is not a mode C speed: one of {', '.join(map(str, protocol.BAUD_RATES))}"
        )
    return rate


def _obis(value: Any) -> str:
    text = conv.text(value)
    if Obis.parse(text) is None:
        raise ValueError(
            f"{conv.shown(text)} is not an OBIS identifier: write C.D.E as the meter's readout "
            'does ("1.8.0", "0.9.1", "F.F"), or with medium and channel ("1-0:1.8.0")'
        )
    return text


def _index(value: Any) -> int:
    index = conv.integer(value)
    if not 1 <= index <= 99:
        raise ValueError("is the value's position in its line, counted from 1 (at most 99)")
    return index


def obis_of(point: PointConfig) -> Obis:
    obis = Obis.parse(str(point.options["obis"]))
    assert obis is not None  # checked when loaded
    return obis


class _Silent(TimeoutError):
    """No meter answered the sign-on."""


@dataclass(frozen=True)
class Readout:
    """One data readout: who answered, at what speed, and the data sets of its block."""

    identification: Identification
    baudrate: int
    data_sets: list[DataSet]
    bad_lines: list[str]


class Iec62056Driver(SerialDriver):
    """One optical head or RS-485 adapter; each poll of a device is one data readout."""

    driver_name: ClassVar[str] = "iec62056"
    #: Mode C's sign-on line: a bus of meters speaks it unless its table says otherwise.
    line_defaults: ClassVar[Mapping[str, Any]] = {
        "baudrate": 300,
        "bytesize": 7,
        "parity": "E",
        "stopbits": 1,
    }
    device_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "address": _address,
        "max_baudrate": _baudrate,
        "identification": conv.text,
        "line_timeout": conv.positive_duration,
        "reaction_time": conv.duration,
        "readout_timeout": conv.positive_duration,
        "break_on_failure": conv.boolean,
    }
    point_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "obis": _obis,
        "index": _index,
        "type": conv.one_of(*POINT_TYPES),
    }

    @classmethod
    async def scan(
        cls, bus: BusConfig, devices: Sequence[DeviceConfig], targets: str | None, out: TextIO
    ) -> list[str]:
        from .scan import scan_iec62056_bus

        return await scan_iec62056_bus(bus, devices, targets, out)

    @classmethod
    def simulation(cls, bus: BusConfig, at: SimulateAt) -> Simulation:
        from .simulate import Iec62056Simulation

        return Iec62056Simulation(bus, at)

    def __init__(self, bus: BusConfig, context: DriverContext | None = None) -> None:
        super().__init__(bus, context)
        #: Per device name: ``readouts``, ``no_answer``, ``bcc``, ``garbled``, ``truncated``,
        #: ``wrong_meter``, ``breaks`` sent.
        self.counters: dict[str, Counter[str]] = {}
        #: The identification of each device's first readout.
        self.identities: dict[str, Identification] = {}

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        problems = cls.bus_problems(bus)
        if bus.serial and bus.baudrate not in protocol.BAUD_RATES:
            problems.append(
                (
                    f"bus.{bus.name}.baudrate",
                    "is the sign-on speed: IEC 62056-21 mode C signs on at 300 (set "
                    'baudrate = 300, bytesize = 7, parity = "E")',
                )
            )
        problems.extend(_address_problems(devices))
        for device in devices:
            problems.extend(_point_problems(device))
        return problems

    def describe(self, device: DeviceConfig) -> list[str]:
        address = device.options.get("address", "")
        codes = ", ".join(dict.fromkeys(str(p.options["obis"]) for p in device.points))
        return [
            f"/?{address}! then the data readout up to {_max_baudrate(device)} baud, "
            f"for {len(device.points)} point(s): {codes}"
        ]

    async def read(self, device: DeviceConfig) -> Poll:
        """One data readout; each point is taken from the data line of its OBIS code."""
        readout = await self.readout(device, check_meter=True)
        self.identities.setdefault(device.name, readout.identification)
        values: dict[str, Value] = {}
        errors: list[str] = []
        for point in device.points:
            try:
                values[point.name] = point_value(point, readout.data_sets)
            except ValueError as exc:
                errors.append(f"device {device.name}: {point.name}: {exc}")
        if errors and not values:
            raise DeviceError("; ".join(errors))
        return Poll(values, tuple(errors))

    # --- the conversation

    async def readout(self, device: DeviceConfig, check_meter: bool = False) -> Readout:
        """Sign on, switch speed as the meter offers, and read the data block. ``DeviceError``
        naming the device and what went wrong; the port is back at the sign-on speed after.
        With ``check_meter``, a meter that is not the device's is refused at its
        identification."""
        counters = self._counters(device)
        try:
            readout = await self._converse(device, check_meter)
        except TimeoutError as exc:  # raised with the step that timed out as its message
            counters["no_answer" if isinstance(exc, _Silent) else "truncated"] += 1
            raise DeviceError(f"device {device.name}: {exc}") from None
        except ProtocolError as exc:
            counters["bcc" if isinstance(exc, protocol.BccError) else "garbled"] += 1
            raise DeviceError(f"device {device.name}: {exc}") from None
        counters["readouts"] += 1
        if readout.bad_lines:
            counters["garbled_lines"] += len(readout.bad_lines)
            log.debug("device %s: lines not understood: %s", device.name, readout.bad_lines)
        return readout

    async def _converse(self, device: DeviceConfig, check_meter: bool) -> Readout:
        self._line.discard_stale(0.0)  # a meter speaks only when asked: older bytes are noise
        await self._line.set_baudrate(self.bus.baudrate)
        timeout = answer_wait(self.bus, device)
        address = str(device.options.get("address", ""))
        sign_on = protocol.sign_on(address)
        await self._line.write(sign_on, time.monotonic() + timeout)
        try:
            identification = await self._identification(
                address, identification_wait(self.bus, device, len(sign_on))
            )
            if check_meter:
                self._check_meter(device, identification)
            rate = await self._select_speed(device, identification)
            block = await self._data_block(device, timeout, rate)
            text = protocol.unframe_block(block)
        except _Silent:
            raise  # nobody answered: no session to end
        except (TimeoutError, ProtocolError, DeviceError):
            await self._break(device)  # a meter mid-readout: end its session
            raise
        finally:
            await self._line.set_baudrate(self.bus.baudrate)
        data_sets, bad = protocol.data_sets(text)
        if not data_sets:
            raise ProtocolError(f"the data block holds no data line ({text[:60]!r})")
        return Readout(identification, rate, data_sets, bad)

    async def _identification(self, address: str, timeout: float) -> Identification:
        """The meter's identification line: an echo of the sign-on (a half-duplex adapter) and
        noise before it are skipped."""
        deadline = time.monotonic() + timeout
        sent = f"/?{address}!"
        while True:
            try:
                line = _printable(await self._line.read_line(b"\n", deadline))
            except TimeoutError:
                raise _Silent(
                    f"no identification within {timeout:.3g}s of the sign-on {sent} on "
                    f"{self.bus.serial_port} (check the head's position or the wiring, "
                    "the address, and that the bus signs on at 300 baud)"
                ) from None
            start = line.find("/")
            if start < 0 or sent in line:
                continue
            # From the first slash: a line with a second one is refused, as two meters
            # answering at once make it (a slash of noise costs that one readout).
            return Identification.parse(line[start:])

    async def _select_speed(self, device: DeviceConfig, identification: Identification) -> int:
        """Mode C: the option select, then the switch; mode B: the switch the letter names;
        mode A: none. Returns the speed of the data block."""
        offered = identification.max_baudrate or self.bus.baudrate
        if identification.mode == "B":
            await self._line.set_baudrate(offered)
            return offered
        if identification.mode == "A":
            return self.bus.baudrate
        rate = min(offered, _max_baudrate(device))
        await asyncio.sleep(float(device.options.get("reaction_time", DEFAULT_REACTION_TIME)))
        select = protocol.option_select(protocol.baud_character(rate))
        await self._line.write(select, time.monotonic() + line_timeout(self.bus, device))
        await self._line.set_baudrate(rate)  # once the acknowledgement is out, as the standard says
        return rate

    async def _data_block(self, device: DeviceConfig, timeout: float, rate: int) -> bytes:
        """``STX … ETX BCC``, waiting at most ``timeout`` for each part of it and
        ``readout_timeout`` for the whole; what comes before STX (an echo) is skipped."""
        whole = readout_wait(device, rate)
        end = time.monotonic() + whole
        received = bytearray()
        while True:
            start = received.find(protocol.STX)
            if _IDENTIFICATION.search(received[: start if start >= 0 else len(received)]):
                raise ProtocolError(
                    "a second identification came after the first: two meters answered the "
                    "sign-on (one of them ignores addresses, or two share one)"
                )
            etx = received.find(protocol.ETX, start + 1) if start >= 0 else -1
            if etx >= 0 and len(received) > etx + 1:
                return bytes(received[start : etx + 2])
            if len(received) > MAX_BLOCK:
                raise ProtocolError(f"no end (ETX) in the {MAX_BLOCK} bytes of the data block")
            deadline = min(time.monotonic() + timeout, end)
            try:
                received += await self._line.read_bytes(deadline)
            except TimeoutError:
                if deadline == end:
                    raise TimeoutError(
                        f"the data block took longer than {whole:g}s in all (readout_timeout): "
                        f"{len(received)} byte(s), no end (ETX) yet"
                    ) from None
                raise TimeoutError(_cut_short(received, start, etx, timeout)) from None

    async def _break(self, device: DeviceConfig) -> None:
        """The break, so that a meter left mid-readout is idle for the next sign-on."""
        if not device.options.get("break_on_failure", True):
            return
        await self._line.write(protocol.BREAK, time.monotonic() + line_timeout(self.bus, device))
        self._counters(device)["breaks"] += 1

    def _check_meter(self, device: DeviceConfig, identification: Identification) -> None:
        """Refuse a readout from another meter than the device's (one that ignores addresses,
        or an optical head moved): by the configured ident, else the first one seen."""
        expected = device.options.get("identification")
        if expected is not None:
            whole = str(identification)  # "/LGZ5\\2ZMR110CR4.A09", also taken without "/"
            if expected in (identification.ident, identification.model, whole, whole[1:]):
                return
            wanted = f"identification = {conv.shown(expected)}"
        else:
            first = self.identities.get(device.name, identification)
            if first == identification:
                return
            wanted = f"{first} as at its first readout"
        self._counters(device)["wrong_meter"] += 1
        raise DeviceError(
            f"device {device.name}: the meter that answered is {identification}, not "
            f"{wanted}: another meter answered (check the address; if the meter was replaced, "
            "set identification to the new one's)"
        )

    def _counters(self, device: DeviceConfig) -> Counter[str]:
        return self.counters.setdefault(device.name, Counter())


def _cut_short(received: bytearray, start: int, etx: int, timeout: float) -> str:
    if start < 0:
        return (
            f"no data block within {timeout:g}s of the option select (no STX): did the meter "
            "switch to the speed it offered?"
        )
    if etx < 0:
        size = len(received) - start
        return f"data block truncated: {size} byte(s), then nothing for {timeout:g}s and no ETX"
    return "data block truncated: ETX without its BCC"


def wire_time(chars: int, baudrate: int) -> float:
    """Seconds ``chars`` characters take on the line: 10 bits each (start, 7 data, parity,
    stop)."""
    return chars * 10 / baudrate


def answer_wait(bus: BusConfig, device: DeviceConfig) -> float:
    """How long to wait for a meter's next character: its ``line_timeout`` as configured, else
    the bus timeout but at least the standard's reaction time."""
    if "line_timeout" in device.options:
        return line_timeout(bus, device)
    return max(bus.timeout, REACTION_MAX)


def identification_wait(bus: BusConfig, device: DeviceConfig, sent: int) -> float:
    """How long the identification may take from the sign-on's write: its ``line_timeout`` as
    configured, else the sign-on's time on the line, the meter's reaction, and the longest
    identification's time on the line (at 300 baud, 2.5 s for a sign-on without an address)."""
    if "line_timeout" in device.options:
        return line_timeout(bus, device)
    rate = bus.baudrate
    return wire_time(sent, rate) + answer_wait(bus, device) + wire_time(IDENTIFICATION_CHARS, rate)


def readout_wait(device: DeviceConfig, rate: int) -> float:
    """The longest a whole data block may take: its ``readout_timeout``, else at least the
    time the largest block takes at ``rate`` (a heat meter at 300 baud needs minutes)."""
    if "readout_timeout" in device.options:
        return float(device.options["readout_timeout"])
    return max(DEFAULT_READOUT_TIMEOUT, wire_time(MAX_BLOCK, rate))


def point_value(point: PointConfig, data_sets: Sequence[DataSet]) -> Value:
    """The point's value from the first data set of its OBIS code; ``ValueError`` saying why
    there is none (absent, too few values, another unit, not a number)."""
    wanted = obis_of(point)
    found = next((s for s in data_sets if (o := s.obis) is not None and wanted.matches(o)), None)
    if found is None:
        raise ValueError(f"OBIS {point.options['obis']} is not in the readout")
    index = int(point.options.get("index", 1))
    if index > len(found.values):
        raise ValueError(f"{found.address} has {len(found.values)} value(s), none at index {index}")
    text, unit = found.values[index - 1]
    if point.unit and unit and unit != point.unit:
        raise ValueError(f"{found.address} is in {unit}, the point's unit is {point.unit}")
    if point.options.get("type", "number") == "string":
        return text
    return scaled(point, number(text, found.address))


def number(text: str, address: str) -> int | float:
    """A data line's value as a number: an integer when written without a decimal point."""
    try:
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise ValueError(
            f'{address} reads {conv.shown(text)}, not a number (type = "string" reads it as text)'
        ) from None


def _max_baudrate(device: DeviceConfig) -> int:
    return int(device.options.get("max_baudrate", DEFAULT_MAX_BAUDRATE))


def _printable(text: str) -> str:
    return "".join(c for c in text if " " <= c <= "~")


# --- validation


def _address_problems(devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
    problems = []
    seen: dict[str, str] = {}
    for device in devices:
        address = device.options.get("address")
        if address is None:
            if len(devices) > 1:
                problems.append(
                    (
                        f"device.{device.name}.address",
                        "is required when meters share a bus: without one every meter answers",
                    )
                )
            continue
        key = str(address).lstrip("0")  # meters may ignore leading zeros
        if key in seen:
            problems.append(
                (
                    f"device.{device.name}.address",
                    f"{address} is also device {seen[key]}'s: two meters on one bus need "
                    "different addresses",
                )
            )
        else:
            seen[key] = device.name
    return problems


def _point_problems(device: DeviceConfig) -> list[tuple[str, str]]:
    problems = []
    for point in device.points:
        at = f"device.{device.name}.point.{point.name}"
        if "obis" not in point.options:
            problems.append((f"{at}.obis", 'is required: the OBIS code of its line, "1.8.0"'))
        kind = point.options.get("type", "number")
        if kind == "string" and (point.scale != 1 or point.offset != 0):
            problems.append((f"{at}.type", "scale and offset apply to numbers, not to string"))
    return problems
