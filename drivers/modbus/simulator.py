"""Simulated Modbus slaves served by a real pymodbus server: over TCP, RTU over TCP, or RTU on a
serial port (a pseudo-terminal in tests and ``edge-agent simulate --pty``).

Used by ``edge-agent simulate``, the demo and the tests::

    slaves = slaves_for_bus(devices_on_bus)
    async with ModbusSimulator(slaves, host="127.0.0.1", port=5020, animate=True) as sim:
        ...  # poll 127.0.0.1:sim.port; sim.slaves[unit].set_value("voltage", 231.5)

    async with PtyLink() as link, ModbusSimulator(slaves, serial_port=link.paths[1]):
        ...  # a modbus-rtu bus on link.paths[0] reaches the slaves

Each ``SimulatedSlave`` holds a register image per table covering exactly its points' addresses,
like a real device: a request touching any other address is answered with Modbus exception 2
(illegal data address). A slave marked ``dead``, like an unknown unit id, does not answer at all,
so the client times out as it would on a real bus (pymodbus's stock server would send exception
4 or 11 instead). A ``slow`` slave answers that many seconds late; one given an ``exception``
code answers every request with it. The faults of a field bus's answers on the wire are the
slave's too: a stale transaction id (``wrong_tid``), a well-framed answer that does not parse
(``garbage``), line noise (``noise``), an answer dripping in a byte at a time (``drip``).

The server is pymodbus's ``ModbusTcpServer`` or ``ModbusSerialServer``; its datastore is replaced
by ``_SlaveContext``, which reads and writes the slaves' images directly, so nothing here uses the
deprecated datastore classes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import socket
import time
import zlib
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, NamedTuple

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerRTU, FramerSocket, FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from agent.api import DeviceConfig, Value

from .codec import decode, encode, int_range
from .frames import rtu_frame_size
from .ports import serial_port_problem
from .schema import BIT_TABLES, TABLES, ModbusPoint, Table, modbus_points

log = logging.getLogger(__name__)

#: Which table each function code the server passes to the datastore works on.
_FUNCTION_TABLES: dict[int, Table] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    3: "holding",
    6: "holding",
    16: "holding",
    22: "holding",  # mask write register
    23: "holding",  # read/write multiple registers
    4: "input",
}
#: Largest finite float32, bounding the animation of float points.
_FLOAT32_MAX = 3.4028234663852886e38
#: Seconds `ModbusSimulator.__aexit__` waits for the server's connections to close.
_CLOSE_TIMEOUT = 5.0
#: Frames `ModbusSimulator.frames` keeps.
_FRAME_LOG_SIZE = 10_000


class UndefinedAddressError(ValueError):
    """A register image access touched an address that no point of the slave covers."""


class SimulatedSlave:
    """One simulated device (unit id): its points and a register image per table.

    Set ``dead = True`` to make the slave stop answering, ``slow`` to a number of seconds to make
    it answer that late, ``exception`` to a Modbus exception code to make it answer every request
    with that exception, ``unsupported`` to function codes it answers with "illegal function"
    (a slave without FC 5/6), ``max_read`` to the most registers it takes per read.
    ``requests`` counts the requests it answered (exception responses included, spoilt answers
    too).

    Faults of the answer on the wire (each may be combined with the others):

    * ``wrong_tid = True``: Modbus TCP framing only: the answer carries the previous request's
      transaction id, as a stale answer does (never 0, which pymodbus would take for any);
    * ``garbage = True``: the answer's PDU (function code and data) is random bytes inside a
      sound envelope (the MBAP header; RTU: the unit id and a valid CRC), so that it reaches the
      client's decoder and does not parse, or parses to nonsense;
    * ``noise = True``: the whole answer is random bytes, envelope included (line noise);
    * ``drip`` seconds: the answer is sent a byte at a time with that gap between bytes, so that
      it arrives partly after the client's timeout, or barely within it.

    The random bytes come from ``random``, seeded by the unit id: set it to a
    ``random.Random(seed)`` of the test's own for other garbage, as reproducible.
    """

    def __init__(self, unit: int, points: Sequence[ModbusPoint]) -> None:
        self.unit = unit
        self.points: dict[str, ModbusPoint] = {p.name: p for p in points}
        if len(self.points) != len(points):
            raise ValueError(f"unit {unit}: point names must be unique")
        self.dead = False
        self.slow = 0.0
        self._exception: ExcCodes | None = None
        self.unsupported: set[int] = set()
        #: Most registers one read may ask for: a longer one is answered with exception 3
        #: (illegal data value), as units that take fewer than the protocol's 125 do.
        self.max_read: int | None = None
        self.wrong_tid = False
        self.garbage = False
        self.noise = False
        self.drip = 0.0
        self.random = random.Random(unit)
        self.requests = 0
        #: Points the animation leaves as they are (a SunSpec map's headers and scale factors).
        self.held: frozenset[str] = frozenset()
        # Every address a point covers starts at 0/False; overlapping points share addresses.
        self._images: dict[Table, dict[int, int | bool]] = {table: {} for table in TABLES}
        for point in points:
            blank: int | bool = False if point.table in BIT_TABLES else 0
            for address in range(point.address, point.address + point.count):
                self._images[point.table][address] = blank

    def __repr__(self) -> str:
        state = ", dead" if self.dead else ""
        return f"SimulatedSlave(unit={self.unit}, points={len(self.points)}{state})"

    def animate(self, t: float) -> None:
        """Every point (writable ones too) at its animated value at ``t`` seconds."""
        animate_slave(self, t, include_writable=True)

    @property
    def exception(self) -> int | None:
        """The exception code every request is answered with, or None to answer normally."""
        return self._exception

    @exception.setter
    def exception(self, code: int | None) -> None:
        if code is None:
            self._exception = None
            return
        try:
            self._exception = ExcCodes(code)
        except ValueError:
            known = ", ".join(str(int(c)) for c in ExcCodes)
            raise ValueError(
                f"unit {self.unit}: exception code {code} is not one of {known}"
            ) from None

    def point(self, name: str) -> ModbusPoint:
        """The point called ``name``; ``KeyError`` if the slave has none."""
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"unit {self.unit} has no point {name!r}") from None

    def set_value(self, point_name: str, value: Value) -> None:
        """Make the point read ``value`` (``ValueError`` if it does not fit the point's type)."""
        point = self.point(point_name)
        raw = encode(point, value)
        if point.bit is not None:  # one bit of a register other points may share
            (current,) = self.registers(point.table, point.address, 1)
            raw = [int(current) & ~(1 << point.bit) | int(raw[0])]
        self.set_registers(point.table, point.address, raw)

    def value(self, point_name: str) -> Value:
        """What a poll of the point currently reads."""
        point = self.point(point_name)
        return decode(point, self.registers(point.table, point.address, point.count))

    def set_registers(
        self, table: Table, address: int, values: Sequence[int] | Sequence[bool]
    ) -> None:
        """Overwrite the image from ``address`` on; registers must be 0..65535.

        Raises ``UndefinedAddressError`` (nothing written) if an address is not covered by a point.
        """
        image = self._images[table]
        self._check_defined(table, address, len(values))
        if table in BIT_TABLES:
            cleaned: list[int | bool] = [bool(v) for v in values]
        else:
            cleaned = [int(v) for v in values]
            if not all(0 <= v <= 0xFFFF for v in cleaned):
                raise ValueError(f"unit {self.unit}: registers must be 0..65535, got {values!r}")
        for offset, item in enumerate(cleaned):
            image[address + offset] = item

    def registers(self, table: Table, address: int, count: int) -> list[int] | list[bool]:
        """``count`` registers (ints) or bits (bools) of ``table`` from ``address``.

        Raises ``UndefinedAddressError`` if an address is not covered by a point.
        """
        self._check_defined(table, address, count)
        image = self._images[table]
        if table in BIT_TABLES:
            return [bool(image[a]) for a in range(address, address + count)]
        return [int(image[a]) for a in range(address, address + count)]

    def _check_defined(self, table: Table, address: int, count: int) -> None:
        image = self._images[table]
        missing = [a for a in range(address, address + count) if a not in image]
        if missing:
            raise UndefinedAddressError(f"unit {self.unit}: no point covers {table} {missing[0]}")


def slaves_for_bus(devices: Sequence[DeviceConfig]) -> list[SimulatedSlave]:
    """One slave per device of a bus (its unit id and points), with the animation's t=0 values.

    Two devices with the same unit id give two slaves with that id, which ``ModbusSimulator``
    refuses.
    """
    slaves = [SimulatedSlave(device.unit, modbus_points(device.points)) for device in devices]
    for slave in slaves:
        animate_slave(slave, 0.0, include_writable=True)
    return slaves


def animate_slave(slave: SimulatedSlave, t: float, *, include_writable: bool = False) -> None:
    """Set the slave's points to their animated values at ``t`` seconds.

    Numbers follow a slow sine between the point's ``min`` and ``max`` (or a range suited to the
    type when unset), but a total (an energy or volume, by its unit or name) only grows, as a
    meter's register does; bools toggle every 5-20 s; strings read ``"SIM-<unit>"``. The period
    and phase come from the point's name, so points move differently but reproducibly. Writable
    points are skipped unless ``include_writable``: they keep what a client wrote.
    """
    for point in slave.points.values():
        if (point.writable and not include_writable) or point.name in slave.held:
            continue
        if point.type == "string":
            slave.set_value(point.name, f"SIM-{slave.unit}"[: point.length])
        elif point.table in BIT_TABLES or point.type == "bool":
            slave.set_value(point.name, _toggling(point.name, t))
        else:
            raw = _total_raw(point, t) if is_total(point) else _sine_raw(point, t)
            # Written unscaled so that rounding and scaling cannot push it out of range.
            slave.set_registers(point.table, point.address, encode(_unscaled(point), raw))


#: Units of what a meter counts up: energy and volume.
TOTAL_UNITS = frozenset(
    {"wh", "kwh", "mwh", "varh", "kvarh", "vah", "kvah", "m³", "m3", "l", "gal"}
)


def is_total(point: ModbusPoint) -> bool:
    """Whether ``point`` counts up (an energy or volume total), by its unit or its name."""
    name = point.name.lower()
    return point.unit.lower() in TOTAL_UNITS or "total" in name or "energy" in name


def _total_raw(point: ModbusPoint, t: float) -> int | float:
    """A raw count that grows by one to three raw steps a second (by the point's name) from a
    start set by its name, up to its ``max`` or just below its type's top, where it stays."""
    seed = zlib.crc32(point.name.encode())
    low, high = _raw_range(point)
    if point.max is None:
        high = _FLOAT32_MAX if point.type in ("float32", "float64") else int_range(point.type)[1]
    raw = min(max(low, 0.0) + seed % 1000 + t * (1 + seed % 3), high)
    if point.type in ("float32", "float64"):
        return raw
    return min(int(raw), int_range(point.type)[1] - 1)  # the top is often "not available"


def _toggling(name: str, t: float) -> bool:
    seed = zlib.crc32(name.encode())
    period = 5 + seed % 16
    return (int(t / period) + seed) % 2 == 1


def _sine_raw(point: ModbusPoint, t: float) -> int | float:
    """A raw value moving along a sine with a 60-180 s period, within the point's raw range."""
    seed = zlib.crc32(point.name.encode())
    low, high = _raw_range(point)
    period = 60 + seed % 121
    phase = (seed % 360) * math.pi / 180
    level = 0.5 + 0.5 * math.sin(2 * math.pi * t / period + phase)
    raw = min(max(low + (high - low) * level, low), high)
    if point.type in ("float32", "float64"):
        return raw
    # Clamped again as an int: float bounds are inexact (float(2**63 - 1) is 2**63).
    type_low, type_high = int_range(point.type)
    return min(max(round(raw), type_low), type_high)


def _raw_range(point: ModbusPoint) -> tuple[float, float]:
    """The raw values to animate between: ``min``/``max`` unscaled, else a plausible default."""
    # Signed integers are often temperatures; floats and unsigned ones mostly positive quantities.
    signed = point.type in ("int16", "int32", "int64")
    default_low, default_high = (-500.0, 500.0) if signed else (0.0, 1000.0)
    scale = point.scale or 1.0
    low = default_low if point.min is None else (point.min - point.offset) / scale
    high = default_high if point.max is None else (point.max - point.offset) / scale
    if point.type in ("float32", "float64"):
        type_low, type_high = -_FLOAT32_MAX, _FLOAT32_MAX  # float64 needs no more than this
    else:
        type_low, type_high = (float(n) for n in int_range(point.type))
    # Clamped into the type's range, so that even a nonsensical min/max stays encodable.
    low, high = (min(max(v, type_low), type_high) for v in (low, high))
    return min(low, high), max(low, high)


def _unscaled(point: ModbusPoint) -> ModbusPoint:
    return replace(point, scale=1.0, offset=0.0)


class _SlaveContext(SimCore):
    """The server's datastore: routes each request to the image of the addressed slave."""

    def __init__(self, slaves: Mapping[int, SimulatedSlave]) -> None:
        # SimCore.__init__ would build SimDevice runtimes we do not use.
        self._slaves = slaves

    def device_ids(self) -> list[int]:
        return list(self._slaves)

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        slave = self._slave(device_id)
        if slave.exception is not None:
            return ExcCodes(slave.exception)
        table = _FUNCTION_TABLES.get(func_code)
        if table is None or func_code in slave.unsupported:
            return ExcCodes.ILLEGAL_FUNCTION
        if slave.max_read is not None and count > slave.max_read:
            return ExcCodes.ILLEGAL_VALUE
        try:
            return slave.registers(table, address, count)
        except UndefinedAddressError:
            return ExcCodes.ILLEGAL_ADDRESS

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        slave = self._slave(device_id)
        if slave.exception is not None:
            return ExcCodes(slave.exception)
        table = _FUNCTION_TABLES.get(func_code)
        if table not in ("coil", "holding") or func_code in slave.unsupported:
            return ExcCodes.ILLEGAL_FUNCTION
        try:
            slave.set_registers(table, address, values)
        except UndefinedAddressError:
            return ExcCodes.ILLEGAL_ADDRESS
        except ValueError:
            return ExcCodes.ILLEGAL_VALUE
        log.debug("unit %d: client wrote %s %d: %s", device_id, table, address, values)
        return None

    def _slave(self, device_id: int) -> SimulatedSlave:
        slave = self._slaves.get(device_id)
        if slave is None or slave.dead:
            # With ignore_missing_devices the server then sends nothing: the client times out.
            raise NoSuchIdException(f"unit {device_id} does not answer")
        return slave


class _Connection(ServerRequestHandler):
    """A server-side connection that tells when it is closed, and answers each request in a task
    of its own, so that a slow slave's late answer still belongs to its request.

    (pymodbus answers from ``self.last_pdu`` after the datastore returns: a request arriving
    meanwhile would get the late answer's transaction id and lose its own answer.)
    """

    def __init__(self, server: _Server | _SerialServer) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            server, server.trace_packet, server.trace_pdu, server.trace_connect
        )
        self.owner = server
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arrived: collections.deque[tuple[ModbusPDU, tuple[Any, ...] | None]] = (
            collections.deque()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        # asyncio closes the socket right after this returns, in the same callback.
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        """Take the requests in ``data``, each whole frame on its own: several MBAP requests
        sent at once (a pipelining client), or RTU frames told apart by the silence between them
        on a line. pymodbus takes one frame per read (its RTU framer drops a second request that
        arrived with the first; its socket framer leaves it until more bytes arrive)."""
        size_of = _mbap_size if isinstance(self.framer, FramerSocket) else _rtu_request_size
        used = 0
        while used < len(data):
            size = size_of(data[used:])
            if not size or len(data) - used <= size:
                # The last frame, part of one (pymodbus waits for the rest), or no request at
                # all (pymodbus hunts through it).
                return used + self._take(data[used:], addr)
            self._take(data[used : used + size], addr)
            used += size
        return used

    def _take(self, data: bytes, addr: tuple[Any, ...] | None) -> int:
        used: int = super().callback_data(data, addr)
        if self.last_pdu is not None:  # pymodbus has just asked the loop for handle_later
            self._arrived.append((self.last_pdu, self.last_addr))
        return used

    def handle_later(self) -> None:
        # The request of this call, kept when it arrived: a late answer's task, run before this
        # call, sets last_pdu to its own request (to answer it), which would be answered twice
        # and this one never.
        if not self._arrived:
            return
        pdu, addr = self._arrived.popleft()
        slave = self.owner.slaves.get(pdu.dev_id)
        delay = slave.slow if slave is not None and not slave.dead else 0.0
        self._in_task(self._answer(pdu, addr, delay), "modbus simulator answer")

    def _in_task(self, answer: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``answer`` in a task the simulator cancels when it stops."""
        task = asyncio.create_task(answer, name=name)
        self.owner.answers.add(task)
        task.add_done_callback(self.owner.answers.discard)

    async def _answer(self, pdu: ModbusPDU, addr: tuple[Any, ...] | None, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        # handle_request reads these; our datastore never suspends, so nothing can overwrite
        # them before the answer is sent.
        self.last_pdu, self.last_addr = pdu, addr
        await self.handle_request()  # type: ignore[no-untyped-call]

    def send(self, data: bytes, addr: tuple[Any, ...] | None = None) -> None:
        # pymodbus's send also empties the receive buffer. Answers go out late here, in tasks of
        # their own: the first bytes of the next request (a read of a serial port may return
        # part of a frame) would be lost with it, and that request never answered.
        if self._gone():
            return
        received = self.recv_buffer
        super().send(data, addr)
        self.recv_buffer = received

    def _gone(self) -> bool:
        """Whether the master went: the answers still on their way to it are dropped (asyncio
        warns at each write past the fifth to a lost connection)."""
        return self.transport is None or self.transport.is_closing()

    def pdu_send(self, pdu: ModbusPDU, addr: tuple[Any, ...] | None = None) -> None:
        """Send an answer, spoilt as its slave's wire faults say (``SimulatedSlave``)."""
        slave = self.owner.slaves.get(pdu.dev_id)
        if slave is None or not _spoils_answers(slave):
            super().pdu_send(pdu, addr)
            return
        frame = self.trace_packet(True, self._spoilt_frame(pdu, slave))
        if slave.drip > 0:
            self._in_task(self._drip(frame, slave.drip), "modbus simulator drip")
        elif not self._gone():
            self.low_level_send(frame, addr=addr)

    def _spoilt_frame(self, pdu: ModbusPDU, slave: SimulatedSlave) -> bytes:
        mbap = isinstance(self.framer, FramerSocket)
        if slave.wrong_tid and mbap:
            pdu.transaction_id = _stale_tid(pdu.transaction_id)
        frame: bytes = self.framer.buildFrame(self.trace_pdu(True, pdu))
        if slave.garbage:
            frame = _garbled(frame, slave.random, mbap=mbap)
        if slave.noise:
            frame = slave.random.randbytes(len(frame))
        return frame

    async def _drip(self, frame: bytes, gap: float) -> None:
        for index in range(len(frame)):
            if index:
                await asyncio.sleep(gap)
            if self._gone():  # the client hung up meanwhile
                return
            self.low_level_send(frame[index : index + 1])


class _Server(ModbusTcpServer):
    """pymodbus's TCP server, keeping track of its connections so that shutdown can await them."""

    connections: set[_Connection]
    answers: set[asyncio.Task[None]]
    slaves: Mapping[int, SimulatedSlave]

    def callback_new_connection(self) -> _Connection:
        connection = _Connection(self)
        self.connections.add(connection)
        connection.closed.add_done_callback(lambda _: self.connections.discard(connection))
        return connection


class _SerialServer(ModbusSerialServer):
    """pymodbus's serial server, answering each request on its own as ``_Server`` does."""

    answers: set[asyncio.Task[None]]
    slaves: Mapping[int, SimulatedSlave]

    def callback_new_connection(self) -> _Connection:
        return _Connection(self)


class SimFrame(NamedTuple):
    """A frame the simulator received or sent, with the monotonic time it was first seen."""

    time: float
    sending: bool
    data: bytes


class ModbusSimulator:
    """Serves ``slaves`` while the context is entered: over Modbus TCP on ``host:port``, with RTU
    frames over TCP when ``rtu``, or RTU on the serial port ``serial_port`` when one is given.

    ``port=0`` picks a free port; ``.port`` is the bound one after entering. With ``animate``, a
    task moves the values every ``interval`` seconds (see ``animate_slave``); ``next_step()``
    waits for its next step. ``frames`` logs what the server received and sent, with times: a
    request's time is when its first byte arrived; ``received`` is set when bytes arrive.
    """

    def __init__(
        self,
        slaves: Iterable[SimulatedSlave],
        host: str = "127.0.0.1",
        port: int = 0,
        animate: bool = False,
        *,
        interval: float = 1.0,
        rtu: bool = False,
        serial_port: str = "",
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
    ) -> None:
        self.slaves: dict[int, SimulatedSlave] = {}
        for slave in slaves:
            if slave.unit in self.slaves:
                raise ValueError(f"two simulated slaves have unit id {slave.unit}")
            self.slaves[slave.unit] = slave
        self.host = host
        self.port = port
        self.animate = animate
        self.interval = interval
        self.rtu = rtu or bool(serial_port)
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize
        self.frames: collections.deque[SimFrame] = collections.deque(maxlen=_FRAME_LOG_SIZE)
        #: Set whenever bytes arrive; clear it to wait for the next request.
        self.received = asyncio.Event()
        self._context = _SlaveContext(self.slaves)
        self._server: _Server | _SerialServer | None = None
        self._animator: asyncio.Task[None] | None = None
        self._stepped: asyncio.Event | None = None

    @property
    def address(self) -> str:
        """Where the slaves are served: the serial port, or host:port."""
        return self.serial_port or f"{self.host}:{self.port}"

    async def __aenter__(self) -> ModbusSimulator:
        """Start serving; raises ``OSError`` if the address cannot be bound or the port opened.

        The ``OSError``'s message and ``__cause__`` give the reason, e.g. address already in use.
        """
        if self.serial_port:
            self._server = await self._open_serial()
        else:
            self._server = await self._listen()
        log.info("simulating units %s on %s", sorted(self.slaves), self.address)
        if self.animate:
            self._stepped = asyncio.Event()
            self._animator = asyncio.create_task(self._animate(), name="modbus simulator animate")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop animating and serving; returns once every connection's socket is closed."""
        await self.stop_animation()
        server, self._server = self._server, None
        if server is None:
            return
        await _cancel_all(server.answers)  # the late answers of slow slaves
        # A serial port closes at once; TCP sockets close in later callbacks.
        closing = [c.closed for c in server.connections] if isinstance(server, _Server) else []
        await server.shutdown()  # type: ignore[no-untyped-call]
        if closing:
            await asyncio.wait(closing, timeout=_CLOSE_TIMEOUT)

    async def _listen(self) -> _Server:
        server = self._build_server()
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus's way of saying the bind failed
            reason = _why_not_listening(self.host, self.port) or exc
            raise OSError(f"cannot listen on {self.host}:{self.port}: {reason}") from reason
        self.port = _bound_port(server, self.port)
        return server

    async def _open_serial(self) -> _SerialServer:
        server = _SerialServer(
            [_placeholder()],
            framer=FramerType.RTU,
            port=self.serial_port,
            ignore_missing_devices=True,  # silence, like a real bus, for dead and unknown units
            reconnect_delay=0,
            trace_packet=self._log_frame,
            trace_pdu=self._count_response,
            baudrate=self.baudrate,
            parity=self.parity,
            stopbits=self.stopbits,
            bytesize=self.bytesize,
        )
        server.context = self._context
        server.answers, server.slaves = set(), self.slaves
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus's way of saying the port did not open
            code, reason = serial_port_problem(self.serial_port)
            cause = OSError(code, reason) if code else None
            raise OSError(f"cannot open {self.serial_port}: {reason or exc}") from cause
        return server

    async def stop_animation(self) -> None:
        """Cancel the animation task, if any, and wait for it to end."""
        task, self._animator = self._animator, None
        if task is None:
            return
        task.cancel()
        # asyncio.wait, unlike awaiting the task, does not raise the task's CancelledError:
        # only a cancellation of the caller itself propagates.
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator animation failed", exc_info=task.exception())

    async def next_step(self) -> None:
        """Wait until the animation task has updated the values once more."""
        if self._animator is None or self._stepped is None:
            raise RuntimeError("the simulator is not animating")
        await self._stepped.wait()

    def _build_server(self) -> _Server:
        server = _Server(
            [_placeholder()],
            framer=FramerType.RTU if self.rtu else FramerType.SOCKET,
            address=(self.host, self.port),
            ignore_missing_devices=True,  # silence, not exception 11, for dead and unknown units
            trace_packet=self._log_frame,
            trace_pdu=self._count_response,
        )
        server.connections, server.answers, server.slaves = set(), set(), self.slaves
        server.context = self._context
        return server

    def _count_response(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending and (slave := self.slaves.get(pdu.dev_id)) is not None:
            slave.requests += 1
        return pdu

    def _log_frame(self, sending: bool, data: bytes) -> bytes:
        last = self.frames[-1] if self.frames else None
        # pymodbus passes its receive buffer each time bytes arrive: a grown buffer is the same
        # request, and keeps the time its first bytes came.
        if not sending and last and not last.sending and data.startswith(last.data):
            self.frames[-1] = last._replace(data=bytes(data))
        else:
            self.frames.append(SimFrame(time.monotonic(), sending, bytes(data)))
        if not sending:
            self.received.set()
        return data

    async def _animate(self) -> None:
        start = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.interval)
            t = asyncio.get_running_loop().time() - start
            for slave in self.slaves.values():
                animate_slave(slave, t)
            # Wake whoever waits in next_step(), and give later callers a fresh event.
            stepped, self._stepped = self._stepped, asyncio.Event()
            if stepped is not None:
                stepped.set()


def _mbap_size(data: bytes) -> int | None:
    """The length of the MBAP frame at the start of ``data``; 0 while its header is not in."""
    return 6 + int.from_bytes(data[4:6], "big") if len(data) >= 6 else 0


def _rtu_request_size(data: bytes) -> int | None:
    return rtu_frame_size(data, request=True)


def _spoils_answers(slave: SimulatedSlave) -> bool:
    return slave.wrong_tid or slave.garbage or slave.noise or slave.drip > 0


def _stale_tid(tid: int) -> int:
    """The transaction id of the request before ``tid``; never 0 (pymodbus takes an answer with
    transaction id 0 for any request)."""
    return (tid - 1) % 0x10000 or 0xFFFF


def _garbled(frame: bytes, rng: random.Random, *, mbap: bool) -> bytes:
    """``frame`` with its PDU replaced by random bytes, its envelope kept sound."""
    if mbap:  # transaction id, protocol id, length, unit id: then the PDU
        return frame[:7] + rng.randbytes(len(frame) - 7)
    body = frame[:1] + rng.randbytes(len(frame) - 3)  # the unit id, then the PDU; a good CRC
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


async def _cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    pending = set(tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)


def _placeholder() -> SimDevice:
    # pymodbus insists on a datastore at construction; this throwaway one is replaced at once.
    return SimDevice(id=0, simdata=SimData(0, values=0, datatype=DataType.REGISTERS))


def _why_not_listening(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be bound, found by trying: pymodbus logs the reason and drops it."""
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as probe:
                # As asyncio's create_server does, so that only a real conflict fails.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
    except OSError as exc:
        return exc
    return None


def _bound_port(server: ModbusTcpServer, requested: int) -> int:
    """The port the server listens on (differs from ``requested`` when that was 0)."""
    listener: Any = server.transport  # an asyncio.Server once listening
    for sock in getattr(listener, "sockets", None) or ():
        port: int = sock.getsockname()[1]
        return port
    if requested:
        return requested
    raise RuntimeError("pymodbus did not say which port it bound")
