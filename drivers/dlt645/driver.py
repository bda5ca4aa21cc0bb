"""``dlt645``: DL/T 645-2007 energy meters (China's grid standard) on an RS-485 bus, through a
serial adapter.

The adapter is a ``[[bus]]`` of ``type = "serial"``: the standard's line is 2400 baud 8E1
(write ``baudrate = 2400``, ``parity = "E"``: the bus table's own defaults are 9600 8N1); each
meter is a device with ``driver = "dlt645"``. Meters on one bus are asked one at a time.

Device keys:

* ``address`` — the meter's address as its nameplate prints it: 12 decimal digits, as a string
  (sent reversed, low byte first);
* ``line_timeout`` — how long to wait for each reply (default: the bus ``timeout``).

Point keys:

* ``di`` — the data identifier, 8 hex digits as the standard's tables write them, most
  significant first (``"02010100"``: phase A voltage);
* ``format`` — the value's format as those tables write it (``"XXX.XXX"``: six BCD digits,
  three decimals); required for an identifier this driver does not know (``protocol.KNOWN``);
* ``signed`` — whether the top bit of the value is its sign (default: as the standard says of
  a known identifier, even when the point gives its format, else false).

``scale`` and ``offset`` apply as everywhere. A poll reads each point's identifier (0x11) once.
A reply is the answer only if it comes from the address asked and echoes the request's
function and identifier; other frames (a late reply to an earlier request) are passed over
until the deadline: the timeout from when the request has left, plus the reply's time on the
wire. After a request that got no answer, the next waits for the line to be quiet; the bus's
``request_gap`` is kept between requests. A meter that does not answer its first request fails
the poll at once, so a silent meter holds the bus for one timeout; any other fault (checksum,
abnormal reply, wrong address, garbled BCD, a truncated frame) takes only that point, said in
one line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
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
from .protocol import AbnormalReply, AddressMismatch, ChecksumError, Format, ProtocolError

log = logging.getLogger(__name__)


class NoAnswer(Exception):
    """Nothing came back within the timeout."""


class TruncatedReply(ProtocolError):
    """A reply that began and stopped before its end."""


#: The line is quiet after this long without a byte (or ten characters' time, if longer).
QUIET = 0.05
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution


def char_time(bus: BusConfig) -> float:
    """How long one character takes on the bus's line: start bit, data, parity, stop bits."""
    return (1 + bus.bytesize + (bus.parity != "N") + bus.stopbits) / bus.baudrate


def quiet_time(bus: BusConfig) -> float:
    return max(QUIET, 10 * char_time(bus))


def line_text(bus: BusConfig) -> str:
    """The bus's line settings as a technician writes them: ``2400 8E1``."""
    return f"{bus.baudrate} {bus.bytesize}{bus.parity}{bus.stopbits}"


