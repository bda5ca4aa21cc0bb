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
A meter that does not answer its first request fails the poll at once, so a silent meter holds
the bus for one timeout; any other fault (checksum, abnormal reply, wrong address, garbled BCD,
a truncated frame) takes only that point, said in one line.
"""

from __future__ import annotations

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
        self.counters: dict[str, Counter[str]] = {}

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
        reply = await self._ask(device, protocol.read_request(asked, di), asked, protocol.READ_DATA)
        try:
            number = protocol.decode(protocol.value_bytes(reply, di, form.size), form)
        except ProtocolError:
            self._counters(device)["garbled"] += 1
            raise
        self._counters(device)["ok"] += 1
        return number

    async def read_address(self, device: DeviceConfig) -> str:
        """Read address (0x13) to ``AA…AA``: the address of the one meter on the bus."""
        reply = await self._ask(
            device, protocol.read_address_request(), protocol.WILDCARD, protocol.READ_ADDRESS
        )
        if len(reply.data) != 6:
            self._counters(device)["garbled"] += 1
            raise ProtocolError(f"a read-address reply of {len(reply.data)} byte(s), not 6")
        self._counters(device)["ok"] += 1
        return protocol.address_text(reply.data)

    async def _ask(
        self, device: DeviceConfig, request: bytes, asked: bytes, function: int
    ) -> protocol.Frame:
        """One request and its reply, checked; a fault counted by its kind (the caller counts
        ``ok`` once the value is decoded)."""
        counters = self._counters(device)
        try:
            raw = await self._transact(request, line_timeout(self.bus, device))
            reply = protocol.reply_to(raw, asked, function)
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
        return reply

    async def _transact(self, request: bytes, timeout: float) -> bytes:
        """Send ``request``; the first frame back that is a reply (an adapter that hears its own
        request gives that back first), within ``timeout``."""
        self._line.discard_stale(0.0)  # a meter speaks only when asked: older bytes are noise
        deadline = time.monotonic() + timeout
        await self._line.write(request, deadline)
        begun = bytearray()  # the frame under way, for a reply cut short

        def size(data: bytes) -> int | None:
            found = protocol.frame_size(data)
            begun[:] = data if found == 0 or (found and found > len(data)) else b""
            return found

        while True:
            try:
                raw = await self._line.read_frame(size, deadline)
            except TimeoutError:
                if begun:
                    raise TruncatedReply(
                        f"a reply cut short: {len(begun)} byte(s) within {timeout:g}s: "
                        f"{bytes(begun).hex(' ')}"
                    ) from None
                raise NoAnswer(
                    f"no answer within {timeout:g}s on {self.bus.serial_port} (check the "
                    "address, the wiring (A/B), 2400 8E1 and power)"
                ) from None
            if raw[8] & protocol.REPLY:
                return raw

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
