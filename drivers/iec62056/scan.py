"""Which meters answer on a bus, and what they read out: ``edge-agent scan`` on an
``iec62056`` bus.

A sign-on without an address first (every meter answers it: on an optical head, the one
meter; on a shared RS-485 bus, several at once, which collide), then one per address: the
configured devices', or the ``--units`` ones (comma-separated). Each meter that answers is read
out once, and a ``[[device]]`` with a point per numeric data line is printed for it, to paste
into the configuration and prune.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from agent.api import BusConfig, DeviceConfig, DeviceError

from .driver import Iec62056Driver, Readout, number
from .protocol import DataSet

NO_METER = (
    "no meter answered — check the optical head's position and its cable (or the RS-485 "
    "wiring), the addresses, and that the bus signs on at 300 baud"
)
#: The options of a configured device a probe keeps: how to talk, not who to expect.
_PROBE_OPTIONS = ("max_baudrate", "line_timeout", "reaction_time", "readout_timeout")


@dataclass(frozen=True)
class Found:
    """A meter that answered the sign-on with ``address`` ("": none), and its readout."""

    address: str
    readout: Readout


def addresses_to_ask(devices: Sequence[DeviceConfig], targets: str | None) -> list[str]:
    """ "" (no address) first, then ``targets`` (comma-separated) or the devices' addresses."""
    if targets is not None:
        asked = [t.strip() for t in targets.split(",") if t.strip()]
        if not asked:
            raise ValueError("--units takes meter addresses, comma-separated: 12345678,87654321")
    else:
        asked = [str(d.options["address"]) for d in devices if "address" in d.options]
    return ["", *dict.fromkeys(asked)]


def probe_device(bus: BusConfig, address: str, devices: Sequence[DeviceConfig]) -> DeviceConfig:
    """A stand-in device signing on with ``address``, talking as the configured ones do."""
    like = next((d for d in devices if d.options.get("address") == address), None)
    like = like or (devices[0] if devices else None)
    options = {k: v for k, v in (like.options if like else {}).items() if k in _PROBE_OPTIONS}
    if address:
        options["address"] = address
    return DeviceConfig(
        f"address {address or '(none)'}", bus.name, "iec62056", 1.0, options=options
    )


async def scan(
    bus: BusConfig,
    devices: Sequence[DeviceConfig],
    addresses: Sequence[str],
    progress: Callable[[str, str], None],
) -> list[Found]:
    """The meters that answer the sign-ons with ``addresses``; ``progress(sign-on, text)``
    hears of each. Raises ``BusError`` when the port cannot be used."""
    found: list[Found] = []
    async with Iec62056Driver(bus) as driver:
        for address in addresses:
            asked = f"/?{address}!"
            try:
                readout = await driver.readout(probe_device(bus, address, devices))
            except DeviceError as exc:
                progress(asked, str(exc).split(": ", 1)[-1])
                continue
            found.append(Found(address, readout))
            ident = readout.identification
            progress(
                asked,
                f"{ident} (manufacturer {ident.manufacturer}, offers "
                f"{ident.max_baudrate or bus.baudrate} baud): {len(readout.data_sets)} data "
                f"set(s), read at {readout.baudrate} baud",
            )
    return found


def proposed_device(bus: BusConfig, found: Found, name: str) -> list[str]:
    """A ``[[device]]`` for the meter ``found``: a point per data line whose first value is a
    number, named after its OBIS code, in the unit the meter gives."""
    lines = [
        "[[device]]",
        f"name = {json.dumps(name)}",
        f"bus = {json.dumps(bus.name)}",
        'driver = "iec62056"',
    ]
    if found.address:
        lines.append(f"address = {json.dumps(found.address)}")
    lines += [f"identification = {json.dumps(found.readout.identification.ident)}"]
    lines.append('interval = "1m"')
    names: set[str] = set()
    for data_set in found.readout.data_sets:
        unit = _numeric_unit(data_set)
        if unit is None:
            continue
        point = _point_name(data_set.address, names)
        lines += ["  [[device.point]]", f"  name = {json.dumps(point)}"]
        lines.append(f"  obis = {json.dumps(data_set.address)}")
        if _text_like(data_set):
            lines.append('  type = "string"                  # digits that are no quantity')
        elif unit:
            lines.append(f"  unit = {json.dumps(unit)}")
    return lines


#: OBIS codes of digits that are no quantity: identification numbers (C.1.0, 0.0.0…), the error
#: register (F.F), the meter's clock (0.9.1, 0.9.2).
_TEXT_CODES = re.compile(r"(?:.*:)?(?:C\.1\.\d|0\.0\.\d|F\.F|0\.9\.\d)(?:[*&].*)?")


def _text_like(data_set: DataSet) -> bool:
    """Whether a data set's digits are an identifier, a code or a time rather than a quantity:
    published as a number, a serial number would lose its leading zeros."""
    text, unit = data_set.values[0]
    leading_zero = len(text) > 1 and text.startswith("0") and "." not in text
    return not unit and (leading_zero or bool(_TEXT_CODES.fullmatch(data_set.address)))


def _numeric_unit(data_set: DataSet) -> str | None:
    """The unit of a data set whose first value is a number ("" without one), else None."""
    if data_set.obis is None or not data_set.values:
        return None
    text, unit = data_set.values[0]
    try:
        number(text, data_set.address)
    except ValueError:
        return None
    return unit


def _point_name(address: str, taken: set[str]) -> str:
    base = "obis_" + re.sub(r"[^0-9A-Za-z]+", "_", address).strip("_")
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


async def scan_iec62056_bus(
    bus: BusConfig, devices: Sequence[DeviceConfig], targets: str | None, out: TextIO | None
) -> list[str]:
    """Sign on without an address and with ``targets`` (or the devices' addresses), reporting
    on ``out`` with a proposed device per meter; returns the sign-ons that were answered."""
    out = out or sys.stdout
    addresses = addresses_to_ask(devices, targets)

    def say(asked: str, text: str) -> None:
        print(f"{asked}: {text}", file=out, flush=True)

    print(
        f"scanning IEC 62056-21 bus {bus.name} ({bus.address}, signing on at {bus.baudrate} "
        f"baud) with {', '.join(f'/?{a}!' for a in addresses)}",
        file=out,
        flush=True,
    )
    found = await scan(bus, devices, addresses, say)
    if not found:
        print(NO_METER, file=out, flush=True)
        return []
    for meter in _distinct(found):
        name = f"meter-{meter.address}" if meter.address else "meter"
        print(f"\n# the meter answering /?{meter.address}!, as a device:", file=out)
        print("\n".join(proposed_device(bus, meter, name)), file=out, flush=True)
    return [f"/?{m.address}!" for m in found]


def _distinct(found: list[Found]) -> list[Found]:
    """The meters found, the one that answered without an address left out when it answered
    its address too (point to point: one meter, asked twice)."""
    addressed = {f.readout.identification for f in found if f.address}
    return [f for f in found if f.address or f.readout.identification not in addressed]
