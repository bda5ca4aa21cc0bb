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
from types import TracebackType

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from agent.config.types import BIT_TABLES, BusConfig, DeviceConfig, Table
from agent.errors import BusError, DeviceError
from agent.model import Poll, Value

from .codec import apply_exponents, decode_request
from .plan import DevicePlan, Request

log = logging.getLogger(__name__)

ILLEGAL_ADDRESS = 2

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


class _RequestFailed(Exception):
    """The device answered a request with an exception (``code``), or with something unusable."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


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
        self._plans: dict[str, DevicePlan] = {}
        #: Put each point's raw registers in the Poll (for ``edge-agent read``).
        self.keep_raw = False

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

    def plan(self, device: DeviceConfig) -> DevicePlan:
        """The device's reads, kept per device so that refused merges stay split."""
        plan = self._plans.get(device.name)
        if plan is None or plan.device != device:
            plan = self._plans[device.name] = DevicePlan(device, self.bus)
        return plan

    def describe(self, device: DeviceConfig) -> list[str]:
        """One line per read a poll of ``device`` makes."""
        return self.plan(device).describe()

    async def read(self, device: DeviceConfig) -> Poll:
        """Poll ``device`` once; see the module docstring for how failures are reported."""
        values: dict[str, Value] = {}
        errors: list[str] = []
        raws: dict[str, tuple[int, ...]] = {}
        plan = self.plan(device)
        pending = list(plan.requests)
        while pending:
            request = pending.pop(0)
            try:
                raw = await self._execute(device, request)
            except _RequestFailed as exc:
                if exc.code == ILLEGAL_ADDRESS and request.has_holes:
                    pending[:0] = plan.split(request)  # read again without the holes, now
                    continue
                errors.append(str(exc))
                continue
            except _NoResponse as exc:
                errors.append(str(exc))
                if pending:
                    errors.append(f"device {device.name}: {len(pending)} more request(s) not sent")
                break
            values.update(decode_request(request.points, request.address, raw, errors))
            if self.keep_raw:
                for point in request.points:
                    start = point.address - request.address
                    raws[point.name] = tuple(int(r) for r in raw[start : start + point.count])
        values = apply_exponents(device.points, values, errors)
        if errors and not values:
            raise DeviceError("; ".join(errors))
        if errors:
            log.debug("device %s: partial poll: %s", device.name, "; ".join(errors))
        return Poll(values=values, errors=tuple(errors), raw=raws)

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
        raise _RequestFailed(f"{where}: Modbus exception {code} ({name})", code)
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
