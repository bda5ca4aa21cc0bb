"""``sdi12``: SDI-12 sensors (soil moisture, water level, weather) on a 1200-baud single-wire bus,
through a serial adapter.

The adapter is a ``[[bus]]`` of ``type = "serial"``; each sensor is a device with
``driver = "sdi12"``. Several sensors share one bus: the agent talks to one at a time, and a
measurement holds the bus until its values are in (SDI-12 forbids talking to another sensor
meanwhile).

Device keys:

* ``address`` — the sensor's SDI-12 address: ``0`` to ``9``, or ``a`` to ``z``, ``A`` to ``Z``.
* ``adapter`` — ``"uart"`` (default): a plain UART adapter (RS-232/USB-serial with a level
  shifter); the bus must then be ``baudrate = 1200``, ``bytesize = 7``, ``parity = "E"``, and the
  agent sends the break and marking that wake the sensors and drops the echo of its own command
  (a single wire hears itself). ``"smart"``: an adapter that takes the command as text and does
  the timing itself (USB SDI-12 adapters); the bus's line settings are the adapter's.
  All devices on one bus name the same adapter.
* ``line_timeout`` — how long to wait for each answer (default: the bus ``timeout``).

Point keys:

* ``measurement`` — which measurement holds the value: ``"M"`` (default), ``"M1"``…``"M9"``, or
  the CRC-checked ``"MC"``, ``"MC1"``…``"MC9"``, as the sensor's manual lists them;
* ``index`` — the value's position in that measurement's answer, counted from 1 as manuals do.

``scale`` and ``offset`` apply as everywhere. A poll sends each measurement the device's points
use (``aM!``), waits the seconds the sensor announces — less when its service request comes
early — and collects the values with ``aD0!``, ``aD1!``… until all announced values are in. A
command without answer is sent again, three times in all; garbled answers and CRC mismatches
are counted and retried the same way.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TextIO, TypeVar

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
from agent.api.keys import Convert, suggest
from agent.api.serial import SerialDriver, line_timeout

from . import protocol
from .protocol import CrcError, Identification, ProtocolError

log = logging.getLogger(__name__)

#: The wake-up on a plain UART: break (≥ 12 ms), then marking (≥ 8.33 ms), with margins.
BREAK = 0.015
MARKING = 0.010
#: Tries per command: SDI-12 asks a data logger to retry at least twice more before giving up.
ATTEMPTS = 3
#: The line every SDI-12 sensor speaks: (setting, value) as a plain UART adapter must be set.
UART_LINE = (("baudrate", 1200), ("bytesize", 7), ("parity", "E"), ("stopbits", 1))
ADAPTERS = ("uart", "smart")
_Answer = TypeVar("_Answer")


def _address(value: Any) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or len(text) != 1 or text not in protocol.ADDRESSES:
        raise ValueError(f"{value!r} is not an SDI-12 address: one character, 0-9, a-z or A-Z")
    return text


def _measurement(value: Any) -> str:
    text = conv.text(value)
    if text not in protocol.MEASUREMENTS:
        raise ValueError(
            f'"{text}" is not a measurement{suggest(text, protocol.MEASUREMENTS)}: '
            "M, M1…M9, or with CRC MC, MC1…MC9"
        )
    return text


def _index(value: Any) -> int:
    index = conv.integer(value)
    if not 1 <= index <= 99:
        raise ValueError("is the value's position, counted from 1 (at most 99)")
    return index


def measurement_of(point: PointConfig) -> str:
    return str(point.options.get("measurement", "M"))


class Sdi12Driver(SerialDriver):
    """One SDI-12 adapter; each poll of a device runs its measurements one after the other."""

    driver_name: ClassVar[str] = "sdi12"
    device_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "address": _address,
        "adapter": conv.one_of(*ADAPTERS),
        "line_timeout": conv.positive_duration,
    }
    point_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "measurement": _measurement,
        "index": _index,
    }

    @classmethod
    async def scan(
        cls, bus: BusConfig, devices: Sequence[DeviceConfig], targets: str | None, out: TextIO
    ) -> list[str]:
        from .scan import scan_sdi12_bus

        adapters = [d.options.get("adapter", "uart") for d in devices]
        return await scan_sdi12_bus(bus, adapters[0] if adapters else "uart", out, targets or "")

    @classmethod
    def simulation(cls, bus: BusConfig, at: SimulateAt) -> Simulation:
        from .simulate import Sdi12Simulation

        return Sdi12Simulation(bus, at)

    def __init__(self, bus: BusConfig, context: DriverContext | None = None) -> None:
        super().__init__(bus, context)
        #: Per device name: ``timeouts``, ``garbled`` answers, ``crc`` mismatches, ``retries``,
        #: ``service_requests``, ``measurements`` completed.
        self.counters: dict[str, Counter[str]] = {}
        #: What each sensor said of itself (``aI!``), asked at the first poll.
        self.identities: dict[str, Identification] = {}

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        problems.extend(cls.bus_problems(bus))
        adapters = {d.options.get("adapter", "uart") for d in devices}
        if len(adapters) > 1:
            problems.append(
                (
                    f"device.{devices[-1].name}.adapter",
                    f"the devices on bus {bus.name} name adapters {' and '.join(sorted(adapters))}"
                    ": one adapter serves a bus, give them all the same",
                )
            )
        elif adapters == {"uart"}:
            problems.extend(_uart_line_problems(bus))
        problems.extend(_address_problems(devices))
        for device in devices:
            problems.extend(_point_problems(device))
        return problems

    def describe(self, device: DeviceConfig) -> list[str]:
        address = device.options["address"]
        return [
            f"{address}{m}! then {address}D0!… for {len(points)} value(s)"
            for m, points in _by_measurement(device).items()
        ]

    async def read(self, device: DeviceConfig) -> Poll:
        """Identify the sensor once, then run each measurement its points use."""
        if device.name not in self.identities:
            try:
                await self._identify(device)
            except ProtocolError as exc:
                raise DeviceError(f"device {device.name}: identification (I): {exc}") from None
        values: dict[str, Value] = {}
        errors: list[str] = []
        for measurement, points in _by_measurement(device).items():
            try:
                results = await self._measure(device, measurement)
            except ProtocolError as exc:  # an answer that made no sense: that measurement only
                errors.append(f"device {device.name}: {measurement}: {exc}")
                continue
            for point in points:
                index = int(point.options["index"])
                if index > len(results):
                    errors.append(
                        f"device {device.name}: {point.name}: measurement {measurement} gave "
                        f"{len(results)} value(s), none at index {index}"
                    )
                else:
                    values[point.name] = scaled(point, results[index - 1])
        if errors and not values:
            raise DeviceError("; ".join(errors))
        return Poll(values, tuple(errors))

    # --- the conversation

    async def identify(self, device: DeviceConfig, attempts: int = ATTEMPTS) -> Identification:
        """Who the sensor at the device's address is (``aI!``)."""
        address = device.options["address"]
        return await self._ask(device, "I", lambda a: Identification.parse(address, a), attempts)

    async def query_address(self, device: DeviceConfig) -> str | None:
        """The address of the one sensor on the bus (``?!``); None when none answers clearly
        (several sensors answer at once, into garbage). ``device`` gives the adapter."""
        try:
            return await self._ask(device, "", _lone_address, attempts=1, sent=b"?!")
        except (DeviceError, ProtocolError):
            return None

    async def _identify(self, device: DeviceConfig) -> None:
        identity = self.identities[device.name] = await self.identify(device)
        log.info(
            "device %s: SDI-12 sensor %s at address %s",
            device.name,
            identity,
            device.options["address"],
        )

    async def _measure(self, device: DeviceConfig, measurement: str) -> list[float]:
        """``aM!``, the wait, then ``aD0!``… until the announced values are in."""
        address = device.options["address"]
        seconds, count = await self._ask(
            device, measurement, lambda a: protocol.measurement_answer(address, a)
        )
        if seconds:
            await self._await_service_request(device, seconds)
        with_crc = "C" in measurement

        def data(answer: str) -> list[float]:
            body = protocol.strip_crc(answer) if with_crc else answer
            return protocol.data_values(address, body)

        values: list[float] = []
        for data_command in protocol.DATA_COMMANDS:
            if len(values) >= count:
                break
            more = await self._ask(device, data_command, data)
            if not more:
                break
            values += more
        if len(values) < count:
            raise ProtocolError(f"{len(values)} of the {count} values announced came")
        self._counters(device)["measurements"] += 1
        return values[:count]

    async def _await_service_request(self, device: DeviceConfig, seconds: int) -> None:
        """Until the sensor's service request (a bare ``a``) or the seconds it announced."""
        address = device.options["address"]
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = await self._line.read_line(b"\n", deadline)
            except TimeoutError:
                return
            if _printable(line) == address:
                self._counters(device)["service_requests"] += 1
                return
            self._counters(device)["garbled"] += 1

    async def _ask(
        self,
        device: DeviceConfig,
        body: str,
        parse: Callable[[str], _Answer],
        attempts: int = ATTEMPTS,
        sent: bytes = b"",
    ) -> _Answer:
        """Send ``body`` to the device (or ``sent`` as is) and parse the answer, ``attempts``
        times at most.

        No answer at all, every time: ``DeviceError`` (the sensor is not there). Answers that
        never made sense: ``ProtocolError`` with the last one.
        """
        counters = self._counters(device)
        sent = sent or protocol.command(device.options["address"], body)
        timeout = line_timeout(self.bus, device)
        problem: ProtocolError | None = None
        for attempt in range(attempts):
            if attempt:
                counters["retries"] += 1
            try:
                answer = await self._transact(device, sent, timeout)
            except TimeoutError:
                counters["timeouts"] += 1
                continue
            try:
                return parse(answer)
            except ProtocolError as exc:
                counters["crc" if isinstance(exc, CrcError) else "garbled"] += 1
                problem = exc
        if problem is not None:
            raise problem
        tried = "once" if attempts == 1 else f"{attempts} times"
        raise DeviceError(
            f"device {device.name}: no answer to {sent.decode()} within {timeout:g}s, tried "
            f"{tried}, on {self.bus.serial_port} (check the address, wiring and power)"
        )

    async def _transact(self, device: DeviceConfig, sent: bytes, timeout: float) -> str:
        """One command and its answer line, without the echo a single wire hears."""
        self._line.discard_stale(0.0)  # SDI-12 speaks only when asked: older bytes are noise
        if device.options.get("adapter", "uart") == "uart":
            await self._line.send_break(BREAK, MARKING)
            self._line.discard_stale(0.0)  # our own break reads back as a NUL
        deadline = time.monotonic() + timeout
        await self._line.write(sent, deadline)
        while True:  # an echo that came as a line of its own (or noise) is no answer yet
            answer = _without_echo(await self._line.read_line(b"\n", deadline), sent.decode())
            if answer:
                return answer

    def _counters(self, device: DeviceConfig) -> Counter[str]:
        return self.counters.setdefault(device.name, Counter())