def meter_address(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise TypeError(
            f'write the address as a string: address = "{value:012d}" (a number loses the '
            "leading zeros the nameplate prints)"
        )
    text = conv.text(value).strip()
    if not (len(text) == 12 and text.isdigit() and text.isascii()):
        hint = (
            f': pad it with zeros in front as the nameplate prints it, "{text:0>12}"'
            if text.isdigit() and len(text) < 12
            else ""
        )
        raise ValueError(
            f"{conv.shown(text)} is not a meter address: 12 decimal digits, as on the "
            f"nameplate{hint}"
        )
    if text == protocol.BROADCAST:
        raise ValueError("999999999999 is the broadcast address: meters never answer it")
    return text


def _di(value: Any) -> str:
    return protocol.di_text(protocol.parse_di(conv.text(value)))


def _format(value: Any) -> str:
    return str(Format.parse(conv.text(value)))


def point_format(point: PointConfig) -> Format:
    """The point's format: its own ``format``/``signed``, else the standard's for its DI."""
    di = protocol.parse_di(str(point.options["di"]))
    known = protocol.known_format(di)
    text = point.options.get("format")
    form = Format.parse(text) if text else (known or Format(8))
    signed = point.options.get("signed", known.signed if known else False)
    return Format(form.digits, form.decimals, bool(signed))


class Dlt645Driver(SerialDriver):
    """The meters of one RS-485 bus; a poll reads each point's identifier once."""

    driver_name: ClassVar[str] = "dlt645"
    #: The standard's line: a bus of meters speaks it unless its table says otherwise.
    line_defaults: ClassVar[Mapping[str, Any]] = {
        "baudrate": 2400,
        "parity": "E",
        "bytesize": 8,
        "stopbits": 1,
    }
    device_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "address": meter_address,
        "line_timeout": conv.positive_duration,
    }
    point_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "di": _di,
        "format": _format,
        "signed": conv.boolean,
    }
    templates_dir: ClassVar[Path] = Path(__file__).parent / "templates"

    def __init__(self, bus: BusConfig, context: DriverContext | None = None) -> None:
        super().__init__(bus, context)
        #: Per device name: ``ok``, ``timeouts``, ``checksum``, ``abnormal``, ``wrong_address``,
        #: ``garbled`` replies (bad BCD, short or odd frames).
        #: ``stray`` counts the frames passed over as no answer to the request they came after.
        self.counters: dict[str, Counter[str]] = {}
        self._last_end = -float("inf")  # when the last transaction ended (time.monotonic)
        self._unsettled = False  # the last request got no answer: the meter may still speak

    # --- abilities

    @classmethod
    def describe_point(cls, point: PointConfig) -> str:
        di = str(point.options.get("di", ""))
        form = point_format(point)
        sign = " signed" if form.signed else ""
        return f"DI {di} {form}{sign} {point.unit}".rstrip()

    @classmethod
    async def scan(
        cls, bus: BusConfig, devices: Sequence[DeviceConfig], targets: str | None, out: TextIO
    ) -> list[str]:
        from .scan import scan_dlt645_bus

        known = [str(d.options["address"]) for d in devices if "address" in d.options]
        return await scan_dlt645_bus(bus, known, targets or "", out)

    @classmethod
    def simulation(cls, bus: BusConfig, at: SimulateAt) -> Simulation:
        from .simulate import Dlt645Simulation

        return Dlt645Simulation(bus, at)

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        problems.extend(cls.bus_problems(bus))
        problems.extend(_address_problems(devices))
        for device in devices:
            problems.extend(_point_problems(device))
        return problems

    def describe(self, device: DeviceConfig) -> list[str]:
        address = device.options["address"]
        return [
            f"read {di} ({', '.join(names)}) from {address}" for di, names in _by_di(device).items()
        ]

    # --- polling

    async def read(self, device: DeviceConfig) -> Poll:
        """Each identifier the points name, once; per-point errors unless nothing came."""
        values: dict[str, Value] = {}
        errors: list[str] = []
        read: dict[tuple[str, Format], int | float] = {}
        answered = False
        for point in device.points:
            di, form = str(point.options["di"]), point_format(point)
            try:
                if (di, form) not in read:
                    read[di, form] = await self.read_value(device, protocol.parse_di(di), form)
            except NoAnswer as exc:
                if not answered:  # a silent meter holds the bus for one timeout, not one per point
                    raise DeviceError(f"device {device.name}: {exc}") from None
                errors.append(f"device {device.name}: {point.name} (DI {di}): {exc}")
                continue
            except ProtocolError as exc:
                answered = True
                errors.append(f"device {device.name}: {point.name} (DI {di}): {exc}")
                continue
            answered = True
            values[point.name] = scaled(point, read[di, form])
        if errors and not values:
            raise DeviceError("; ".join(errors))
        return Poll(values, tuple(errors))

    async def read_value(self, device: DeviceConfig, di: int, form: Format) -> int | float:
        """Read data (0x11) of ``di`` from the device's meter, decoded in ``form``."""
        asked = protocol.address_bytes(str(device.options["address"]))
        request = protocol.read_request(asked, di)
        (reply,), _ = await self._ask(device, request, asked, protocol.READ_DATA, di, 4 + form.size)
        try:
            number = protocol.decode(protocol.value_bytes(reply, di, form.size), form)
        except ProtocolError:
            self._counters(device)["garbled"] += 1
            raise
        self._counters(device)["ok"] += 1
        return number

    async def read_address(self, device: DeviceConfig) -> str:
        """Read address (0x13) to ``AA…AA``: the address of the one meter on the bus."""
        (reply,), _ = await self._ask(
            device, protocol.read_address_request(), protocol.WILDCARD, protocol.READ_ADDRESS
        )
        return self._address_in(device, reply)

    async def read_addresses(self, device: DeviceConfig) -> tuple[list[str], int]:
        """Read address (0x13) to ``AA…AA``, listening for the whole timeout: the address in
        each whole reply heard, and how many other things came after the first (noise bytes,
        spoilt or stray frames, a frame cut short). A second address, or anything else after
        the first, is several meters answering."""
        replies, other = await self._ask(
            device,
            protocol.read_address_request(),
            protocol.WILDCARD,
            protocol.READ_ADDRESS,
            linger=True,
        )
        return [self._address_in(device, reply) for reply in replies], other

    def _address_in(self, device: DeviceConfig, reply: protocol.Frame) -> str:
        if len(reply.data) != 6:
            self._counters(device)["garbled"] += 1
            raise ProtocolError(f"a read-address reply of {len(reply.data)} byte(s), not 6")
        self._counters(device)["ok"] += 1
        return protocol.address_text(reply.data)

    async def _ask(
        self,
        device: DeviceConfig,
        request: bytes,
        asked: bytes,
        function: int,
        di: int | None = None,
        data_size: int = 6,
        *,
        linger: bool = False,
    ) -> tuple[list[protocol.Frame], int]:
        """One request and its reply (with ``linger``, every reply heard until the deadline),
        checked; a fault counted by its kind (the caller counts ``ok`` once the value is
        decoded)."""
        counters = self._counters(device)
        try:
            raws, other = await self._transact(
                device, request, asked, function, di, data_size, linger
            )
            replies = [protocol.reply_to(raw, asked, function) for raw in raws]
        except NoAnswer:
            counters["timeouts"] += 1
            raise
        except ChecksumError:
            counters["checksum"] += 1
            raise
        except AbnormalReply:
            counters["abnormal"] += 1
            raise
        except AddressMismatch:
            counters["wrong_address"] += 1
            raise
        except ProtocolError:
            counters["garbled"] += 1
            raise
        return replies, other

    async def _transact(
        self,
        device: DeviceConfig,
        request: bytes,
        asked: bytes,
        function: int,
        di: int | None,
        data_size: int,
        linger: bool,
    ) -> tuple[list[bytes], int]:
        """Send ``request``, after ``request_gap`` of silence (and, after a request that got no
        answer, once the line is quiet); the first frame back that answers it: from the address
        asked, a reply to its function and identifier. Other frames (an adapter that hears its
        own request gives that back; a meter's late reply to an earlier request) are passed
        over, a reply among them counted ``stray``. The wait is the device's timeout from when
        the request has left, plus the reply's time on the wire.

        With ``linger``, every answer until the deadline, and how many other things came after
        the first; else the one answer, and 0."""
        timeout = line_timeout(self.bus, device)
        await self._settle(timeout)
        await self._pace()
        self._line.discard_stale(0.0)  # a meter speaks only when asked: older bytes are noise
        char = char_time(self.bus)
        started = time.monotonic()
        try:
            await self._line.write(request, started + timeout)
            sent = max(time.monotonic(), started + len(request) * char)
            reply_size = len(protocol.PREAMBLE) + protocol.OVERHEAD + data_size
            deadline = sent + timeout + reply_size * char
            return await self._replies(device, asked, function, di, deadline, linger)
        except BaseException:
            self._unsettled = True  # no answer (or a cancelled wait): the meter may still speak
            raise
        finally:
            self._last_end = time.monotonic()

    async def _replies(
        self,
        device: DeviceConfig,
        asked: bytes,
        function: int,
        di: int | None,
        deadline: float,
        linger: bool,
    ) -> tuple[list[bytes], int]:
        """The frames answering the request until ``deadline`` (the first only, unless
        ``linger``), and how many other things came after the first; when none, what came
        instead raised."""
        quiet = quiet_time(self.bus)
        framer = protocol.Framer()
        answers: list[bytes] = []
        stray: list[ProtocolError] = []  # why each frame passed over is no answer
        after = 0  # stray frames after the first answer
        noise_before = 0  # the framer's noise count at the first answer
        while True:
            now = time.monotonic()
            spoilt = framer.spoilt is not None and not answers  # said once the line is quiet
            if now >= deadline or (spoilt and now >= framer.heard + quiet):
                break
            # Woken each quiet interval at least, to see whether a spoilt frame came.
            limit = min(deadline, (framer.heard if spoilt else now) + quiet)
            try:
                raw = await self._line.read_frame(framer, limit)
            except TimeoutError:
                continue
            if not raw[8] & protocol.REPLY:
                continue  # a request: the adapter's echo of ours
            wrong = self._passed_over(device, raw, asked, function, di)
            if wrong is not None:
                after += bool(answers)
                stray.append(wrong)
                continue
            if not linger:
                return [raw], 0
            noise_before = noise_before if answers else framer.noise
            answers.append(raw)
        if answers:
            return answers, after + framer.noise - noise_before + bool(framer.begun)
        raise self._no_answer(line_timeout(self.bus, device), framer, stray)

    def _passed_over(
        self, device: DeviceConfig, raw: bytes, asked: bytes, function: int, di: int | None
    ) -> ProtocolError | None:
        """Why the valid reply ``raw`` is no answer to the request (counted ``stray``), or
        None: it is one."""
        wrong = protocol.mismatch(protocol.parse_frame(raw), asked, function, di)
        if wrong is not None:
            self._counters(device)["stray"] += 1
            log.debug("bus %s: passed over a frame: %s: %s", self.bus.name, wrong, raw.hex(" "))
        return wrong

    def _no_answer(
        self, timeout: float, framer: protocol.Framer, stray: list[ProtocolError]
    ) -> Exception:
        """What to say of a request no frame answered: a spoilt reply (a bad CS, no 16), else
        one cut short, else a stray frame, else silence."""
        if framer.spoilt is not None:
            return framer.spoilt
        if framer.begun:
            return TruncatedReply(
                f"a reply cut short: {len(framer.begun)} byte(s) within {timeout:g}s: "
                f"{framer.begun.hex(' ')}"
            )
        if stray:
            return stray[-1]
        return NoAnswer(
            f"no answer within {timeout:g}s on {self.bus.serial_port} (check the address, "
            f"the wiring (A/B), the line ({line_text(self.bus)}) and power)"
        )

    async def _settle(self, timeout: float) -> None:
        """After a request that got no answer, until the line is quiet (a meter may still be
        sending: a request over it would be lost on a half-duplex pair), at most ``timeout``."""
        if not self._unsettled:
            return
        self._unsettled = False
        quiet = quiet_time(self.bus)
        bound = time.monotonic() + timeout
        heard = self._last_end
        while (limit := min(heard + quiet, bound)) > time.monotonic():
            try:
                late = await self._line.read_bytes(limit)
            except TimeoutError:
                break
            heard = time.monotonic()
            log.debug(
                "bus %s: %d byte(s) after the timeout: %s", self.bus.name, len(late), late.hex()
            )
        self._last_end = max(self._last_end, heard)

    async def _pace(self) -> None:
        """Until ``request_gap`` has passed since the last transaction ended."""
        left = self._last_end + self.bus.request_gap - time.monotonic()
        if left > 0:
            # asyncio may fire a timer up to its clock's resolution early.
            await asyncio.sleep(left + _CLOCK_RESOLUTION)

    def _counters(self, device: DeviceConfig) -> Counter[str]:
        return self.counters.setdefault(device.name, Counter())


