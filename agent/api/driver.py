"""The driver interface: what every driver must do, the abilities it may add, and what it is
handed.

A driver is built for one bus, as ``Driver(bus, context)``, and owns its connection. The
scheduler calls it one poll or write at a time, so a driver never has to lock — unless it says
it takes polls of several devices at once (``PollsAtOnce``): then those come together, and
never beside a write.

A driver **must**:

* ``validate(bus, devices)`` — classmethod, no I/O: the problems of this bus and its devices as
  ``(key path, message)`` pairs, e.g. ``("device.meter.point.volts", "…")``;
* be an async context manager: ``__aenter__`` connects (it may raise ``BusError``; the scheduler
  retries by entering the same instance again), ``__aexit__`` disconnects and never raises;
* ``read(device)`` — one poll: a ``Poll`` of what it read; raise ``DeviceError`` (or ``BusError``
  when the connection itself broke) when nothing could be read. Never return ``None``.

A driver **may** declare its configuration, as class attributes (the loader reads them; unknown
keys are refused for every driver alike):

* ``bus_types`` — the bus types its devices sit on (names); empty: its devices are on no bus,
  and each gets a ``BusConfig`` of type ``"local"`` named after it, and a driver of its own;
* ``defines_buses`` — the bus types it brings (``BusType``): a device on one of them uses this
  driver without naming it. Register each in the ``edge_agent.bus_types`` entry-point group
  too (name: the bus type, value: the driver class), so that the loader finds it unloaded;
* ``bus_options`` / ``device_options`` / ``point_options`` — its own keys: ``{key: converter}``
  (``agent.api.keys`` has the common converters). The values land in ``options``; a key left out
  is absent;
* ``line_defaults`` — the line settings its protocol prescribes, e.g.
  ``{"baudrate": 2400, "parity": "E"}`` (keys ``baudrate``, ``parity``, ``bytesize``,
  ``stopbits``): a ``serial`` bus of its devices takes them where its table says nothing.

A driver **may** offer the abilities below: each is a protocol, checked with ``isinstance``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Protocol, TextIO, TypeVar, runtime_checkable

from ..clock import Clock
from ..model import Poll, Value
from .config import BusConfig, DeviceConfig, PointConfig
from .keys import Convert

_T = TypeVar("_T")


@dataclass(frozen=True)
class DriverContext:
    """What the agent hands a driver beside its bus."""

    #: The devices it will poll, so that it can set them up when entered (open a counter's pin
    #: at start, put a relay in its safe state at once).
    devices: tuple[DeviceConfig, ...] = ()
    #: A directory of the data dir (created by the driver when it first writes) for files named
    #: after its devices (a pulse count that must survive a reboot), or ``None`` when nothing may
    #: be kept (``edge-agent read`` while the agent runs).
    state_dir: Path | None = None
    clock: Clock = field(default_factory=Clock)


class Driver(Protocol):
    """A connection to one bus, and the way to poll the devices on it."""

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]: ...

    def __init__(self, bus: BusConfig, context: DriverContext = ...) -> None: ...

    async def __aenter__(self) -> Driver: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def read(self, device: DeviceConfig) -> Poll: ...


# --- abilities a driver instance may have


@runtime_checkable
class Writes(Protocol):
    """Sets a ``writable`` point (a relay, a setpoint): ``edge-agent write`` and commands."""

    async def write(self, device: DeviceConfig, point: PointConfig, value: Value) -> None:
        """Set ``point`` to ``value``, already checked against its ``min``/``max``; raise
        ``DeviceError`` when the device refused or did not answer, ``ValueError`` when the
        value cannot be written to this point."""
        ...


#: How a line of ``Describes.describe`` that is a note, not a request, starts.
PLAN_NOTES = ("lacks ", "note: ")


@runtime_checkable
class Describes(Protocol):
    """Says the requests a poll makes, for logs and ``check --plan``: one line per request, and
    notes about the plan as lines that start with one of ``PLAN_NOTES`` (``lacks …``)."""

    def describe(self, device: DeviceConfig) -> list[str]: ...


@runtime_checkable
class PollsAtOnce(Protocol):
    """Takes polls of up to ``polls_at_once`` different devices at once (requests pipelined on
    one connection): the scheduler polls together the devices that are due together."""

    polls_at_once: int


@runtime_checkable
class KeepsRaw(Protocol):
    """Keeps the raw registers or bits behind each value in ``Poll.raw`` while ``keep_raw`` is
    set (``edge-agent read`` sets it), and the last raw frames per device (``frames``) that
    ``health`` shows for a device that answers garbage."""

    keep_raw: bool

    def frames(self, device_name: str) -> tuple[str, ...]: ...

    def show_raw(self, point: PointConfig, raw: tuple[int, ...]) -> str:
        """``raw`` as ``edge-agent read`` shows it (``0x00E6 0x0001``)."""
        ...


@runtime_checkable
class CountsFaults(Protocol):
    """Counts each request's outcome per device (``ok``, ``timeout``, ``crc``…), shown in
    ``health`` under ``faults``."""

    @property
    def counters(self) -> Mapping[str, Mapping[str, int]]: ...


# --- abilities a driver class may have


@runtime_checkable
class Scans(Protocol):
    """Finds what answers on a bus: ``edge-agent scan BUS [--units …]``."""

    @classmethod
    def scan(
        cls, bus: BusConfig, devices: Sequence[DeviceConfig], targets: str | None, out: TextIO
    ) -> Awaitable[list[str]]:
        """Probe ``targets`` (the driver's own syntax: unit ids, addresses; ``None``: all) on
        ``bus``, reporting on ``out``; return what answered. Raise ``BusError`` when the port
        or connection cannot be used, ``ValueError`` when ``targets`` makes no sense."""
        ...


@dataclass(frozen=True)
class SimulateAt:
    """Where a simulation serves a bus: its own address, a TCP address (``host`` and ``port``;
    port 0: a free one), a fresh pseudo-terminal (``pty``), or a serial port the caller holds
    the other end of (``serial_port``: a test kit's fault proxy); and what the simulated devices
    read: values that move over time, or ``values`` held (device name → point name → reading,
    as a poll would give it; the golden cases' ``simulate.json``; the rest start at zero)."""

    host: str | None = None
    port: int | None = None
    pty: bool = False
    serial_port: str | None = None
    values: Mapping[str, Mapping[str, Value]] | None = None


@dataclass(frozen=True)
class Simulated:
    """A bus being simulated: ``bus`` is the bus to point the agent at (its type and address
    as served), ``line`` says so to a person."""

    bus: BusConfig
    line: str


@runtime_checkable
class Simulation(Protocol):
    """A bus's devices served as simulated ones: ``add`` devices (before or while serving),
    enter to serve (``BusError`` when it cannot: the address is taken), leave to stop."""

    def add(self, device: DeviceConfig) -> object:
        """Serve ``device`` too; returns the driver's own handle of it, on which a test sets
        values and faults (a Modbus ``SimulatedSlave``). ``ValueError`` when it cannot be
        served beside the others (two Modbus devices of one unit id)."""
        ...

    @property
    def served(self) -> Simulated:
        """Where it is served: the bus to point the agent at (while entered)."""
        ...

    async def __aenter__(self) -> Simulation: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ServedSimulation:
    """Base of a ``Simulation``: entering runs ``serve`` on an exit stack that leaving closes,
    and ``served`` is what it returned. A driver's simulation defines ``add`` and ``serve``."""

    #: The bus simulated, named in messages.
    bus: BusConfig

    def __init__(self, bus: BusConfig) -> None:
        self.bus = bus
        self._stack: contextlib.AsyncExitStack | None = None
        self._served: Simulated | None = None

    async def serve(self, stack: contextlib.AsyncExitStack) -> Simulated:
        """Start serving, entering what must be left on ``stack``; where it serves."""
        raise NotImplementedError

    @property
    def served(self) -> Simulated:
        if self._served is None:
            raise RuntimeError(f"bus {self.bus.name}: the simulation is not being served")
        return self._served

    async def __aenter__(self: _Served) -> _Served:
        stack = contextlib.AsyncExitStack()
        try:
            self._served = await self.serve(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack, self._served = self._stack, None, None
        if stack is not None:
            await stack.aclose()


@runtime_checkable
class Simulates(Protocol):
    """Serves a bus's devices as simulated ones: ``edge-agent simulate``, the golden cases,
    demos and the test kit."""

    @classmethod
    def simulation(cls, bus: BusConfig, at: SimulateAt) -> Simulation:
        """A simulation of ``bus`` served ``at``, with no devices yet. Raise ``ValueError``
        when the bus cannot be simulated there (a real serial port)."""
        ...


@runtime_checkable
class FramesLine(Protocol):
    """Speaks framed binary on a serial line, and says where a frame ends: what a line
    monitor, or the test kit's fault proxy, needs to cut the byte stream into frames."""

    @staticmethod
    def frame_size(data: bytes, request: bool) -> int | None:
        """The length of the frame at the start of ``data`` (a request from the master, or an
        answer): 0 when more bytes are needed to tell, ``None`` when no frame starts there."""
        ...


@runtime_checkable
class ShipsTemplates(Protocol):
    """Ships named sets of points (device register maps) that a device takes by
    ``template = "…"``: each ``*.toml`` file of ``templates_dir`` holds ``[[template]]`` tables."""

    templates_dir: ClassVar[Path]

    @classmethod
    def describe_point(cls, point: PointConfig) -> str:
        """Where a point lives and how it is decoded, for ``edge-agent templates NAME``."""
        ...


@runtime_checkable
class BuildsPoints(Protocol):
    """Builds its own point type from the common keys and its own (a Modbus point's table,
    address and type), with cross-checks said at the point's keys."""

    @classmethod
    def build_point(cls, common: PointConfig, keys: Keys) -> PointConfig | None:
        """The point, or ``None`` after saying what is wrong through ``keys.problem``."""
        ...

    @classmethod
    def check_points(
        cls, owner: str, mine: Sequence[PointConfig], points: Sequence[PointConfig]
    ) -> list[tuple[str, str, str]]:
        """Problems of ``mine`` (a device's or template's own points) among all ``points`` of
        ``owner`` (its key path, for messages): ``(point name, key, message)`` triples."""
        ...


class Keys(Protocol):
    """One point table as ``build_point`` reads it."""

    def take(self, key: str, convert: Convert[_T], default: object = ...) -> _T | None:
        """The converted value of ``key``; ``default`` when absent (required when no default
        is given); ``None`` after a problem, which is said at the key."""
        ...

    def has(self, key: str) -> bool: ...

    def problem(self, key: str | None, message: str) -> None: ...


_Self = TypeVar("_Self", bound="Unconnected")
_Served = TypeVar("_Served", bound="ServedSimulation")


class Unconnected:
    """Base for drivers whose devices need no connection (sysfs, /proc): entering and leaving
    do nothing."""

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
