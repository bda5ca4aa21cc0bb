"""Which unit ids answer on a Modbus bus: ``edge-agent scan``.

Each unit id is probed with a read of one holding register at address 0 (``ModbusDriver.probe``).
Any answer, even an exception response (many devices have no register 0), means a device is
there; a gateway's exceptions 10 and 11 mean the opposite (nothing answered behind it). A probe
waits at most ``PROBE_TIMEOUT`` (or the bus timeout, if shorter), so that the 247 ids of a full
scan take about a minute on a quiet line; the bus's ``request_gap`` is kept between probes as
between polls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TextIO

from agent.api import BusConfig

from .driver import ModbusDriver

#: Longest wait for a probe's answer, in seconds.
PROBE_TIMEOUT = 0.3
#: The highest unit id a scan may try (248-255 are reserved).
MAX_UNIT = 247
NOTHING_FOUND = "no unit answered — check wiring, baud rate and parity"

#: Probe outcomes (``FAULTS`` categories) that mean a device answers at that unit id.
ANSWERED = frozenset({"ok", "exception"})


@dataclass(frozen=True)
class Probe:
    """How the probe of one unit id ended: ``outcome`` is a ``FAULTS`` category."""

    unit: int
    outcome: str
    cause: str = ""

    @property
    def found(self) -> bool:
        return self.outcome in ANSWERED

    @property
    def heard(self) -> bool:
        """Whether something came back that was not a usable answer (line settings?)."""
        return self.outcome in ("crc", "garbled", "wrong_unit")


async def scan(
    bus: BusConfig, units: Iterable[int], progress: Callable[[Probe], None] | None = None
) -> list[int]:
    """The unit ids in ``units`` that answer on ``bus``, in order; ``progress`` sees each probe.

    Raises ``BusError`` when the port or connection cannot be used.
    """
    probing = replace(bus, timeout=min(bus.timeout, PROBE_TIMEOUT))
    found: list[int] = []
    async with ModbusDriver(probing, tolerate_silence=True) as driver:
        for unit in units:
            probe = Probe(unit, *await driver.probe(unit))
            if probe.found:
                found.append(unit)
            if progress is not None:
                progress(probe)
    return found


def parse_units(text: str) -> range:
    """``1-247`` or ``5`` → the unit ids to scan; ``ValueError`` says what is wrong."""
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise ValueError(f'"{text}" is not a unit range such as 1-247') from None
    if not 0 <= first <= last <= MAX_UNIT:
        raise ValueError(f'"{text}": unit ids run from 0 to {MAX_UNIT}')
    return range(first, last + 1)


async def scan_units(bus: BusConfig, units: range, out: TextIO | None = None) -> list[int]:
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
