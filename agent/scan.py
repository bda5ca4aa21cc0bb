"""``edge-agent scan BUS``: which unit ids answer on a Modbus bus, which addresses on an SDI-12 one.

On a terminal one progress line is rewritten in place (``\\r``); in a log or a pipe only the units
that answer, and answers that made no sense, are printed, a line each. The last line lists what
was found, or says what to check when nothing answered. A port or connection that cannot be used
raises ``BusError`` with its one-line reason.
"""

from __future__ import annotations

import sys
from typing import TextIO

from drivers.modbus.scan import PROBE_TIMEOUT, Probe, scan

from .config import BusConfig, Config
from .driver import bus_driver
from .tools import UsageError

NOTHING_FOUND = "no unit answered — check wiring, baud rate and parity"
NO_SENSOR = (
    "no SDI-12 sensor answered — check wiring, power, and the adapter "
    '(adapter = "uart" needs 1200 baud 7E1)'
)


async def scan_command(config: Config, bus: BusConfig, units: range) -> None:
    """What ``edge-agent scan`` does with ``bus``: a Modbus or an SDI-12 scan, by its driver."""
    driver = bus_driver(bus, config.devices)
    if bus.type != "serial":
        await scan_bus(bus, units)
    elif driver in ("sdi12", None):  # a serial bus without devices yet: SDI-12 is what scans
        adapters = [d.options.get("adapter", "uart") for d in config.devices if d.bus == bus.name]
        await scan_sdi12_bus(bus, adapters[0] if adapters else "uart")
    else:
        raise UsageError(
            f"bus {bus.name} is a serial bus of {driver} devices: scan finds Modbus units "
            "and SDI-12 sensors"
        )


async def scan_sdi12_bus(
    bus: BusConfig, adapter: str, out: TextIO | None = None, addresses: str = ""
) -> list[str]:
    """Ask the SDI-12 ``addresses`` (default: all) on ``bus``, reporting on ``out``; returns
    those that answer."""
    from drivers.sdi12.protocol import ADDRESSES
    from drivers.sdi12.scan import PROBE_TIMEOUT as SDI12_TIMEOUT
    from drivers.sdi12.scan import scan as scan_sdi12

    out = out or sys.stdout

    def say(address: str, text: str) -> None:
        print(f"address {address}: {text}", file=out, flush=True)

    print(
        f"scanning SDI-12 bus {bus.name} ({bus.address}, {adapter} adapter) for addresses "
        f"{addresses or '0-9, a-z, A-Z'}, up to {SDI12_TIMEOUT:g} s each",
        file=out,
        flush=True,
    )
    found = [a for a, _ in await scan_sdi12(bus, adapter, say, addresses or ADDRESSES)]
    print(f"found address(es): {', '.join(found)}" if found else NO_SENSOR, file=out, flush=True)
    return found


async def scan_bus(bus: BusConfig, units: range, out: TextIO | None = None) -> list[int]:
    """Probe ``units`` on ``bus``, reporting on ``out`` (stdout); returns the ids that answer."""
    report = _Report(bus, units, out or sys.stdout)
    report.start()
    try:
        found = await scan(bus, units, report.probed)
    finally:
        report.end_progress()
    report.finish(found)
    return found


class _Report:
    """What a technician watches during a scan."""

    def __init__(self, bus: BusConfig, units: range, out: TextIO) -> None:
        self.bus = bus
        self.units = units
        self.out = out
        self.live = out.isatty()
        self.found: list[int] = []
        self.done = 0
        self._width = 0  # of the progress line on screen, to blank it out

    def start(self) -> None:
        units = self.units
        span = f"{units[0]}-{units[-1]}" if len(units) > 1 else ", ".join(map(str, units))
        wait = min(self.bus.timeout, PROBE_TIMEOUT)
        self._line(
            f"scanning bus {self.bus.name} ({self.bus.address}) for unit(s) {span}, "
            f"up to {wait:g} s each"
        )

    def probed(self, probe: Probe) -> None:
        self.done += 1
        if probe.found:
            self.found.append(probe.unit)
            detail = f" ({probe.cause})" if probe.cause else ""
            self._line(f"unit {probe.unit}: answers{detail}")
        elif probe.heard:
            self._line(f"unit {probe.unit}: {probe.cause}")
        if self.live:
            self._progress(probe.unit)

    def end_progress(self) -> None:
        if self.live and self._width:
            self.out.write("\r" + " " * self._width + "\r")
            self._width = 0
            self.out.flush()

    def finish(self, found: list[int]) -> None:
        if found:
            self._line(f"found unit(s): {', '.join(str(u) for u in found)}")
        else:
            self._line(NOTHING_FOUND)

    def _progress(self, unit: int) -> None:
        found = ", ".join(str(u) for u in self.found) or "none yet"
        text = f"unit {unit} ({self.done}/{len(self.units)}), found: {found}"
        self.out.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.out.flush()

    def _line(self, text: str) -> None:
        """A line of its own; on a terminal, over the progress line, which is then redrawn."""
        self.end_progress()
        print(text, file=self.out, flush=True)
