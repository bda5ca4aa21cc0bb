"""The Modbus driver: plans a device's points into as few reads as possible and decodes them.

One ``ModbusDriver`` owns one bus, and every device on it is a unit id behind it:

* ``modbus-tcp``: a TCP connection, MBAP frames;
* ``modbus-rtu``: a serial port (RS-485), opened exclusively so that two agents cannot both be the
  master of one line; RTU frames at the configured baud rate, parity, stop bits and byte size;
* ``modbus-rtu-over-tcp``: RTU frames through a TCP connection (serial servers, cheap gateways).

A ``modbus-tcp`` bus is spoken by ``mbap.MbapClient``, a lean asyncio protocol (pymodbus's
client cost more per request than the rest of a poll); the RTU buses by pymodbus, whose own
retries and reconnects are switched off. The scheduler decides when to retry and reconnects by
leaving and re-entering the driver. A ``modbus-tcp`` bus with ``pipeline = N`` takes the polls of
up to N devices at once (``polls_at_once``): their requests go out together and each answer is
matched by its transaction id. Otherwise transactions are paced: at least
``bus.request_gap`` of silence between the end of one transaction and the start of the next on the
bus, whatever device they belong to (slow slaves need it to turn their line driver around).

How a failed request is reported:

* an exception response (e.g. code 2, illegal data address) costs only that request's points: the
  poll carries an error and the other requests go on;
* no usable answer within the timeout (silence, a CRC error, a truncated frame, an answer from
  another unit) costs the rest of the poll: the unit is presumably gone or the line is bad, and
  waiting a full timeout per remaining request would hold up every other device on the bus;
* if nothing at all was read, ``read`` raises ``DeviceError`` (a ``DeviceError`` carrying the
  last raw frames exchanged with the device); if the port or connection itself is gone it raises
  ``BusError`` so that the scheduler reconnects with backoff.

Every message names the bus, the device and its unit; every request is counted per device in
``counters`` under one of ``FAULTS``. pymodbus drops a bad RTU frame silently (at most it logs)
and lets the request time out, so the category comes from our own look at the bytes that came
back during the request (``trace_packet``): nothing at all is a timeout, a frame of the right
length whose CRC does not match is ``crc``, a valid frame from another unit is ``wrong_unit``
(never taken as the answer), anything else — too short, an unknown function code, a frame pymodbus
cannot decode — is ``garbled``. On ``modbus-tcp`` an answer carrying another transaction id is
dropped too; when the answer to our request then never comes, the request is
``out_of_step``: a fault of that device (a stale answer, or a slave or gateway that mislabels its
answers), not of the connection, whose receive buffer starts empty at every request (every
batch, pipelined).

What came back before the answer to the request under way (a late answer of another request, the
tail of one that dripped in past its timeout) is skipped before the client reads the buffer:
pymodbus reads an RTU buffer as one frame and would drop ours with the late one, and MBAP frames
are read from the start of the buffer. So one slave's late answers do not cost the next device
its poll. A well-framed RTU answer pymodbus cannot decode is dropped too (pymodbus would raise it
out of its receive callback, where asyncio logs a traceback and closes the connection); on
``modbus-tcp`` an answer to the request that makes no sense ends it at once, ``garbled``.

Writes (``write``) go through the same machinery, one transaction each (two for a ``bit`` point:
the register is read, the bit changed, the register written back), paced and counted like reads:
a coil with FC 5, a one-register point with FC 6, a longer one with FC 16; ``write_multiple`` on
the bus sends FC 15/16 even for one coil or register, for slaves that lack FC 5/6. A value that
cannot be written to the point raises ``ValueError`` before anything is sent; an exception
response or no usable answer raises ``DeviceError`` (after no answer the write may or may not
have been made); a broken link ``BusError``.

A TCP connection is closed at the fifth request in a row without an answer it could take
(pymodbus's rule, ``retries + 3``, kept by ``MbapClient``: its way of detecting a half-open
link): polls of a dead unit, or of one that answers only nonsense, that nothing else on the
connection answers in between give ``DeviceError`` four times, then ``BusError``. A serial port
is never closed for silence.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import math
import os
import termios
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TextIO, TypeVar

from pymodbus.exceptions import (
    ConnectionException,
    ModbusException,
    ModbusIOException,
)
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

if TYPE_CHECKING:
    from pymodbus.client.base import ModbusBaseClient

from agent.api import (
    BusConfig,
    BusError,
    DeviceConfig,
    DeviceError,
    DriverContext,
    Keys,
    PointConfig,
    Poll,
    SimulateAt,
    Simulation,
    Value,
)

from . import schema
from .codec import apply_exponents
from .frames import (
    FrameRing,
    inspect_mbap,
    inspect_rtu,
    rtu_frame_size,
    skip_stale_bytes,
    skip_to_rtu_frame,
)
from .mbap import MAX_NO_RESPONSES, Garbled, MbapClient, NoAnswer, read_request, write_request
from .plan import DevicePlan, Request
from .ports import port_problem_message, serial_port_problem
from .schema import BIT_TABLES, ModbusPoint, Table, modbus_point, modbus_points, write_multiple
from .sunspec import NotSunSpec, Silent
from .sunspec_points import INTERNAL, Layout, Layouts, readings, sunspec_points
from .writes import (
    WRITE_COIL,
    WRITE_COILS,
    WRITE_REGISTER,
    WRITE_REGISTERS,
    Write,
    encode_write,
    plan_write,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
#: Exception codes that mean "no such registers here" to SunSpec discovery.
NOT_HERE = frozenset({ILLEGAL_ADDRESS, ILLEGAL_VALUE})

#: The highest unit id a Modbus device may have (248-255 are reserved).
MAX_UNIT = 247

#: The monotonic clock's resolution: how early asyncio may fire a timer.
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution


#: What each request of a device is counted as, in ``ModbusDriver.counters``.
FAULTS: tuple[str, ...] = (
    "ok",  # answered with the values asked for
    "exception",  # a Modbus exception response
    "timeout",  # nothing at all came back
    "crc",  # a frame whose CRC does not match
    "garbled",  # a truncated, undecodable or wrong-sized answer
    "wrong_unit",  # a valid answer from another unit id
    "out_of_step",  # TCP: only answers carrying other transaction ids came (not taken)
    "bus",  # the port or connection failed
    "unsendable",  # a request pymodbus refuses to encode
)

#: Meaning of the standard Modbus exception codes, for error messages.
EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}

#: Exception codes a gateway answers for a unit behind it that does not answer itself.
GATEWAY_CODES = frozenset({10, 11})

#: The function code that reads each table.
FUNCTION_CODES: dict[Table, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


class _Fault(Exception):
    """A request that failed while the bus works: ``cause`` says why, ``category`` counts it."""

    def __init__(
        self, where: str, cause: str, category: str = "garbled", code: int | None = None
    ) -> None:
        super().__init__(f"{where}: {cause}")
        self.cause = cause
        self.category = category
        self.code = code


class _RequestFailed(_Fault):
    """The device answered a request with an exception (``code``), or with something unusable."""


class _NoResponse(_Fault):
    """No usable answer came within the bus timeout."""


@dataclass
class _Exchange:
    """One request on the line, and what came back during it that could explain a failure."""

    device: DeviceConfig
    rtu: bool
    tid: int = 0
    heard: bool = False
    fault: str = ""
    cause: str = ""
    done: bool = False

    def sent(self, frame: bytes) -> None:
        if not self.rtu and len(frame) >= 2:
            self.tid = int.from_bytes(frame[:2], "big")

    def received(self, buffer: bytes) -> None:
        self.heard = True
        if self.fault == "out_of_step":
            return  # what follows a stray transaction id does not change the verdict
        unit = self.device.unit
        fault, cause = (
            inspect_rtu(buffer, unit) if self.rtu else inspect_mbap(buffer, unit, self.tid)
        )
        if fault:
            self.fault, self.cause = fault, cause

    def answer_part(self, buffer: bytes, in_flight: Collection[int] = ()) -> bytes:
        """What of a receive buffer the client should read: from the answer to this request
        on, or to any request ``in_flight`` (transaction ids, this one's among them)."""
        if self.rtu:
            return skip_to_rtu_frame(buffer, self.device.unit)
        return skip_stale_bytes(buffer, in_flight or (self.tid,))


class ModbusDriver:
    """A Modbus bus (TCP, RTU or RTU over TCP), polling the devices (unit ids) on it.

    ``tolerate_silence`` keeps the client from closing a TCP connection after a few unanswered
    requests: for ``scan``, where silence is the expected answer of most unit ids.
    """

    bus_types: ClassVar[tuple[str, ...]] = tuple(t.name for t in schema.BUS_TYPES)
    defines_buses = schema.BUS_TYPES
    bus_options = schema.BUS_OPTIONS
    device_options = schema.DEVICE_OPTIONS
    templates_dir: ClassVar[Path] = Path(__file__).parent / "templates"

    @classmethod
    def build_point(cls, common: PointConfig, keys: Keys) -> PointConfig | None:
        return schema.build_point(common, keys)

    @classmethod
    def check_points(
        cls, owner: str, mine: Sequence[PointConfig], points: Sequence[PointConfig]
    ) -> list[tuple[str, str, str]]:
        return schema.check_points(owner, mine, points)

    @classmethod
    def describe_point(cls, point: PointConfig) -> str:
        return schema.describe_point(point)

    def show_raw(self, point: PointConfig, raw: tuple[int, ...]) -> str:
        return schema.show_raw(point, raw)

    @classmethod
    async def scan(
        cls, bus: BusConfig, devices: Sequence[DeviceConfig], targets: str | None, out: TextIO
    ) -> list[str]:
        from .scan import parse_units, scan_units

        found = await scan_units(bus, parse_units(targets or "1-247"), out)
        return [str(unit) for unit in found]

    @classmethod
    def simulation(cls, bus: BusConfig, at: SimulateAt) -> Simulation:
        from .simulate import ModbusSimulation

        return ModbusSimulation(bus, at)

    @staticmethod
    def frame_size(data: bytes, request: bool) -> int | None:
        return rtu_frame_size(data, request=request)

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        """What the generic loader cannot know about Modbus: as ``(key path, message)`` pairs.

        The loader has already checked names, tables, types and the address space.
        """
        problems: list[tuple[str, str]] = []
        if bus.serial and not bus.serial_port:
            problems.append((f"bus.{bus.name}.port", f"is required for a {bus.type} bus"))
        if not bus.serial and not bus.host:
            problems.append((f"bus.{bus.name}.host", f"is required for a {bus.type} bus"))
        problems += _pipeline_problems(bus)
        for device in devices:
            if device.unit > MAX_UNIT:
                problems.append(
                    (f"device.{device.name}.unit", f"{device.unit} is out of range 0..{MAX_UNIT}")
                )
            if "sunspec_device" in device.options and not sunspec_points(device.points):
                problems.append(
                    (
                        f"device.{device.name}.sunspec_device",
                        "applies to a device with SunSpec points (sunspec = …, or a sunspec-… "
                        "template): remove it",
                    )
                )
        return problems

    def __init__(
        self,
        bus: BusConfig,
        context: DriverContext | None = None,
        *,
        tolerate_silence: bool = False,
    ) -> None:
        self.bus = bus
        self.context = context or DriverContext()
        self.tolerate_silence = tolerate_silence
        self._client: ModbusBaseClient | MbapClient | None = None
        self._plans: dict[str, DevicePlan] = {}
        self._sunspec = Layouts(self.context.state_dir, schema.merge_gap(bus))
        #: Put each point's raw registers in the Poll (for ``edge-agent read``).
        self.keep_raw = False
        #: Per device name, how its requests ended: counts of the ``FAULTS`` categories.
        self.counters: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self._rings: dict[str, FrameRing] = {}
        self._sunspec_devices: dict[str, tuple[DeviceConfig, bool]] = {}
        #: Polls of different devices the scheduler may have under way at once: requests
        #: pipelined on a Modbus TCP connection (``pipeline``), else one at a time.
        self.polls_at_once = schema.pipeline(bus) if bus.type == "modbus-tcp" else 1
        #: The exchange whose request was sent last, and those under way by transaction id
        #: (Modbus TCP): the trace hook files what it sees under them.
        self._exchange: _Exchange | None = None
        self._in_flight: dict[int, _Exchange] = {}
        self._down: asyncio.Future[None] | None = None  # resolved when the link drops
        self._turns = asyncio.Semaphore(self.polls_at_once)
        self._unit_locks: dict[int, asyncio.Lock] = {}
        self._last_end = -math.inf  # loop time the last transaction ended

    async def __aenter__(self) -> ModbusDriver:
        """Connect; raises ``BusError`` when the port or server cannot be opened or reached."""
        self._close()
        if self.bus.type == "modbus-tcp":
            self._client = await self._connect_mbap()
        else:
            self._client = await self._connect_pymodbus()
        self._down = asyncio.get_running_loop().create_future()
        return self

    async def _connect_mbap(self) -> MbapClient:
        silence = 1 << 30 if self.tolerate_silence else MAX_NO_RESPONSES
        client = MbapClient(self._trace_packet, self._trace_connect, silence, self.polls_at_once)
        try:
            await client.connect(self.bus.host, self.bus.port, self.bus.timeout)
        except OSError as exc:  # refused, unreachable, or TimeoutError
            client.close()
            raise BusError(self._why_not_connected()) from exc
        except BaseException:
            client.close()
            raise
        return client

    async def _connect_pymodbus(self) -> ModbusBaseClient:
        client = self._new_client()
        _drop_undecodable_answers(client)
        if self.tolerate_silence:
            client.set_max_no_responses(1 << 30)
        try:
            connected = await _guarded(client.connect())
        except termios.error as exc:  # the port refuses a line setting (7 data bits on a pty)
            client.close()
            from agent.api.serial import LineSettingsProblem

            raise BusError(LineSettingsProblem(self.bus)(exc)) from exc
        except (OSError, ModbusException) as exc:
            client.close()
            raise BusError(self._cannot_connect(str(exc))) from exc
        except BaseException:
            client.close()
            raise
        if not connected:
            client.close()
            raise BusError(self._why_not_connected())
        return client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect; never raises."""
        self._close()

    def plan(self, device: DeviceConfig) -> DevicePlan:
        """The device's reads, kept per device (and in the state dir) so that what its slave
        refuses is learned once."""
        plan = self._plans.get(device.name)
        if plan is None or (plan.device is not device and plan.device != device):
            state_dir = self.context.state_dir
            state = state_dir / f"{device.name}.modbus-plan.json" if state_dir else None
            plan = DevicePlan(device, self.bus, state, self.context.clock)
            self._plans[device.name] = plan
        return plan

    def describe(self, device: DeviceConfig) -> list[str]:
        """One line per read a poll of ``device`` makes."""
        if not sunspec_points(device.points):
            return self.plan(device).describe()
        known = self._sunspec.known(device)
        if known is None:
            return ["note: the SunSpec points are placed by discovery at the unit's first poll"]
        placed, layout = known
        lacking = [f"lacks {name} (not in the unit's SunSpec models)" for name in layout.missing]
        return [*self.plan(placed).describe(), *lacking]

    def _note(self, device: DeviceConfig, fault: Exception) -> None:
        """What was wrong with an exchange, beside its last frame in the device's ring."""
        ring = self._rings.get(device.name)
        if ring is not None:  # without what the ring's owner says already: bus, device, unit
            ring.note(str(fault).split(f"device {device.name} (unit {device.unit}): ", 1)[-1])

    def frames(self, device_name: str) -> tuple[str, ...]:
        """The last raw frames sent to and received from the device, oldest first."""
        ring = self._rings.get(device_name)
        return ring.lines() if ring else ()

    async def read(self, device: DeviceConfig) -> Poll:
        """Poll ``device`` once; see the module docstring for how failures are reported."""
        if not self._discovers(device):
            return await self._read(device, device, None)
        placed, layout = await self._discovered(device)
        try:
            return await self._read(device, placed, layout)
        except DeviceError:
            self._sunspec.forget(device)  # found again at the next poll: it may be another device
            raise

    def _discovers(self, device: DeviceConfig) -> bool:
        """Whether the device has SunSpec points, placed by discovery (asked at every poll:
        kept per device configuration)."""
        known = self._sunspec_devices.get(device.name)
        if known is None or known[0] is not device:
            known = (device, bool(sunspec_points(device.points)))
            self._sunspec_devices[device.name] = known
        return known[1]

    async def _discovered(self, device: DeviceConfig) -> tuple[DeviceConfig, Layout]:
        probe = ModbusPoint("sunspec")

        async def read(address: int, count: int) -> list[int] | None:
            try:
                raw = await self._execute(device, Request("holding", address, count, (probe,)))
            except _RequestFailed as exc:
                if exc.code in NOT_HERE:
                    return None
                raise self._device_error(device, str(exc)) from None  # busy, a gateway, garbage
            except _NoResponse as exc:
                raise Silent(str(exc)) from None
            return [int(r) for r in raw]

        try:
            return await self._sunspec.placed(device, read)
        except NotSunSpec as exc:
            raise self._device_error(
                device, f"device {device.name} (unit {device.unit}): {exc}"
            ) from None
        except Silent as exc:
            raise self._device_error(device, str(exc)) from None

    async def _read(
        self, device: DeviceConfig, placed: DeviceConfig, layout: Layout | None
    ) -> Poll:
        """One poll of ``placed``: ``device`` with its SunSpec points placed as ``layout`` says
        (which also says what the unit lacks, and the model ids that show its map unmoved);
        ``layout`` None for a device without SunSpec points."""
        values: dict[str, Value] = {}
        errors: list[str] = []
        raws: dict[str, tuple[int, ...]] = {}
        plan = self.plan(placed)
        plan.before_poll()
        pending = list(plan.requests)
        while pending:
            request = pending.pop(0)
            try:
                raw = await self._execute(device, request)
            except _RequestFailed as exc:
                # Illegal data value on a read of several points: most often a unit that takes
                # fewer registers per read than the protocol allows, so cut it like a hole.
                too_long = exc.code == ILLEGAL_VALUE and len(request.points) > 1
                self._note(device, exc)
                if exc.code == ILLEGAL_ADDRESS or too_long:
                    pending[:0] = plan.refused(request)  # its parts, read now
                    continue
                errors.append(str(exc))
                continue
            except _NoResponse as exc:
                self._note(device, exc)
                errors.append(str(exc))
                if pending:
                    errors.append(f"device {device.name}: {len(pending)} more request(s) not sent")
                break
            values.update(request.decode(raw, errors))
            if self.keep_raw:
                for point in request.points:
                    start = point.address - request.address
                    raws[point.name] = tuple(int(r) for r in raw[start : start + point.count])
        plan.after_poll()
        values = self._published(device, placed, layout, plan, values, errors)
        missing = (layout.missing if layout is not None else ()) + tuple(
            n for n in plan.lacking if not n.startswith(INTERNAL)
        )
        if not values and (errors or not plan.requests):
            said = "; ".join(errors) or _lacks_all(device, missing, bool(plan.lacking))
            raise self._device_error(device, said)
        if errors:
            log.debug("device %s: partial poll: %s", device.name, "; ".join(errors))
        return Poll(values=values, errors=tuple(errors), raw=raws, missing=missing)

    def _published(
        self,
        device: DeviceConfig,
        placed: DeviceConfig,
        layout: Layout | None,
        plan: DevicePlan,
        values: dict[str, Value],
        errors: list[str],
    ) -> dict[str, Value]:
        """What a poll publishes of the ``values`` it read: scaled by the points' scale factors,
        without SunSpec's own (raises ``DeviceError`` when they show the unit's map moved)."""
        moved = layout.moved(values) if layout is not None else None
        if moved:
            raise self._device_error(
                device,
                f"device {device.name} (unit {device.unit}): {moved}: its SunSpec map changed, "
                "found again at the next poll",
            )
        if plan.scaled_by_others:
            values = apply_exponents(plan.scaled_by_others, values, errors)
        if layout is not None:  # its scale factors and unset strings are left out
            values = readings(values, modbus_points(placed.points))
        return values

    async def write(self, device: DeviceConfig, point: PointConfig, value: Value) -> None:
        """Set ``point`` of ``device`` to ``value`` (see ``encode_write`` and ``plan_write``).

        A ``bit`` point is written read-modify-write: its register is read (FC 3), the bit set or
        cleared, the register written back; the other bits keep what was read, so a device that
        changes them itself in between loses that change. ``ValueError`` (nothing sent) when the
        value cannot be written to the point; ``DeviceError`` when the device refused or did not
        answer; ``BusError`` when the port or connection broke.
        """
        point = modbus_point(point)
        if all(p.name != point.name for p in device.points):
            raise ValueError(f"not a point of device {device.name}")
        raw = encode_write(point, value)
        where = f"device {device.name}: {point.name}"
        if point.bit is not None:
            request = Request(point.table, point.address, 1, (point,))
            try:
                (current,) = await self._execute(device, request)
            except _Fault as exc:
                raise self._device_error(
                    device,
                    f"{where}: cannot read {point.table} {point.address} to change bit "
                    f"{point.bit}: {_why(exc)}; nothing was written",
                ) from None
            raw = [int(current) & ~(1 << point.bit) | int(raw[0])]
        write = plan_write(point, raw, write_multiple(self.bus))
        try:
            await self._execute(device, write)
        except _RequestFailed as exc:
            if exc.code is not None:
                raise self._device_error(
                    device, f"{where}: the slave refused the write: {_exception_name(exc.code)}"
                ) from None
            made = (
                "nothing was written"
                if exc.category == "unsendable"
                else "it may or may not have been made"
            )
            raise self._device_error(
                device, f"{where}: the write failed: {exc.cause}; {made}"
            ) from None
        except _NoResponse as exc:
            raise self._device_error(
                device,
                f"{where}: the write was not confirmed by unit {device.unit} on bus "
                f"{self.bus.name}: {exc.cause}; it may or may not have been made",
            ) from None
        log.debug("device %s: wrote %r: %s", device.name, value, write.describe())

    async def probe(self, unit: int) -> tuple[str, str]:
        """Read holding register 0 of ``unit``: how it ended (a ``FAULTS`` category) and why.

        For ``scan``: any answer, even an exception response, means a device is there — except
        a gateway's exceptions 10 and 11, its way of saying nothing answered behind it, which
        count as "timeout".
        """
        point = ModbusPoint("probe")
        device = DeviceConfig(f"#{unit}", self.bus.name, "modbus", 1.0, unit=unit, points=(point,))
        try:
            await self._execute(device, Request("holding", 0, 1, (point,)))
        except _Fault as exc:
            category = "timeout" if exc.code in GATEWAY_CODES else exc.category
            return category, exc.cause
        return "ok", ""

    # --- one request ---------------------------------------------------------------------------

    async def _execute(
        self, device: DeviceConfig, request: Request | Write
    ) -> list[int] | list[bool]:
        """The raw registers or bits a read brought or a write set, or a _Fault or BusError;
        counted."""
        what = f"device {device.name} (unit {device.unit}): {request.table} {request.span}"
        try:
            raw = await self._request(device, request, what)
        except _Fault as exc:
            self._count(device, exc.category)
            raise
        except BusError:
            self._count(device, "bus")
            raise
        self._count(device, "ok")
        return raw

    async def _request(
        self, device: DeviceConfig, request: Request | Write, what: str
    ) -> list[int] | list[bool]:
        client = self._connected_client()
        where = f"bus {self.bus.name}, {what}"
        doing = "writing" if isinstance(request, Write) else "reading"
        exchange = _Exchange(device, rtu=self.bus.type != "modbus-tcp")
        try:
            response = await self._send(client, exchange, request)
        except ConnectionException as exc:
            raise BusError(self._lost(f"{exc}")) from exc
        except (ModbusIOException, NoAnswer, Garbled) as exc:
            # pymodbus does not fail a pending request when the connection drops: the request
            # times out, and only then do we see the connection is gone; either client closes
            # the connection itself after too many requests in a row without an answer it
            # could take (a half-open link).
            if not client.connected:
                raise BusError(self._lost(f"no response while {doing} {what}")) from exc
            if isinstance(exc, Garbled):
                raise _NoResponse(where, f"the answer makes no sense: {exc}", "garbled") from exc
            raise self._no_answer(where, exchange) from exc
        except ModbusException as exc:
            raise _RequestFailed(where, f"{exc}") from exc
        except ValueError as exc:  # pymodbus refuses to encode e.g. more than 125 registers
            raise _RequestFailed(where, f"cannot be sent: {exc}", "unsendable") from exc
        except OSError as exc:
            raise BusError(self._lost(f"while {doing} {what}: {exc}")) from exc
        if response is None:
            raise BusError(self._lost(f"the link dropped while {doing} {what}"))
        _check_origin(where, device, request, response)
        if isinstance(request, Write):
            return _confirmed(where, request, response)
        return _payload(where, request, response)

    async def _send(
        self, client: ModbusBaseClient | MbapClient, exchange: _Exchange, request: Request | Write
    ) -> ModbusPDU | None:
        if isinstance(client, MbapClient):
            send = _mbap_sender(client, exchange.device, request, self.bus.timeout)
            return await self._transact(exchange, send)
        sender = _sender(client, exchange.device, request)
        return await self._transact(exchange, sender, guard=True)

    async def _transact(
        self,
        exchange: _Exchange,
        send: Callable[[], Awaitable[ModbusPDU | None]],
        guard: bool = False,
    ) -> ModbusPDU | None:
        """One transaction, after ``request_gap`` of silence, watched by the trace hook; None
        when the link dropped during it. ``guard``: a pymodbus call, run as ``_guarded`` says.
        Up to ``polls_at_once`` are under way at once (a pipeline has no request gap)."""
        # Pipelined, one request per unit at a time: two under way to one unit could not be
        # told apart by a server that mislabels its answers' transaction ids.
        async with self._unit_turn(exchange.device.unit), self._turns:
            if self.bus.request_gap > 0:
                await self._pace()
            # The client traces the request before its first await: under this exchange.
            self._exchange = exchange
            try:
                return await (_guarded(send(), self._down) if guard else send())
            finally:
                exchange.done = True
                self._in_flight.pop(exchange.tid, None)
                self._last_end = asyncio.get_running_loop().time()

    def _unit_turn(self, unit: int) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.polls_at_once == 1:
            return contextlib.nullcontext()
        lock = self._unit_locks.get(unit)
        if lock is None:
            lock = self._unit_locks[unit] = asyncio.Lock()
        return lock

    async def _pace(self) -> None:
        """Wait until ``request_gap`` has passed since the last transaction ended."""
        left = self._last_end + self.bus.request_gap - asyncio.get_running_loop().time()
        if left > 0:
            # asyncio may fire a timer up to its clock's resolution early.
            await asyncio.sleep(left + _CLOCK_RESOLUTION)

    def _no_answer(self, where: str, exchange: _Exchange) -> _NoResponse:
        """The error for a request that ended without an answer the client would take."""
        if not exchange.heard:
            return _NoResponse(where, f"no response within {self.bus.timeout:g} s", "timeout")
        cause = exchange.cause or "an answer came but pymodbus could not decode it"
        return _NoResponse(where, cause, exchange.fault or "garbled")

    def _count(self, device: DeviceConfig, category: str) -> None:
        self.counters[device.name][category] += 1

    def _device_error(self, device: DeviceConfig, message: str) -> DeviceError:
        frames = self.frames(device.name)
        if frames:
            log.debug(
                "bus %s: device %s: last frames:\n  %s",
                self.bus.name,
                device.name,
                "\n  ".join(frames),
            )
        return DeviceError(message, frames)

    # --- the connection ------------------------------------------------------------------------

    def _new_client(self) -> ModbusBaseClient:
        """pymodbus's client for an RTU bus (on a serial port, or RTU frames over TCP).

        Imported here: pymodbus's clients bring pyserial, a megabyte that a gateway with only
        Modbus TCP buses does without."""
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

        bus = self.bus
        common: dict[str, Any] = {
            "name": f"bus {bus.name}",
            "timeout": bus.timeout,
            "retries": 0,  # the scheduler retries on its next poll
            "reconnect_delay": 0,  # and reconnects by re-entering the driver
            "trace_packet": self._trace_packet,
            "trace_connect": self._trace_connect,
        }
        if bus.type == "modbus-rtu":
            # pymodbus opens the port with pyserial's exclusive=True: one master per line.
            return AsyncModbusSerialClient(
                bus.serial_port,
                framer=FramerType.RTU,
                baudrate=bus.baudrate,  # pymodbus would default to 19200
                parity=bus.parity,
                stopbits=bus.stopbits,
                bytesize=bus.bytesize,
                **common,
            )
        return AsyncModbusTcpClient(bus.host, port=bus.port, framer=FramerType.RTU, **common)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """The client's hook for every frame sent and every receive buffer: keep and inspect."""
        exchange = self._exchange if sending else self._receiver(data)
        if exchange is None:  # pipelined, bytes of no request under way in front
            return skip_stale_bytes(data, self._in_flight) if self._in_flight else data
        try:
            # A late answer after its request ended still goes into that device's ring.
            ring = self._rings.get(exchange.device.name)
            if ring is None:
                ring = self._rings[exchange.device.name] = FrameRing()
            ring.add(sending, data)
            if not exchange.done:
                if sending:
                    exchange.sent(data)
                    if not exchange.rtu:
                        self._in_flight[exchange.tid] = exchange
                else:
                    exchange.received(data)
                    return exchange.answer_part(data, self._in_flight)
        except Exception:  # an error here would break the client's receive path
            log.exception("bus %s: cannot inspect a frame", self.bus.name)
        return data

    def _receiver(self, buffer: bytes) -> _Exchange | None:
        """The exchange a receive buffer belongs to: the one request under way, or the one
        whose transaction id it starts with (0: the oldest to the unit it names); the last one
        when none is under way (a late answer). None when several are under way and the
        buffer names none of them: no request is blamed for bytes that may be another's."""
        if not self._in_flight:
            return self._exchange
        if len(self._in_flight) == 1:
            return next(iter(self._in_flight.values()))
        tid = int.from_bytes(buffer[:2], "big") if len(buffer) >= 2 else -1
        if tid == 0 and len(buffer) >= 7:
            to_unit = (e for e in self._in_flight.values() if e.device.unit in (buffer[6], 0))
            return next(to_unit, None)
        return self._in_flight.get(tid)

    def _trace_connect(self, connected: bool) -> None:
        if not connected and self._down is not None and not self._down.done():
            self._down.set_result(None)

    def _connected_client(self) -> ModbusBaseClient | MbapClient:
        if self._client is None:
            raise BusError(self._lost("not connected"))
        if not self._client.connected:
            raise BusError(self._lost("the port or connection was closed"))
        return self._client

    def _close(self) -> None:
        client, self._client = self._client, None
        self._exchange = None
        self._in_flight.clear()
        if self._down is not None and not self._down.done():
            self._down.cancel()
        self._down = None
        if client is None:
            return
        try:
            client.close()
        except Exception:  # closing must never raise; losing a close error is harmless
            log.warning("bus %s: error while disconnecting", self.bus.name, exc_info=True)

    def _cannot_connect(self, reason: str) -> str:
        bus = self.bus
        return f"bus {bus.name}: cannot connect to {bus.address}: {reason}"

    def _why_not_connected(self) -> str:
        """pymodbus logs why a connect failed but does not return it: find out ourselves."""
        bus = self.bus
        if bus.serial:
            code, reason = serial_port_problem(bus.serial_port)
            return port_problem_message(bus.name, bus.serial_port, code, reason)
        return self._cannot_connect(f"refused, unreachable or no answer within {bus.timeout:g} s")

    def _lost(self, reason: str) -> str:
        bus = self.bus
        if bus.serial:
            if not os.path.exists(bus.serial_port):
                return port_problem_message(bus.name, bus.serial_port, errno.ENOENT, reason)
            return f"bus {bus.name}: lost {bus.serial_port}: {reason}; reopening"
        return f"bus {bus.name}: connection to {bus.address} lost: {reason}"


def _drop_undecodable_answers(client: ModbusBaseClient) -> None:
    """Make pymodbus drop a well-framed answer it cannot decode, as it drops a bad RTU frame:
    the request then times out and ``_Exchange`` tells why.

    pymodbus raises ``ModbusIOException`` out of its receive callback for such a frame. asyncio
    then logs "Fatal error: protocol.data_received() call failed" with a traceback and closes the
    connection; the message names the protocol object, new at every reconnect, so that no rate
    limit sees two alike: a slave answering garbage would flood the log and cost every device on
    the bus its connection.
    """
    manager = client.ctx
    receive = manager.callback_data

    def callback_data(data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        try:
            return receive(data, addr)
        except ModbusIOException:
            return len(data)  # all of it: what followed the frame is no better

    # setattr: mypy refuses an assignment to a method, and this one is the instance's own
    setattr(manager, "callback_data", callback_data)  # noqa: B010


async def _guarded(call: Awaitable[T], down: asyncio.Future[None] | None = None) -> T | None:
    """Await a pymodbus call in a task of its own; None if ``down`` resolved first.

    pymodbus can swallow a cancellation (its transaction manager, and ``asyncio.wait_for`` before
    Python 3.12, may return a result that raced with it). Our own task is never cancelled inside
    pymodbus, so a cancellation always reaches our caller. ``down`` ends the wait as soon as the
    link drops: pymodbus would let the request run into its timeout first.
    """
    inner = asyncio.ensure_future(call)
    inner.add_done_callback(_consume)
    waiting: set[asyncio.Future[Any]] = {inner} if down is None else {inner, down}
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        inner.cancel()
        await asyncio.wait({inner})  # let pymodbus release its lock before we go on
        raise
    if inner.done():
        return inner.result()
    inner.cancel()
    await asyncio.wait({inner})
    return None


def _lacks_all(device: DeviceConfig, missing: Sequence[str], refused: bool) -> str:
    if not refused:
        return (
            f"device {device.name}: the SunSpec models of unit {device.unit} lack every point "
            f"asked for ({', '.join(missing)}): check the unit id and the points' models"
        )
    return (
        f"device {device.name}: unit {device.unit} refuses every point asked for "
        f"({', '.join(missing)}: illegal data address): check the unit id and the register map"
    )


def _consume(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned call's exception as seen, so that asyncio does not log it."""
    if not task.cancelled():
        task.exception()


_Call = Callable[..., Awaitable[ModbusPDU]]


def _reader(client: ModbusBaseClient, table: Table) -> _Call:
    """The client method that reads ``table``."""
    readers: dict[Table, _Call] = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }
    return readers[table]


def _pipeline_problems(bus: BusConfig) -> list[tuple[str, str]]:
    if schema.pipeline(bus) == 1:
        return []
    where = f"bus.{bus.name}.pipeline"
    if bus.type != "modbus-tcp":
        return [
            (
                where,
                f"needs Modbus TCP's transaction ids: a {bus.type} bus takes one request at a "
                "time (remove it)",
            )
        ]
    if bus.request_gap > 0:
        return [(where, "keeps requests under way at once: request_gap cannot be kept with it")]
    return []


def _mbap_sender(
    client: MbapClient, device: DeviceConfig, request: Request | Write, timeout: float
) -> Callable[[], Awaitable[ModbusPDU | None]]:
    """What sends ``request`` to ``device`` over Modbus TCP when called (ValueError then, and
    nothing sent, for a request beyond the protocol's limits)."""
    if isinstance(request, Request):
        function = FUNCTION_CODES[request.table]
        return lambda: client.transact(
            device.unit, read_request(function, request.address, request.count), timeout
        )
    return lambda: client.transact(
        device.unit, write_request(request.function, request.address, request.values), timeout
    )


def _sender(
    client: ModbusBaseClient, device: DeviceConfig, request: Request | Write
) -> Callable[[], Awaitable[ModbusPDU]]:
    """What sends ``request`` to ``device`` when called."""
    unit = device.unit
    if isinstance(request, Request):
        read = _reader(client, request.table)
        return lambda: read(request.address, count=request.count, device_id=unit)
    address, values = request.address, request.values
    writers: dict[int, Callable[[], Awaitable[ModbusPDU]]] = {
        WRITE_COIL: lambda: client.write_coil(address, bool(values[0]), device_id=unit),
        WRITE_REGISTER: lambda: client.write_register(address, int(values[0]), device_id=unit),
        WRITE_COILS: lambda: client.write_coils(address, [bool(v) for v in values], device_id=unit),
        WRITE_REGISTERS: lambda: client.write_registers(
            address, [int(v) for v in values], device_id=unit
        ),
    }
    return writers[request.function]


def _check_origin(
    where: str, device: DeviceConfig, request: Request | Write, response: ModbusPDU
) -> None:
    """Refuse an answer that is not to this request (pymodbus checks only unit and tid)."""
    if device.unit and response.dev_id != device.unit:
        cause = f"an answer came from unit {response.dev_id} instead (not taken)"
        raise _NoResponse(where, cause, "wrong_unit")
    function = request.function if isinstance(request, Write) else FUNCTION_CODES[request.table]
    if response.function_code & 0x7F != function:
        cause = f"the answer is to function {response.function_code & 0x7F}, not {function}"
        raise _NoResponse(where, cause, "garbled")


def _check_refusal(where: str, response: ModbusPDU) -> None:
    """_RequestFailed for an exception response."""
    if response.isError():
        code = response.exception_code
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        raise _RequestFailed(where, f"Modbus exception {code} ({name})", "exception", code)


def _exception_name(code: int) -> str:
    """E.g. ``"illegal data address (exception 2)"``."""
    return f"{EXCEPTION_NAMES.get(code, 'unknown exception')} (exception {code})"


def _why(exc: _Fault) -> str:
    """Why a request failed, for a message that names the request itself."""
    if exc.code is not None:
        return f"the slave refused: {_exception_name(exc.code)}"
    return exc.cause


def _confirmed(where: str, write: Write, response: ModbusPDU) -> list[int] | list[bool]:
    """The values written, once the answer confirms them; _RequestFailed for an exception or an
    answer that confirms something else (the spec's answer echoes the address and the value of
    FC 5/6, the address and the count of FC 15/16)."""
    _check_refusal(where, response)
    echoed: list[tuple[str, object, object]] = [("address", response.address, write.address)]
    if write.function == WRITE_COIL:
        echoed.append(("value", bool(response.bits[0]) if response.bits else None, write.values[0]))
    elif write.function == WRITE_REGISTER:
        echoed.append(
            ("value", response.registers[0] if response.registers else None, write.values[0])
        )
    else:
        echoed.append(("count", response.count, len(write.values)))
    for name, got, sent in echoed:
        if got != sent:
            raise _RequestFailed(where, f"the answer confirms {name} {got}, not {sent}")
    return list(write.values)


def _payload(where: str, request: Request, response: ModbusPDU) -> list[int] | list[bool]:
    """The registers or bits of a response, or _RequestFailed for an exception or short answer."""
    _check_refusal(where, response)
    if request.table in BIT_TABLES:
        # Bits come packed in bytes: the response is padded to a multiple of 8.
        bits = list(response.bits)
        if len(bits) >= request.count:
            return bits[: request.count]
        got = len(bits)
    else:
        registers = list(response.registers)
        if len(registers) == request.count:
            return registers
        got = len(registers)
    raise _RequestFailed(where, f"answer has {got} values, {request.count} were asked for")
