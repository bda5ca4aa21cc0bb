"""The driver interface, and how a driver is found by name.

A driver is built for one bus and owns its connection. The scheduler calls it one transaction at a
time, so a driver never has to lock.

A driver **must**:

* ``validate(bus, devices)`` — classmethod, no I/O: the problems of this bus and its devices as
  ``(key path, message)`` pairs, e.g. ``("device.meter.point.volts", "…")``;
* be an async context manager: ``__aenter__`` connects (it may raise ``BusError``; the scheduler
  retries by entering the same instance again), ``__aexit__`` disconnects and never raises;
* ``read(device)`` — one poll: a ``Poll`` of what it read; raise ``DeviceError`` (or ``BusError``
  when the connection itself broke) when nothing could be read. Never return ``None``.

A driver **may** offer:

* ``describe(device) -> list[str]`` — the requests a poll makes, for logs and ``check --plan``;
* ``write(device, point, value)`` — async: set a ``writable`` point (a relay, a setpoint) to
  ``value``, already checked against the point's ``min``/``max``; raise ``DeviceError`` when the
  device refused or did not answer;
* take keyword arguments in ``__init__`` beside ``bus``, which the agent then passes:
  ``devices`` — the devices it will poll, so that it can set them up when entered (open a
  counter's pin at start, put a relay in its safe state at once); ``state_dir`` — a directory
  of the data dir (created by the driver when it first writes) for files named after its
  devices (a pulse count that must survive a reboot), or ``None`` when nothing may be kept
  (``edge-agent read`` while the agent runs).

A driver that is not Modbus **may** declare, as class attributes:

* ``bus_types`` — the bus types its devices sit on (a tuple); empty: its devices are on no bus,
  and each gets a ``BusConfig`` of type ``"local"`` named after it, and a driver of its own;
* ``device_options`` — its own device keys: ``{key: converter}``; a converter takes the TOML
  value and returns it converted, or raises ``ValueError``/``TypeError`` with a message for a
  person (``agent.config.sections`` has the common ones). The values land in
  ``DeviceConfig.options``; a key left out is absent.
* ``point_options`` — its own point keys, the same way (``PointConfig.options``). A driver with
  ``point_options`` gets points without Modbus keys (table, address…): name, unit, scale,
  offset, deadband, heartbeat, writable, min, max, and its own.

Unknown keys are refused by the loader for every driver alike.

Built-in drivers register through the same ``edge_agent.drivers`` entry-point group that third
parties use.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

from .config.types import BusConfig, DeviceConfig
from .errors import UnknownDriverError
from .model import Poll

ENTRY_POINT_GROUP = "edge_agent.drivers"


class Driver(Protocol):
    """A connection to one bus, and the way to poll the devices on it."""

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]: ...

    def __init__(self, bus: BusConfig) -> None: ...

    async def __aenter__(self) -> Driver: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def read(self, device: DeviceConfig) -> Poll: ...


#: Which driver serves the devices on a bus of each type.
BUS_DRIVERS: dict[str, str] = {
    "modbus-tcp": "modbus",
    "modbus-rtu": "modbus",
    "modbus-rtu-over-tcp": "modbus",
}


_Self = TypeVar("_Self", bound="Unconnected")


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


def is_local(driver: type[Driver]) -> bool:
    """Whether the driver's devices are on no bus."""
    return not getattr(driver, "bus_types", ("bus",))


def bus_driver(bus: BusConfig, devices: Sequence[DeviceConfig]) -> str | None:
    """The driver that owns ``bus``: implied by a Modbus bus type, else the one its devices name
    (a port is one driver's; the loader refuses a bus whose devices name different ones)."""
    names = {d.driver for d in devices if d.bus == bus.name}
    return BUS_DRIVERS.get(bus.type) or (names.pop() if len(names) == 1 else None)


def local_bus(device: DeviceConfig) -> BusConfig:
    """The stand-in bus of a device on no bus: its own, named after it."""
    return BusConfig(device.name, "local")


def build_driver(
    driver: type[Driver],
    bus: BusConfig,
    state_dir: Path | None,
    devices: Sequence[DeviceConfig] = (),
) -> Driver:
    """An instance of ``driver`` for ``bus``, handed ``devices`` and ``state_dir`` when its
    ``__init__`` takes them."""
    wanted = inspect.signature(driver.__init__).parameters
    extra: dict[str, object] = {}
    if "devices" in wanted:
        extra["devices"] = tuple(devices)
    if "state_dir" in wanted:
        extra["state_dir"] = state_dir
    make: Callable[..., Driver] = driver
    return make(bus, **extra)


def driver_names() -> list[str]:
    """Every registered driver name, sorted."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_driver(name: str) -> type[Driver]:
    """The driver class registered as ``name``; only that driver's module is imported."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                driver: type[Driver] = ep.load()
            except (ImportError, AttributeError) as exc:
                raise UnknownDriverError(
                    f"driver {name!r} ({ep.value}) cannot be loaded: {exc}"
                ) from exc
            return driver
    known = ", ".join(driver_names()) or "none (is edge-agent installed?)"
    raise UnknownDriverError(f"unknown driver {name!r}; known drivers: {known}")
