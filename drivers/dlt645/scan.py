"""Which DL/T 645 meters answer on a bus: ``edge-agent scan`` on a ``dlt645`` bus.

First read address (0x13) to ``AA…AA``: every meter answers it, so it names the address of a
meter alone on the bus (several at once collide into garbage, said so); then each address the
configuration's devices name, and each one given with ``--units``, is asked its total energy.
A meter found is proposed as a device, with the three-phase template when it answers phase B's
voltage, else the single-phase one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

from agent.api import BusConfig, DeviceConfig

from . import protocol
from .driver import Dlt645Driver, NoAnswer, meter_address
from .protocol import ProtocolError

_Say = Callable[[str], None]
PROBE_TIMEOUT = 0.5
TOTAL_ENERGY = 0x00000000
PHASE_B_VOLTAGE = 0x02010200
NO_METER = (
    "no DL/T 645 meter answered: check the wiring (A/B), power, the address, and the line "
    "(2400 baud 8E1 by default)"
)


def probe_device(bus: BusConfig, address: str) -> DeviceConfig:
    """A stand-in device at ``address``: what the driver's requests are addressed to."""
    options = {"address": address, "line_timeout": min(bus.timeout, PROBE_TIMEOUT)}
    return DeviceConfig(f"address {address}", bus.name, "dlt645", 1.0, options=options)


def parse_targets(text: str) -> list[str]:
    """``--units``: meter addresses separated by commas; ``ValueError`` naming a bad one."""
    return [meter_address(part.strip()) for part in text.split(",") if part.strip()]


async def scan_dlt645_bus(
    bus: BusConfig, configured: list[str], targets: str, out: TextIO | None = None
) -> list[str]:
    """Find the meters on ``bus`` (the one alone, ``configured`` and ``targets`` addresses),
    reporting on ``out`` and proposing a device for each; returns their addresses."""
    out = out or sys.stdout
    asked = list(dict.fromkeys([*configured, *parse_targets(targets)]))

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(
        f"scanning DL/T 645 bus {bus.name} ({bus.address}, {bus.baudrate} "
        f"{bus.bytesize}{bus.parity}{bus.stopbits}): read address to AAAAAAAAAAAA, then "
        f"{len(asked)} address(es), up to {PROBE_TIMEOUT:g} s each"
    )
    found: list[str] = []
    async with Dlt645Driver(replace(bus, timeout=min(bus.timeout, PROBE_TIMEOUT))) as driver:
        alone = await _read_address(driver, bus, say)
        for address in dict.fromkeys([*([alone] if alone else []), *asked]):
            if await _probe(driver, probe_device(bus, address), say):
                found.append(address)
        for address in found:
            phases = await _phases(driver, probe_device(bus, address))
            say(proposal(bus, address, phases))
    say(f"found meter(s): {', '.join(found)}" if found else NO_METER)
    return found


async def _read_address(driver: Dlt645Driver, bus: BusConfig, say: _Say) -> str | None:
    try:
        alone = await driver.read_address(probe_device(bus, "AAAAAAAAAAAA"))
    except NoAnswer:
        say("read address: no answer (no meter, or one that ignores it)")
        return None
    except ProtocolError as exc:
        say(f"read address: {exc} (several meters answering at once?): probe by address")
        return None
    say(f"read address: the meter alone on the bus is {alone}")
    return alone


async def _probe(driver: Dlt645Driver, device: DeviceConfig, say: _Say) -> bool:
    address = device.options["address"]
    form = protocol.known_format(TOTAL_ENERGY) or protocol.Format(8, 2, True)
    try:
        energy = await driver.read_value(device, TOTAL_ENERGY, form)
    except NoAnswer:
        say(f"address {address}: no answer")
        return False
    except protocol.AbnormalReply as exc:
        say(f"address {address}: answers ({exc} for total energy)")
        return True
    except ProtocolError as exc:
        say(f"address {address}: {exc}")
        return False
    say(f"address {address}: answers, total energy {energy} kWh")
    return True


async def _phases(driver: Dlt645Driver, device: DeviceConfig) -> int:
    form = protocol.known_format(PHASE_B_VOLTAGE) or protocol.Format(4, 1)
    try:
        await driver.read_value(device, PHASE_B_VOLTAGE, form)
    except (NoAnswer, ProtocolError):
        return 1
    return 3


def proposal(bus: BusConfig, address: str, phases: int) -> str:
    """A ``[[device]]`` table for the meter at ``address``, to paste into the configuration."""
    three = phases == 3
    template = "dlt645-three-phase" if three else "dlt645-single-phase"
    kind = "answers phase B voltage: three-phase" if three else "no phase B voltage: single-phase"
    return "\n".join(
        [
            f"# meter {address}: {kind}",
            "[[device]]",
            f'name = "meter-{address}"',
            f'bus = "{bus.name}"',
            'driver = "dlt645"',
            f'address = "{address}"',
            f'template = "{template}"',
            'interval = "1m"',
        ]
    )
