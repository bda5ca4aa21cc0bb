"""How a driver is found: by name, through the ``edge_agent.drivers`` entry points, and by the
bus type it brings, through ``edge_agent.bus_types``. Built-in drivers register like any other;
only the driver asked for is imported.

The built-in drivers are also known here, by the same names and objects as their entry points
(a test holds the two together): a configuration that names only those is loaded without
reading any distribution's metadata (``importlib.metadata`` alone is most of a megabyte on a
512 MB board, and each read a scan of every installed distribution). A name that is not built in,
or a list of every driver, reads the entry points.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .api.config import SERIAL_BUS, BusConfig, BusType, DeviceConfig
from .api.driver import Driver, DriverContext
from .api.keys import Convert
from .errors import UnknownDriverError

DRIVERS_GROUP = "edge_agent.drivers"
BUS_TYPES_GROUP = "edge_agent.bus_types"


#: The built-in drivers and bus types: entry point name → object reference, as pyproject.toml
#: registers them.
BUILT_IN_DRIVERS = {
    "modbus": "drivers.modbus:ModbusDriver",
    "system": "drivers.system:SystemDriver",
    "serial-line": "drivers.serial_line:SerialLineDriver",
    "ds18b20": "drivers.ds18b20:Ds18b20Driver",
    "nmea": "drivers.nmea:NmeaDriver",
    "sdi12": "drivers.sdi12:Sdi12Driver",
    "dlt645": "drivers.dlt645:Dlt645Driver",
    "iec62056": "drivers.iec62056:Iec62056Driver",
    "gpio-input": "drivers.gpio:GpioInputDriver",
    "gpio-counter": "drivers.gpio:GpioCounterDriver",
    "gpio-output": "drivers.gpio:GpioOutputDriver",
}
BUILT_IN_BUS_TYPES = {
    "modbus-tcp": "drivers.modbus:ModbusDriver",
    "modbus-rtu": "drivers.modbus:ModbusDriver",
    "modbus-rtu-over-tcp": "drivers.modbus:ModbusDriver",
}


class Registry:
    """The drivers and bus types installed: the built-in ones, and those of the entry points,
    read once and only when a name is not built in (a scan of every installed distribution's
    metadata: milliseconds each, which a configuration of many devices would pay per device);
    a driver module is imported only when it is asked for."""

    def __init__(self) -> None:
        self._installed: tuple[dict[str, str], dict[str, str]] | None = None

    def _entry_points(self) -> tuple[dict[str, str], dict[str, str]]:
        """Drivers and bus types, name → object reference: the built-in ones and every
        installed distribution's (a built-in name is never taken from another)."""
        if self._installed is None:
            from importlib.metadata import entry_points

            drivers = {ep.name: ep.value for ep in entry_points(group=DRIVERS_GROUP)}
            bus_types = {ep.name: ep.value for ep in entry_points(group=BUS_TYPES_GROUP)}
            self._installed = (drivers | BUILT_IN_DRIVERS, bus_types | BUILT_IN_BUS_TYPES)
        return self._installed

    def _driver_ref(self, name: str) -> str | None:
        return BUILT_IN_DRIVERS.get(name) or self._entry_points()[0].get(name)

    def _bus_type_ref(self, name: str) -> str | None:
        return BUILT_IN_BUS_TYPES.get(name) or self._entry_points()[1].get(name)

    def driver_names(self) -> list[str]:
        """Every registered driver name, sorted."""
        return sorted(self._entry_points()[0])

    def load_driver(self, name: str) -> type[Driver]:
        """The driver class registered as ``name``."""
        ref = self._driver_ref(name)
        if ref is None:
            known = ", ".join(self.driver_names()) or "none (is edge-agent installed?)"
            raise UnknownDriverError(f"unknown driver {name!r}; known drivers: {known}")
        driver: type[Driver] = _load(ref, f"driver {name!r}")
        return driver

    def bus_type_names(self) -> list[str]:
        """Every bus type a person may write: the core's ``serial`` and the drivers' own."""
        return sorted({SERIAL_BUS.name, *self._entry_points()[1]})

    def bus_type_choices(self, written: object) -> list[str]:
        """The names a bus's ``type`` is checked against: the one written when the core or a
        built-in driver brings it (no metadata need be read), else every installed one."""
        if isinstance(written, str) and (
            written in BUILT_IN_BUS_TYPES or written == SERIAL_BUS.name
        ):
            return [written]
        return self.bus_type_names()

    def bus_type(self, name: str) -> tuple[BusType, str | None]:
        """The bus type written as ``name`` and the driver that brings it (``None``: the devices
        on it name theirs); ``UnknownDriverError`` when no driver brings it."""
        if name == SERIAL_BUS.name:
            return SERIAL_BUS, None
        ref = self._bus_type_ref(name)
        if ref is None:
            raise UnknownDriverError(f"unknown bus type {name!r}")
        driver = _load(ref, f"bus type {name!r}")
        found = next((t for t in defined_buses(driver) if t.name == name), None)
        if found is None:
            raise UnknownDriverError(f"bus type {name!r}: {ref} does not define it")
        drivers = BUILT_IN_DRIVERS if name in BUILT_IN_BUS_TYPES else self._entry_points()[0]
        owner = next((n for n, value in drivers.items() if value == ref), None)
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


#: An entry point's object reference, as ``importlib.metadata.EntryPoint`` reads it.
_REFERENCE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attribute>[\w.]+)\s*)?(\[.*\])?\s*$")


def _load(ref: str, what: str) -> Any:
    """The object an entry point's ``module:attribute`` reference names."""
    parts = _REFERENCE.match(ref)
    try:
        if parts is None:
            raise ImportError("not a module:attribute reference")
        loaded: Any = importlib.import_module(parts["module"])
        for name in filter(None, (parts["attribute"] or "").split(".")):
            loaded = getattr(loaded, name)
    except (ImportError, AttributeError) as exc:
        raise UnknownDriverError(f"{what} ({ref}) cannot be loaded: {exc}") from exc
    return loaded
