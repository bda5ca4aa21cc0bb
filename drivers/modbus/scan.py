"""Which unit ids answer on a Modbus bus: ``edge-agent scan``.

Each unit id is probed with a read of one holding register at address 0 (``ModbusDriver.probe``).
Any answer, even an exception response (many devices have no register 0), means a device is
there; a gateway's exceptions 10 and 11 mean the opposite (nothing answered behind it). A probe
waits at most ``PROBE_TIMEOUT`` (or the bus timeout, if shorter), so that the 247 ids of a full
scan take about a minute on a quiet line; the bus's ``request_gap`` is kept between probes as
between polls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from agent.config.types import BusConfig

from .driver import ModbusDriver

#: Longest wait for a probe's answer, in seconds.
PROBE_TIMEOUT = 0.3

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
