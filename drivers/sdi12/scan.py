"""Which SDI-12 addresses answer on a bus: ``edge-agent scan`` on an ``sdi12`` bus.

First the address query ``?!``, which names the address of a sensor alone on the bus (the one
way to find a sensor whose address nobody wrote down); then each of the 62 addresses is asked
``aI!`` once, and the ones that answer say who they are. A probe waits at most
``PROBE_TIMEOUT``: a sensor starts its answer within 15 ms, and a character at 1200 baud takes
8.3 ms, so the 62 addresses take about ten seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

from agent.api import BusConfig, DeviceConfig, DeviceError

from . import protocol
from .driver import Sdi12Driver
from .protocol import Identification, ProtocolError

PROBE_TIMEOUT = 0.1
NO_SENSOR = (
    "no SDI-12 sensor answered — check wiring, power, and the adapter "
    '(adapter = "uart" needs 1200 baud 7E1)'
)


def probe_device(bus: BusConfig, address: str, adapter: str) -> DeviceConfig:
    """A stand-in device at ``address``: what the driver's conversation is addressed to."""
    options = {"address": address, "adapter": adapter, "line_timeout": PROBE_TIMEOUT}
    return DeviceConfig(f"address {address}", bus.name, "sdi12", 1.0, options=options)


async def scan(
    bus: BusConfig,
    adapter: str,
    progress: Callable[[str, str], None],
    addresses: str = protocol.ADDRESSES,
) -> list[tuple[str, Identification]]:
    """The sensors that answer on ``bus``, by address; ``progress(address, text)`` hears of each
    finding. Raises ``BusError`` when the port cannot be used."""
    found: list[tuple[str, Identification]] = []
    async with Sdi12Driver(replace(bus, timeout=PROBE_TIMEOUT)) as driver:
        alone = await driver.query_address(probe_device(bus, "?", adapter))
        if alone:
            progress(alone, "answers the address query (?!)")
        for address in addresses:
            device = probe_device(bus, address, adapter)
            try:
                identity = await driver.identify(device, attempts=1)
            except (DeviceError, ProtocolError):
                continue
            found.append((address, identity))
            progress(address, str(identity))
    return found


async def scan_sdi12_bus(
    bus: BusConfig, adapter: str, out: TextIO | None = None, addresses: str = ""
) -> list[str]:
    """Ask the SDI-12 ``addresses`` (default: all) on ``bus``, reporting on ``out``; returns
    those that answer."""
    out = out or sys.stdout

    def say(address: str, text: str) -> None:
        print(f"address {address}: {text}", file=out, flush=True)

    print(
        f"scanning SDI-12 bus {bus.name} ({bus.address}, {adapter} adapter) for addresses "
        f"{addresses or '0-9, a-z, A-Z'}, up to {PROBE_TIMEOUT:g} s each",
        file=out,
        flush=True,
    )
    found = [a for a, _ in await scan(bus, adapter, say, addresses or protocol.ADDRESSES)]
    print(f"found address(es): {', '.join(found)}" if found else NO_SENSOR, file=out, flush=True)
    return found
