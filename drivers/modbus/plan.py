"""Request planning: the fewest reads that fetch a device's points.

Points of one table are merged into one read while the unused addresses between them stay within
the bus's ``merge_gap`` and the read within its ``max_registers`` / ``max_bits`` (the protocol
allows 125 and 2000; fussy slaves take less). A slave that refuses a merged read (exception 2,
illegal data address: the hole holds addresses it does not have) gets the points of that read
again without holes; the ``DevicePlan`` remembers the split for every later poll.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from agent.api import BusConfig, DeviceConfig

from .schema import (
    BIT_TABLES,
    TABLES,
    ModbusPoint,
    Table,
    max_bits,
    max_registers,
    merge_gap,
    modbus_points,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One read: ``count`` registers (or bits) of ``table`` from ``address``, serving ``points``."""

    table: Table
    address: int
    count: int
    points: tuple[ModbusPoint, ...]

    @property
    def end(self) -> int:
        """The first address after the request."""
        return self.address + self.count

    @property
    def span(self) -> str:
        """The addresses read, for messages: ``"0-9"``, or ``"5"`` for a single one."""
        last = self.end - 1
        return str(self.address) if last == self.address else f"{self.address}-{last}"

    @property
    def has_holes(self) -> bool:
        """Whether the read spans addresses that none of its points covers."""
        covered = {a for p in self.points for a in range(p.address, p.address + p.count)}
        return len(covered) < self.count

    def describe(self) -> str:
        """E.g. ``"holding 0-9 (10 registers): voltage, current"``."""
        unit = "bit" if self.table in BIT_TABLES else "register"
        plural = "" if self.count == 1 else "s"
        names = ", ".join(p.name for p in self.points)
        return f"{self.table} {self.span} ({self.count} {unit}{plural}): {names}"


def max_count(table: Table, bus: BusConfig | None = None) -> int:
    """The most registers or bits one read of ``table`` may carry on ``bus``."""
    return max_bits(bus) if table in BIT_TABLES else max_registers(bus)


def plan_requests(
    points: Sequence[ModbusPoint], bus: BusConfig | None = None, gap: int | None = None
) -> list[Request]:
    """The reads that fetch ``points``: per table, in address order, merging points whose gap is
    at most ``gap`` (default: the bus's ``merge_gap``) while the read stays within the bus's
    maximum.

    A point is never split; one larger than the maximum gets a read of its own.
    """
    gap = merge_gap(bus) if gap is None else gap
    requests: list[Request] = []
    for table in TABLES:
        limit = max_count(table, bus)
        mine = sorted((p for p in points if p.table == table), key=lambda p: (p.address, p.name))
        current: Request | None = None
        for point in mine:
            end = point.address + point.count
            if (
                current is not None
                and point.address <= current.end + gap
                and max(end, current.end) - current.address <= limit
            ):
                count = max(end, current.end) - current.address
                current = Request(table, current.address, count, (*current.points, point))
            else:
                if current is not None:
                    requests.append(current)
                current = Request(table, point.address, point.count, (point,))
        if current is not None:
            requests.append(current)
    return requests


class DevicePlan:
    """The reads a poll of one device makes, learning which merged reads its slave refuses."""

    def __init__(self, device: DeviceConfig, bus: BusConfig | None = None) -> None:
        self.device = device
        self.bus = bus
        self.requests = plan_requests(modbus_points(device.points), bus)

    def split(self, refused: Request) -> list[Request]:
        """Replace ``refused`` (a merged read with holes) by reads without holes, for good."""
        parts = plan_requests(refused.points, self.bus, gap=0)
        index = self.requests.index(refused)
        self.requests[index : index + 1] = parts
        log.info(
            "device %s: unit refused %s %s with its holes; reading it as %d request(s) from now on",
            self.device.name,
            refused.table,
            refused.span,
            len(parts),
        )
        return parts

    def describe(self) -> list[str]:
        return [r.describe() for r in self.requests]
