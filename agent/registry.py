"""How a driver is found: by name, through the ``edge_agent.drivers`` entry points, and by the
bus type it brings, through ``edge_agent.bus_types``. Built-in drivers register like any other;
only the driver asked for is imported."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .api.config import SERIAL_BUS, BusConfig, BusType, DeviceConfig
from .api.driver import Driver, DriverContext
from .api.keys import Convert
from .errors import UnknownDriverError

DRIVERS_GROUP = "edge_agent.drivers"
BUS_TYPES_GROUP = "edge_agent.bus_types"


class Registry:
    """The drivers and bus types installed, read from the entry points once (a scan of every
    installed distribution's metadata: milliseconds each, which a configuration of many devices
    would pay per device); a driver module is imported only when it is asked for."""

    def __init__(self) -> None:
        self._drivers = {ep.name: ep for ep in entry_points(group=DRIVERS_GROUP)}
        self._bus_types = {ep.name: ep for ep in entry_points(group=BUS_TYPES_GROUP)}

    def driver_names(self) -> list[str]:
        """Every registered driver name, sorted."""
        return sorted(self._drivers)

    def load_driver(self, name: str) -> type[Driver]:
        """The driver class registered as ``name``."""
        ep = self._drivers.get(name)
        if ep is None:
            known = ", ".join(self.driver_names()) or "none (is edge-agent installed?)"
            raise UnknownDriverError(f"unknown driver {name!r}; known drivers: {known}")
        driver: type[Driver] = _load(ep, f"driver {name!r}")
        return driver

    def bus_type_names(self) -> list[str]:
        """Every bus type a person may write: the core's ``serial`` and the drivers' own."""
        return sorted({SERIAL_BUS.name, *self._bus_types})

    def bus_type(self, name: str) -> tuple[BusType, str | None]:
        """The bus type written as ``name`` and the driver that brings it (``None``: the devices
        on it name theirs); ``UnknownDriverError`` when no driver brings it."""
        if name == SERIAL_BUS.name:
            return SERIAL_BUS, None
        ep = self._bus_types.get(name)
        if ep is None:
            raise UnknownDriverError(f"unknown bus type {name!r}")
        driver = _load(ep, f"bus type {name!r}")
        found = next((t for t in defined_buses(driver) if t.name == name), None)
        if found is None:
            raise UnknownDriverError(f"bus type {name!r}: {ep.value} does not define it")
        owner = next((n for n, d in self._drivers.items() if d.value == ep.value), None)
        return found, owner


def driver_names() -> list[str]:
    """Every registered driver name, sorted."""
    return Registry().driver_names()


def load_driver(name: str) -> type[Driver]:
    """The driver class registered as ``name``."""
    return Registry().load_driver(name)


def bus_type(name: str) -> tuple[BusType, str | None]:
    """The bus type written as ``name`` and the driver that brings it."""
    return Registry().bus_type(name)


def bus_driver(bus: BusConfig, devices: Sequence[DeviceConfig]) -> str | None:
    """The driver that owns ``bus``: the one its devices name (the loader refuses a bus whose
    devices name different ones), else the one that brings its type."""
    names = {d.driver for d in devices if d.bus == bus.name}
    if len(names) == 1:
        return names.pop()
    if names or bus.type in (SERIAL_BUS.name, "local"):
        return None
    try:
        return bus_type(bus.type)[1]
    except UnknownDriverError:
        return None


def build_driver(
    driver: type[Driver], bus: BusConfig, context: DriverContext | None = None
) -> Driver:
    """An instance of ``driver`` for ``bus``."""
    return driver(bus, context or DriverContext())


# --- what a driver class declares (see agent.api.driver); every declaration is optional


def bus_types(driver: type[Driver]) -> tuple[str, ...]:
    return tuple(getattr(driver, "bus_types", ()))


def defined_buses(driver: type[Driver]) -> tuple[BusType, ...]:
    return tuple(getattr(driver, "defines_buses", ()))


def is_local(driver: type[Driver]) -> bool:
    """Whether the driver's devices are on no bus."""
    return not bus_types(driver)


def options(driver: type[Driver], kind: str) -> Mapping[str, Convert[Any]]:
    """The driver's own keys of a ``kind`` table: ``bus``, ``device`` or ``point``."""
    declared: Mapping[str, Convert[Any]] = getattr(driver, f"{kind}_options", {})
    return declared


def line_defaults(driver: type[Driver]) -> Mapping[str, Any]:
    """The line settings ``driver`` prescribes for a serial bus of its devices."""
    declared: Mapping[str, Any] = getattr(driver, "line_defaults", {})
    return declared


def _load(ep: EntryPoint, what: str) -> Any:
    try:
        loaded: Any = ep.load()
    except (ImportError, AttributeError) as exc:
        raise UnknownDriverError(f"{what} ({ep.value}) cannot be loaded: {exc}") from exc
    return loaded
