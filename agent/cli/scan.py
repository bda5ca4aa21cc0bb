"""``edge-agent scan BUS``: what answers on a bus, asked by the bus's driver (``Scans``): unit
ids on a Modbus bus, sensor or meter addresses on a serial one.

A port or connection that cannot be used raises ``BusError`` with its one-line reason.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .. import registry
from ..api import BusConfig, Scans
from ..config import Config
from ..errors import DriverError
from .tools import UsageError


async def scan_command(
    config: Config,
    bus: BusConfig,
    targets: str | None,
    driver_name: str | None = None,
    out: TextIO | None = None,
) -> list[str]:
    """What ``edge-agent scan`` does with ``bus``: its driver's scan of ``targets``; with
    ``driver_name``, that driver's (on a bus without devices yet: the protocol to try, with its
    line settings where the bus writes none)."""
    name, driver = _scanner(config, bus, driver_name)
    bus = bus.line_defaulted(registry.line_defaults(registry.load_driver(name)))
    try:
        return await driver.scan(bus, config.devices_on(bus.name), targets, out or sys.stdout)
    except ValueError as exc:
        raise UsageError(f"bus {bus.name}: {exc}") from None


def _scanner(config: Config, bus: BusConfig, driver_name: str | None) -> tuple[str, type[Scans]]:
    """The bus's driver, or the one asked for, or on a serial bus without devices yet the one
    driver of such buses that scans."""
    name = registry.bus_driver(bus, config.devices)
    if driver_name is not None and name not in (None, driver_name):
        raise UsageError(f"bus {bus.name} is a bus of {name} devices, not {driver_name} ones")
    name = name or driver_name
    scanners = dict(_scanners_of(bus.type))
    known = ", ".join(sorted(scanners)) or "none"
    if name is None:
        if len(scanners) == 1:
            return next(iter(scanners.items()))
        raise UsageError(
            f"bus {bus.name} has no devices to say which driver scans it: name one with "
            f"--driver ({known})"
        )
    if name not in scanners:
        raise UsageError(f"{name} cannot scan a {bus.type} bus (drivers that scan one: {known})")
    return name, scanners[name]


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
