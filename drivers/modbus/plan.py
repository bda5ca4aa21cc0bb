"""Request planning: the fewest reads that fetch a device's points.

Points of one table are merged into one read while the unused addresses between them stay within
the bus's ``merge_gap`` and the read within its ``max_registers`` / ``max_bits`` (the protocol
allows 125 and 2000; fussy slaves take less). A slave that refuses a read (exception 2, illegal
data address: a hole, or a register within a block, it does not have) gets the read cut in two,
until the registers it lacks are isolated; the ``DevicePlan`` remembers what it learned.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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


#: How long what a device refused is believed: then its full plan is tried again (the device
#: may have been reconfigured, an option fitted).
RELEARN_AFTER = 3600.0


class DevicePlan:
    """The reads a poll of one device makes, learning what its slave refuses.

    A read refused as an illegal data address is cut in two and both halves are read at once,
    again and again, until the registers the device lacks are isolated: each is a point the
    device does not have (``lacking``), left out of the polls; the points around it arrive from
    that poll on. What was learned is kept in ``state`` (a file of the driver's state dir, when
    it has one) across reconnects and restarts, and forgotten after ``RELEARN_AFTER`` seconds.
    """

    def __init__(
        self,
        device: DeviceConfig,
        bus: BusConfig | None = None,
        state: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device = device
        self.bus = bus
        self.state = state
        self.clock = clock
        self.points = {p.name: p for p in modbus_points(device.points)}
        #: Points the device refuses, by name.
        self.lacking: dict[str, ModbusPoint] = {}
        self.learned_at = 0.0  # wall time (s) of the first refusal learned; 0: nothing learned
        self.requests = plan_requests(list(self.points.values()), bus)
        self._cut = False  # reads were cut during a poll: join what is contiguous before the next
        self._load()

    def before_poll(self) -> None:
        """Join the reads a refusal cut that are contiguous again (the device answered each),
        and forget what was learned once it is old: then the poll tries the full plan."""
        if self._cut:
            self._cut = False
            self.requests = _joined(self.requests, self.bus)
            self._save()
        if self.learned_at and self.clock() - self.learned_at > RELEARN_AFTER:
            log.info(
                "device %s: asking again for what the unit refused %.0f min ago",
                self.device.name,
                (self.clock() - self.learned_at) / 60,
            )
            self.lacking.clear()
            self.learned_at = 0.0
            self.requests = plan_requests(list(self.points.values()), self.bus)
            self._save()

    def refused(self, request: Request) -> list[Request]:
        """``request`` was refused as an illegal data address: the reads that replace it, to
        be made now (none when it was one point's: that point the device lacks)."""
        index = self.requests.index(request)
        if len(request.points) == 1:
            (point,) = request.points
            del self.requests[index]
            self._lacks(point)
            return []
        parts = _halves(request, self.bus)
        log.info(
            "device %s: unit refused %s %s (illegal data address); reading it in %d parts to "
            "find what it lacks",
            self.device.name,
            request.table,
            request.span,
            len(parts),
        )
        self.requests[index : index + 1] = parts
        self.learned_at = self.learned_at or self.clock()
        self._cut = True
        self._save()
        return parts

    def describe(self) -> list[str]:
        lines = [r.describe() for r in self.requests]
        lines += [
            f"lacks {p.table} {p.address}"
            + (f"-{p.address + p.count - 1}" if p.count > 1 else "")
            + f": {p.name} (the unit refuses it)"
            for p in self.lacking.values()
        ]
        return lines

    def _lacks(self, point: ModbusPoint) -> None:
        self.lacking[point.name] = point
        self.learned_at = self.learned_at or self.clock()
        self._save()
        log.warning(
            "device %s: unit %s has no %s %s (illegal data address): point %s is left out of "
            "its polls, the others are read; asked again within %.0f min",
            self.device.name,
            self.device.unit,
            point.table,
            point.address,
            point.name,
            RELEARN_AFTER / 60,
        )

    def _signature(self) -> list[list[object]]:
        return [[p.name, p.table, p.address, p.count] for p in self.points.values()]

    def _save(self) -> None:
        if self.state is None:
            return
        learned = {
            "points": self._signature(),
            "learned_at": self.learned_at,
            "requests": [[p.name for p in r.points] for r in _joined(self.requests, self.bus)],
            "lacking": sorted(self.lacking),
        }
        try:
            self.state.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.state.with_name(self.state.name + ".new")
            temporary.write_text(json.dumps(learned), encoding="utf-8")
            os.replace(temporary, self.state)
        except OSError as exc:
            log.warning(
                "device %s: cannot keep what the unit refuses in %s (%s): learned again after a "
                "restart",
                self.device.name,
                self.state,
                exc.strerror or exc,
            )

    def _load(self) -> None:
        """What an earlier run learned, when it is of these very points and not too old."""
        if self.state is None or not self.state.exists():
            return
        try:
            learned = json.loads(self.state.read_text(encoding="utf-8"))
            if learned["points"] != self._signature():
                return  # the configuration changed: learn again
            if self.clock() - float(learned["learned_at"]) > RELEARN_AFTER:
                return
            requests = [[self.points[n] for n in names] for names in learned["requests"]]
            lacking = {n: self.points[n] for n in learned["lacking"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("device %s: %s not used: %s", self.device.name, self.state, exc)
            return
        self.requests = [_request(points) for points in requests]
        self.lacking = lacking
        self.learned_at = float(learned["learned_at"])


def _halves(request: Request, bus: BusConfig | None) -> list[Request]:
    """The points of ``request`` in two halves by address, each read without holes."""
    points = sorted(request.points, key=lambda p: (p.address, p.name))
    middle = len(points) // 2
    return [r for half in (points[:middle], points[middle:]) for r in plan_requests(half, bus, 0)]


def _joined(requests: Sequence[Request], bus: BusConfig | None) -> list[Request]:
    """``requests`` with each run of contiguous reads of one table made one read (within the
    bus's maximum): never across a hole, which the device may be the one to refuse."""
    joined: list[Request] = []
    for request in sorted(requests, key=lambda r: (TABLES.index(r.table), r.address)):
        last = joined[-1] if joined else None
        if (
            last is not None
            and last.table == request.table
            and last.end == request.address
            and request.end - last.address <= max_count(request.table, bus)
        ):
            joined[-1] = _request((*last.points, *request.points))
        else:
            joined.append(request)
    return joined


def _request(points: Sequence[ModbusPoint]) -> Request:
    """The one read that fetches ``points`` (of one table)."""
    start = min(p.address for p in points)
    end = max(p.address + p.count for p in points)
    return Request(points[0].table, start, end - start, tuple(points))
