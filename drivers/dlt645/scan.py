"""Which DL/T 645 meters answer on a bus: ``edge-agent scan`` on a ``dlt645`` bus.

First read address (0x13) to ``AA…AA``: every meter answers it, so it names the address of a
meter alone on the bus. The scan listens for the whole timeout: several meters answer at once
(their replies collide into garbage) or one after the other, and anything heard after a first
reply is said to be several meters. Then each address read address heard whole, each address
the configuration's devices name, and each one given with ``--units``, is asked its total
energy, waiting the bus's ``timeout`` (a meter may take 500 ms to begin its reply).
A meter found is proposed as a device, with the three-phase template when it answers phase B's
voltage, else the single-phase one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from agent.api import BusConfig, DeviceConfig

from . import protocol
from .driver import Dlt645Driver, NoAnswer, TruncatedReply, line_text, meter_address
from .protocol import ProtocolError

_Say = Callable[[str], None]
TOTAL_ENERGY = 0x00000000
PHASE_B_VOLTAGE = 0x02010200
NO_METER = (
    "no DL/T 645 meter answered: check the wiring (A/B), power, the address, and the line "
    "(this bus: {line}; the standard's default is 2400 8E1)"
)
#: The last line when read address heard several meters and no address given answered.
SEVERAL = (
    "no meter found by address: several meters answered read address, so it cannot name "
    "them; give the addresses on their nameplates with --units (separated by commas)"
)


def no_meter(bus: BusConfig) -> str:
    return NO_METER.format(line=line_text(bus))


def probe_device(bus: BusConfig, address: str) -> DeviceConfig:
    """A stand-in device at ``address``: what the driver's requests are addressed to. It waits
    the bus's ``timeout`` for each reply, as a device of the bus does."""
    return DeviceConfig(f"address {address}", bus.name, "dlt645", 1.0, options={"address": address})


def parse_targets(text: str) -> list[str]:
    """``--units``: meter addresses separated by commas; ``ValueError`` naming a bad one."""
    return [meter_address(part.strip()) for part in text.split(",") if part.strip()]


async def scan_dlt645_bus(
    bus: BusConfig, configured: list[str], targets: str, out: TextIO | None = None
) -> list[str]:
    """Find the meters on ``bus`` (those read address names, ``configured`` and ``targets``
    addresses), reporting on ``out`` and proposing a device for each; returns their
    addresses."""
    out = out or sys.stdout
    asked = list(dict.fromkeys([*configured, *parse_targets(targets)]))

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(
        f"scanning DL/T 645 bus {bus.name} ({bus.address}, {line_text(bus)}): read address to "
        f"AAAAAAAAAAAA, then {len(asked)} address(es), up to {bus.timeout:g} s each (plus "
        "the frames' time on the wire)"
    )
    found: list[str] = []
    async with Dlt645Driver(bus) as driver:
        heard, several = await _read_address(driver, bus, say)
        for address in dict.fromkeys([*heard, *asked]):
            if await _probe(driver, probe_device(bus, address), say):
                found.append(address)
        for address in found:
            phases = await _phases(driver, probe_device(bus, address))
            say(proposal(bus, address, phases))
    if found:
        say(f"found meter(s): {', '.join(found)}")
    else:
        say(SEVERAL if several else no_meter(bus))
    return found


async def _read_address(driver: Dlt645Driver, bus: BusConfig, say: _Say) -> tuple[list[str], bool]:
    """The addresses read address heard whole, and whether several meters answered it: a
    second reply, or any other bytes after the first (the scan listens the whole timeout)."""
    try:
        heard, other = await driver.read_addresses(probe_device(bus, "AAAAAAAAAAAA"))
    except NoAnswer:
        say("read address: no answer (no meter, or one that ignores it)")
        return [], False
    except TruncatedReply as exc:
        say(f"read address: {exc} (a meter slower than the bus's timeout?): probe by address")
        return [], False
    except ProtocolError as exc:
        say(f"read address: {exc} (several meters answering at once?): probe by address")
        return [], True
    if len(heard) == 1 and not other:
        say(f"read address: the meter alone on the bus is {heard[0]}")
        return heard, False
    more = f", then {other} byte(s) or frame(s) more" if other else ""
    say(
        f"read address: a reply from {', '.join(heard)}{more}: several meters on the bus: "
        "probe by address"
    )
    return heard, True


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
