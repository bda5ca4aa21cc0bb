"""The Modbus TCP driver: plans a device's points into as few reads as possible and decodes them.

One ``ModbusDriver`` owns one TCP connection (one bus); every device on the bus is a unit id behind
it. pymodbus's own retries and reconnects are switched off: the scheduler decides when to retry and
reconnects by leaving and re-entering the driver.

How a failed request is reported:

* an exception response (e.g. code 2, illegal data address) costs only that request's points: the
  poll carries an error and the other requests go on;
* no response costs the rest of the poll: the unit is presumably gone, and waiting a full timeout
  per remaining request would hold up every other device on the bus;
* if nothing at all was read, ``read`` raises ``DeviceError``; if the connection itself is gone it
  raises ``BusError`` so that the scheduler reconnects.

pymodbus closes the connection itself after 4 unanswered requests in a row (``retries + 3``, its
way of detecting a half-open link): polls of a dead unit that nothing else on the connection
answers in between give ``DeviceError`` four times, then ``BusError``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from agent.config.types import BIT_TABLES, TABLES, BusConfig, DeviceConfig, PointConfig, Table
from agent.errors import BusError, DeviceError
from agent.model import Poll, Value

from .codec import decode

log = logging.getLogger(__name__)

#: Most registers one read may carry (FC 3/4), and most bits (FC 1/2): the protocol's limits.
MAX_REGISTERS = 125
MAX_BITS = 2000
#: The highest unit id a Modbus device may have (248-255 are reserved).
MAX_UNIT = 247

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


@dataclass(frozen=True)
class Request:
    """One read: ``count`` registers (or bits) of ``table`` from ``address``, serving ``points``."""

    table: Table
    address: int
    count: int
    points: tuple[PointConfig, ...]

    @property
    def end(self) -> int:
        """The first address after the request."""
        return self.address + self.count

    @property
    def span(self) -> str:
        """The addresses read, for messages: ``"0-9"``, or ``"5"`` for a single one."""
        last = self.end - 1
        return str(self.address) if last == self.address else f"{self.address}-{last}"

    def describe(self) -> str:
        """E.g. ``"holding 0-9 (10 registers): voltage, current"``."""
        unit = "bit" if self.table in BIT_TABLES else "register"
        plural = "" if self.count == 1 else "s"
        names = ", ".join(p.name for p in self.points)
        return f"{self.table} {self.span} ({self.count} {unit}{plural}): {names}"


def max_count(table: Table) -> int:
    """The most registers or bits one read of ``table`` may carry."""
    return MAX_BITS if table in BIT_TABLES else MAX_REGISTERS


def plan_requests(points: Sequence[PointConfig]) -> list[Request]:
    """The reads that fetch ``points``: per table, in address order, merging points that touch or
    overlap while the merged read stays within the protocol's maximum.

    Points are never split and gaps are never bridged (a gap may hold addresses the device
    refuses). A single point larger than the maximum still gets a request of its own;
    ``ModbusDriver.validate`` reports it.
    """
    requests: list[Request] = []
    for table in TABLES:
        mine = sorted((p for p in points if p.table == table), key=lambda p: (p.address, p.name))
        current: Request | None = None
        for point in mine:
            end = point.address + point.count
            if (
                current is not None
                and point.address <= current.end
                and max(end, current.end) - current.address <= max_count(table)
            ):
                count = max(end, current.end) - current.address
                current = Request(table, current.address, count, (*current.points, point))
            else:
                if current is not None:
                    requests.append(current)
                current = Request(table, point.address, point.count, (point,))
        if current is not None:
            requests.append(current)
    return requests


class _RequestFailed(Exception):
    """The device answered a request with an exception, or with something unusable."""


class _NoResponse(Exception):
    """The device did not answer a request within the bus timeout."""


class ModbusDriver:
    """A Modbus TCP connection to one bus, polling the devices (unit ids) behind it."""

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        """What the generic loader cannot know about Modbus: as ``(key path, message)`` pairs.

        The loader has already checked names, tables, types and the address space.
        """
        problems: list[tuple[str, str]] = []
        if not bus.host:
            problems.append((f"bus.{bus.name}.host", "is required for a modbus-tcp bus"))
        for device in devices:
            if device.unit > MAX_UNIT:
                problems.append(
                    (f"device.{device.name}.unit", f"{device.unit} is out of range 0..{MAX_UNIT}")
                )
        return problems

    def __init__(self, bus: BusConfig) -> None:
        self.bus = bus
        self._client: AsyncModbusTcpClient | None = None

    async def __aenter__(self) -> ModbusDriver:
        """Connect; raises ``BusError`` when the server cannot be reached within the timeout."""
        self._close()
        bus = self.bus
        client = AsyncModbusTcpClient(
            bus.host,
            port=bus.port,
            timeout=bus.timeout,
            retries=0,  # the scheduler retries on its next poll
            reconnect_delay=0,  # and reconnects by re-entering the driver
            name=f"bus {bus.name}",
        )
        try:
            connected = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise BusError(self._cannot_connect(str(exc))) from exc
        if not connected:
            client.close()
            # pymodbus logs the reason (refused, unresolvable, timeout…) but does not return it.
            raise BusError(
                self._cannot_connect(f"refused, unreachable or no answer within {bus.timeout:g} s")
            )
        self._client = client
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect; never raises."""
        self._close()

    def describe(self, device: DeviceConfig) -> list[str]:
        """One line per read a poll of ``device`` makes."""
        return [request.describe() for request in plan_requests(device.points)]

    async def read(self, device: DeviceConfig) -> Poll:
        """Poll ``device`` once; see the module docstring for how failures are reported."""
        values: dict[str, Value] = {}
        errors: list[str] = []
        requests = plan_requests(device.points)
        for index, request in enumerate(requests):
            try:
                raw = await self._execute(device, request)
            except _RequestFailed as exc:
                errors.append(str(exc))
                continue
            except _NoResponse as exc:
                errors.append(str(exc))
                if skipped := len(requests) - index - 1:
                    errors.append(f"device {device.name}: {skipped} more request(s) not sent")
                break
            values.update(_decode_points(device, request, raw, errors))
        if errors and not values:
            raise DeviceError("; ".join(errors))
        if errors:
            log.debug("device %s: partial poll: %s", device.name, "; ".join(errors))
        return Poll(values=values, errors=tuple(errors))

    async def _execute(self, device: DeviceConfig, request: Request) -> list[int] | list[bool]:
        """The raw registers or bits of one request, or a _RequestFailed/_NoResponse/BusError."""
        client = self._connected_client()
        where = f"device {device.name} (unit {device.unit}): {request.table} {request.span}"
        try:
            response = await _reader(client, request.table)(
                request.address, count=request.count, device_id=device.unit
            )
        except ConnectionException as exc:
            raise BusError(self._lost(f"{exc}")) from exc
        except ModbusIOException as exc:
            # pymodbus does not fail a pending request when the connection drops: the request
            # times out, and only then do we see the connection is gone.
            if not client.connected:
                raise BusError(self._lost(f"no response while reading {where}")) from exc
            raise _NoResponse(f"{where}: no response within {self.bus.timeout:g} s") from exc
        except ModbusException as exc:
            raise _RequestFailed(f"{where}: {exc}") from exc
        except ValueError as exc:  # pymodbus refuses to encode e.g. more than 125 registers
            raise _RequestFailed(f"{where}: cannot be sent: {exc}") from exc
        except OSError as exc:
            raise BusError(self._lost(f"while reading {where}: {exc}")) from exc
        return _payload(where, request, response)

    def _connected_client(self) -> AsyncModbusTcpClient:
        if self._client is None or not self._client.connected:
            raise BusError(self._lost("not connected"))
        return self._client

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.close()
        except Exception:  # closing must never raise; losing a close error is harmless
            log.warning("bus %s: error while disconnecting", self.bus.name, exc_info=True)

    def _cannot_connect(self, reason: str) -> str:
        bus = self.bus
        return f"bus {bus.name}: cannot connect to {bus.host}:{bus.port}: {reason}"

    def _lost(self, reason: str) -> str:
        bus = self.bus
        return f"bus {bus.name}: connection to {bus.host}:{bus.port} lost: {reason}"


_Reader = Callable[..., Awaitable[ModbusPDU]]


def _reader(client: AsyncModbusTcpClient, table: Table) -> _Reader:
    """The client method that reads ``table``."""
    readers: dict[Table, _Reader] = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }
    return readers[table]


def _payload(where: str, request: Request, response: ModbusPDU) -> list[int] | list[bool]:
    """The registers or bits of a response, or _RequestFailed for an exception or short answer."""
    if response.isError():
        code = response.exception_code
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        raise _RequestFailed(f"{where}: Modbus exception {code} ({name})")
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
    raise _RequestFailed(f"{where}: answer has {got} values, {request.count} were asked for")


def _decode_points(
    device: DeviceConfig, request: Request, raw: list[int] | list[bool], errors: list[str]
) -> dict[str, Value]:
    """Each point of ``request`` decoded from its slice of ``raw``; failures go to ``errors``."""
    values: dict[str, Value] = {}
    for point in request.points:
        start = point.address - request.address
        try:
            values[point.name] = decode(point, raw[start : start + point.count])
        except ValueError as exc:
            errors.append(f"device {device.name}: {exc}")
    return values