def _by_di(device: DeviceConfig) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for point in device.points:
        grouped.setdefault(str(point.options.get("di")), []).append(point.name)
    return grouped


# --- validation


def _address_problems(devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
    problems = []
    seen: dict[str, str] = {}
    for device in devices:
        address = device.options.get("address")
        if address is None:
            problems.append(
                (
                    f"device.{device.name}.address",
                    'is required: the 12 digits on the meter\'s nameplate, e.g. "000012345678" '
                    "(`edge-agent scan` reads the address of a meter alone on the bus)",
                )
            )
        elif address in seen:
            problems.append(
                (
                    f"device.{device.name}.address",
                    f"{address} is also device {seen[address]}'s: two meters on one bus "
                    "need different addresses",
                )
            )
        else:
            seen[address] = device.name
    return problems


def _point_problems(device: DeviceConfig) -> list[tuple[str, str]]:
    problems = []
    for point in device.points:
        at = f"device.{device.name}.point.{point.name}"
        di = point.options.get("di")
        if di is None:
            problems.append((f"{at}.di", 'is required: the data identifier, e.g. di = "02010100"'))
        elif "format" not in point.options and protocol.parse_di(di) not in protocol.KNOWN:
            problems.append(
                (
                    f"{at}.format",
                    f"is required: {di} is not an identifier this driver knows; give its "
                    'format from the meter\'s manual, e.g. format = "XXX.XXX" (and signed = '
                    "true if its top bit is a sign)",
                )
            )
    return problems