def _without_echo(line: str, sent: str) -> str:
    """The answer in ``line``: after the echo of the command when there is one (a plain UART
    hears itself), without the noise of the line turning around."""
    at = line.find(sent)
    return _printable(line[at + len(sent) :] if at >= 0 else line)


def _lone_address(answer: str) -> str:
    if len(answer) != 1 or answer not in protocol.ADDRESSES:
        raise ProtocolError(f"{answer!r} is not an address")
    return answer


def _printable(text: str) -> str:
    return "".join(c for c in text if " " <= c <= "~")


def _by_measurement(device: DeviceConfig) -> dict[str, list[PointConfig]]:
    grouped: dict[str, list[PointConfig]] = {}
    for point in device.points:
        grouped.setdefault(measurement_of(point), []).append(point)
    return grouped


# --- validation


def _uart_line_problems(bus: BusConfig) -> list[tuple[str, str]]:
    for key, wanted in UART_LINE:
        if getattr(bus, key) != wanted:
            return [
                (
                    f"bus.{bus.name}.{key}",
                    "SDI-12 through a plain UART adapter runs at 1200 baud 7E1: set "
                    'baudrate = 1200, bytesize = 7, parity = "E" (or adapter = "smart" on its '
                    "devices, for an adapter that takes commands as text)",
                )
            ]
    return []


def _address_problems(devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
    problems = []
    seen: dict[str, str] = {}
    for device in devices:
        address = device.options.get("address")
        if address is None:
            problems.append((f"device.{device.name}.address", "is required: 0-9, a-z or A-Z"))
        elif address in seen:
            problems.append(
                (
                    f"device.{device.name}.address",
                    f"{address} is also device {seen[address]}'s: two sensors on one bus need "
                    "different addresses (set one with the sensor's aAb! command)",
                )
            )
        else:
            seen[address] = device.name
    return problems


def _point_problems(device: DeviceConfig) -> list[tuple[str, str]]:
    problems = []
    seen: dict[tuple[str, int], str] = {}
    for point in device.points:
        at = f"device.{device.name}.point.{point.name}"
        index = point.options.get("index")
        if index is None:
            problems.append((f"{at}.index", "is required: the value's position, from 1"))
            continue
        key = (measurement_of(point), int(index))
        if key in seen:
            problems.append(
                (f"{at}.index", f"{key[0]} value {key[1]} is already point {seen[key]}")
            )
        seen[key] = point.name
    return problems
