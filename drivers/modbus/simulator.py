"""Simulated Modbus slaves served over TCP by a real pymodbus server.

Used by ``edge-agent simulate``, the demo and the tests::

    slaves = slaves_for_bus(devices_on_bus)
    async with ModbusSimulator(slaves, host="127.0.0.1", port=5020, animate=True) as sim:
        ...  # poll 127.0.0.1:sim.port; sim.slaves[unit].set_value("voltage", 231.5)

Each ``SimulatedSlave`` holds a register image per table covering exactly its points' addresses,
like a real device: a request touching any other address is answered with Modbus exception 2
(illegal data address). A slave marked ``dead``, like an unknown unit id, does not answer at all,
so the client times out as it would on a real bus (pymodbus's stock server would send exception
4 or 11 instead).

The server is pymodbus's ``ModbusTcpServer``; its datastore is replaced by ``_SlaveContext``, which
reads and writes the slaves' images directly, so nothing here uses the deprecated datastore
classes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from agent.config.types import BIT_TABLES, TABLES, DeviceConfig, PointConfig, Table
from agent.model import Value

from .codec import decode, encode, int_range

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


class UndefinedAddressError(ValueError):
    """A register image access touched an address that no point of the slave covers."""


class SimulatedSlave:
    """One simulated device (unit id): its points and a register image per table.

    Set ``dead = True`` to make the slave stop answering. ``requests`` counts the requests it
    answered (exception responses included).
    """

    def __init__(self, unit: int, points: Sequence[PointConfig]) -> None:
        self.unit = unit
        self.points: dict[str, PointConfig] = {p.name: p for p in points}
        if len(self.points) != len(points):
            raise ValueError(f"unit {unit}: point names must be unique")
        self.dead = False
        self.requests = 0
        # Every address a point covers starts at 0/False; overlapping points share addresses.
        self._images: dict[Table, dict[int, int | bool]] = {table: {} for table in TABLES}
        for point in points:
            blank: int | bool = False if point.table in BIT_TABLES else 0
            for address in range(point.address, point.address + point.count):
                self._images[point.table][address] = blank

    def __repr__(self) -> str:
        state = ", dead" if self.dead else ""
        return f"SimulatedSlave(unit={self.unit}, points={len(self.points)}{state})"

    def point(self, name: str) -> PointConfig:
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
    slaves = [SimulatedSlave(device.unit, device.points) for device in devices]
    for slave in slaves:
        animate_slave(slave, 0.0, include_writable=True)
    return slaves


def animate_slave(slave: SimulatedSlave, t: float, *, include_writable: bool = False) -> None:
    """Set the slave's points to their animated values at ``t`` seconds.

    Numbers follow a slow sine between the point's ``min`` and ``max`` (or a range suited to the
    type when unset); bools toggle every 5-20 s; strings read ``"SIM-<unit>"``. The period and
    phase come from the point's name, so points move differently but reproducibly. Writable points
    are skipped unless ``include_writable``: they keep what a client wrote.
    """
    for point in slave.points.values():
        if point.writable and not include_writable:
            continue
        if point.type == "string":
            slave.set_value(point.name, f"SIM-{slave.unit}"[: point.length])
        elif point.table in BIT_TABLES or point.type == "bool":
            slave.set_value(point.name, _toggling(point.name, t))
        else:
            raw = _sine_raw(point, t)
            # Written unscaled so that rounding and scaling cannot push it out of range.
            slave.set_registers(point.table, point.address, encode(_unscaled(point), raw))


def _toggling(name: str, t: float) -> bool:
    seed = zlib.crc32(name.encode())
    period = 5 + seed % 16
    return (int(t / period) + seed) % 2 == 1


def _sine_raw(point: PointConfig, t: float) -> int | float:
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


def _raw_range(point: PointConfig) -> tuple[float, float]:
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


def _unscaled(point: PointConfig) -> PointConfig:
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
        table = _FUNCTION_TABLES.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        try:
            return slave.registers(table, address, count)
        except UndefinedAddressError:
            return ExcCodes.ILLEGAL_ADDRESS

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        slave = self._slave(device_id)
        table = _FUNCTION_TABLES.get(func_code)
        if table is None or table not in ("coil", "holding"):
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
    """A server-side client connection that tells when its socket is closed."""

    def __init__(self, server: _Server) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            server, server.trace_packet, server.trace_pdu, server.trace_connect
        )
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        # asyncio closes the socket right after this returns, in the same callback.
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)


class _Server(ModbusTcpServer):
    """pymodbus's TCP server, keeping track of its connections so that shutdown can await them."""

    connections: set[_Connection]

    def callback_new_connection(self) -> _Connection:
        connection = _Connection(self)
        self.connections.add(connection)
        connection.closed.add_done_callback(lambda _: self.connections.discard(connection))
        return connection


class ModbusSimulator:
    """Serves ``slaves`` on ``host:port`` over Modbus TCP while the context is entered.

    ``port=0`` picks a free port; ``.port`` is the bound one after entering. With ``animate``, a
    task moves the values every ``interval`` seconds (see ``animate_slave``); ``next_step()``
    waits for its next step.
    """

    def __init__(
        self,
        slaves: Iterable[SimulatedSlave],
        host: str = "127.0.0.1",
        port: int = 0,
        animate: bool = False,
        *,
        interval: float = 1.0,
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
        self._server: _Server | None = None
        self._animator: asyncio.Task[None] | None = None
        self._stepped: asyncio.Event | None = None

    async def __aenter__(self) -> ModbusSimulator:
        """Start listening; raises ``OSError`` if the address cannot be bound.

        The ``OSError``'s message and ``__cause__`` give the reason, e.g. address already in use.
        """
        server = self._build_server()
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus's way of saying the bind failed
            reason = _why_not_listening(self.host, self.port) or exc
            raise OSError(f"cannot listen on {self.host}:{self.port}: {reason}") from reason
        self._server = server
        self.port = _bound_port(server, self.port)
        log.info("simulating units %s on %s:%d", sorted(self.slaves), self.host, self.port)
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
        closing = [connection.closed for connection in server.connections]
        await server.shutdown()  # type: ignore[no-untyped-call]
        if closing:
            await asyncio.wait(closing, timeout=_CLOSE_TIMEOUT)

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
        # pymodbus insists on a datastore at construction; this throwaway one is replaced at once.
        placeholder = SimDevice(id=0, simdata=SimData(0, values=0, datatype=DataType.REGISTERS))
        server = _Server(
            [placeholder],
            address=(self.host, self.port),
            ignore_missing_devices=True,  # silence, not exception 11, for dead and unknown units
            trace_pdu=self._count_response,
        )
        server.connections = set()
        server.context = _SlaveContext(self.slaves)
        return server

    def _count_response(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending and (slave := self.slaves.get(pdu.dev_id)) is not None:
            slave.requests += 1
        return pdu

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
