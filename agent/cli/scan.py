"""``edge-agent scan BUS``: what answers on a bus, asked by the bus's driver (``Scans``): unit
ids on a Modbus bus, addresses on an SDI-12 one.

A port or connection that cannot be used raises ``BusError`` with its one-line reason.
"""

from __future__ import annotations

import sys

from .. import registry
from ..api import BusConfig, Scans
from ..config import Config
from ..errors import DriverError
from .tools import UsageError


async def scan_command(config: Config, bus: BusConfig, targets: str | None) -> list[str]:
    """What ``edge-agent scan`` does with ``bus``: its driver's scan of ``targets``."""
    driver = _scanner(config, bus)
    try:
        return await driver.scan(bus, config.devices_on(bus.name), targets, sys.stdout)
    except ValueError as exc:
        raise UsageError(f"bus {bus.name}: {exc}") from None


def _scanner(config: Config, bus: BusConfig) -> type[Scans]:
    """The bus's driver, or on a serial bus without devices yet the one driver of such buses
    that scans."""
    name = registry.bus_driver(bus, config.devices)
    if name is not None:
        driver = registry.load_driver(name)
        if isinstance(driver, Scans):
            return driver
        raise UsageError(f"bus {bus.name} is a bus of {name} devices, and {name} cannot scan")
    scanners = dict(_scanners_of(bus.type))
    if len(scanners) == 1:
        return next(iter(scanners.values()))
    known = ", ".join(sorted(scanners)) or "none"
    raise UsageError(
        f"bus {bus.name} has no devices to say which driver scans it (drivers that scan a "
        f"{bus.type} bus: {known}): add a device naming its driver"
    )


def _scanners_of(bus_type: str) -> list[tuple[str, type[Scans]]]:
    found: list[tuple[str, type[Scans]]] = []
    for name in registry.driver_names():
        try:
            driver = registry.load_driver(name)
        except DriverError:
            continue
        if isinstance(driver, Scans) and bus_type in registry.bus_types(driver):
            found.append((name, driver))
    return found
