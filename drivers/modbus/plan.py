"""Request planning: the fewest reads that fetch a device's points.

Points of one table are merged into one read while the unused addresses between them stay within
the bus's ``merge_gap`` and the read within its ``max_registers`` / ``max_bits`` (the protocol
allows 125 and 2000; fussy slaves take less). A slave that refuses a read (exception 2, illegal
data address: a hole, or a register within a block, it does not have) gets the read cut in two,
until the registers it lacks are isolated; the ``DevicePlan`` remembers what it learned.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.api import BusConfig, Clock, DeviceConfig

from .codec import RequestDecoder
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

    @functools.cached_property
    def decode(self) -> RequestDecoder:
        """Decodes what the read brings into its points' values (compiled at its first use)."""
        return RequestDecoder(self.points, self.address)

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
    device does not have (``lacking``, with the points scaled by it), left out of the polls; the
    points around them arrive from that poll on. The reads refused are remembered, so that the
    parts are never joined back into one of them (a unit may refuse a read across one of its
    register blocks, all of whose registers it has). What was learned is saved once per poll
    that learned something, in ``state`` (a file of the driver's state dir, when it has one),
    for restarts, and forgotten ``RELEARN_AFTER`` seconds after it was learned.
    """

    def __init__(
        self,
        device: DeviceConfig,
        bus: BusConfig | None = None,
        state: Path | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.device = device
        self.bus = bus
        self.state = state
        self.clock = clock or Clock()
        self.points = {p.name: p for p in modbus_points(device.points)}
        #: The points scaled by another point's value (``scale_exponent``: SunSpec's factors).
        self.scaled_by_others = tuple(p for p in self.points.values() if p.scale_exponent)
        #: Points the device refuses (or whose scale comes from one it refuses), by name.
        self.lacking: dict[str, ModbusPoint] = {}
        #: Reads the unit refused: (table, first address, end).
        self.refused_spans: set[tuple[str, int, int]] = set()
        self.learned_at: float | None = None  # monotonic time of the first refusal learned
        self.requests = plan_requests(list(self.points.values()), bus)
        self._changed = False  # learned something this poll: saved after it
        self._save_failed = False  # said once until a save works again
        self._load()

    def before_poll(self) -> None:
        """Join the reads that are contiguous again (the device answered each, and the join is
        no read it refused), and forget what was learned once it is old: then the poll tries
        the full plan."""
        joined = _joined(self.requests, self.bus, self.refused_spans)
        if joined != self.requests:
            self.requests = joined
            self._changed = True
        age = self._age()
        if age is not None and not 0 <= age <= RELEARN_AFTER:
            log.info(
                "device %s: asking again for what the unit refused %.0f min ago",
                self.device.name,
                max(age, 0) / 60,
            )
            self.lacking.clear()
            self.refused_spans.clear()
            self.learned_at = None
            self.requests = plan_requests(list(self.points.values()), self.bus)
            self._changed = True

    def after_poll(self) -> None:
        """Keep what this poll learned, once."""
        if self._changed:
            self._changed = False
            self._save()

    def refused(self, request: Request) -> list[Request]:
        """``request`` was refused as an illegal data address: the reads that replace it, to
        be made now (none when it was one point's: that point the device lacks)."""
        index = self.requests.index(request)
        self.refused_spans.add((request.table, request.address, request.end))
        self.learned_at = self.clock.monotonic() if self.learned_at is None else self.learned_at
        self._changed = True
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
        scaled_by_it = [p for p in self.points.values() if point.name in p.needs]
        for dependent in scaled_by_it:
            if dependent.name not in self.lacking:
                self.lacking[dependent.name] = dependent
                log.warning(
                    "device %s: point %s is left out too: its scale comes from %s",
                    self.device.name,
                    dependent.name,
                    point.name,
                )
        self.requests = _without(self.requests, set(self.lacking))

    def _age(self) -> float | None:
        return None if self.learned_at is None else self.clock.monotonic() - self.learned_at

    def _signature(self) -> list[object]:
        """What the learned plan holds for: the unit, where it is, the read limits, the points."""
        where = [self.bus.type, self.bus.address] if self.bus else []
        limits = [max_count("holding", self.bus), max_count("coil", self.bus)]
        points = [[p.name, p.table, p.address, p.count] for p in self.points.values()]
        return [self.device.unit, where, limits, points]

    def _save(self) -> None:
        if self.state is None:
            return
        age = self._age() or 0.0
        learned = {
            "signature": self._signature(),
            "learned_wall": self.clock.wall() - age,
            "requests": [[p.name for p in r.points] for r in self.requests],
            "lacking": sorted(self.lacking),
            "refused": sorted(self.refused_spans),
        }
        try:
            self.state.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.state.with_name(self.state.name + ".new")
            temporary.write_text(json.dumps(learned), encoding="utf-8")
            os.replace(temporary, self.state)
            self._save_failed = False
        except OSError as exc:
            if not self._save_failed:
                self._save_failed = True
                log.warning(
                    "device %s: cannot keep what the unit refuses in %s (%s): learned again "
                    "after a restart",
                    self.device.name,
                    self.state,
                    exc.strerror or exc,
                )

    def _load(self) -> None:
        """What an earlier run learned, when it is of this very unit and points, whole, and
        not too old (nor from the future: a clock that was wrong then or is now)."""
        if self.state is None or not self.state.exists():
            return
        try:
            learned = json.loads(self.state.read_text(encoding="utf-8"))
            if learned["signature"] != json.loads(json.dumps(self._signature())):
                return  # another unit, bus or set of points: learn again
            age = self.clock.wall() - float(learned["learned_wall"])
            if not 0 <= age <= RELEARN_AFTER:
                return
            requests = [self._request_of(names) for names in learned["requests"]]
            lacking = {n: self.points[n] for n in learned["lacking"]}
            named = [p.name for r in requests for p in r.points] + list(lacking)
            if sorted(set(named)) != sorted(self.points) or len(set(named)) != len(named):
                raise ValueError("its reads and lacking points are not the device's points")
            refused = {(str(t), int(a), int(e)) for t, a, e in learned["refused"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info(
                "device %s: %s not used (%s): learning again", self.device.name, self.state, exc
            )
            return
        self.requests, self.lacking, self.refused_spans = requests, lacking, refused
        self.learned_at = self.clock.monotonic() - age

    def _request_of(self, names: Sequence[str]) -> Request:
        points = [self.points[n] for n in names]
        if not points or len({p.table for p in points}) != 1:
            raise ValueError("a read of no points, or of points of several tables")
        return _request(points)


def _halves(request: Request, bus: BusConfig | None) -> list[Request]:
    """The points of ``request`` in two halves by address, each read without holes. Points
    that share registers (bits of one register) stay in one half."""
    points = sorted(request.points, key=lambda p: (p.address, p.name))
    middle = len(points) // 2
    while 0 < middle < len(points) and points[middle].address < _end(points[middle - 1]):
        middle += 1
    if middle >= len(points):  # all share registers: the other way
        middle = len(points) // 2
        while middle > 0 and points[middle].address < _end(points[middle - 1]):
            middle -= 1
    if middle == 0:  # one span of registers every point shares: each point alone
        return [_request([p]) for p in points]
    return [r for half in (points[:middle], points[middle:]) for r in plan_requests(half, bus, 0)]


def _end(point: ModbusPoint) -> int:
    return point.address + point.count


def _without(requests: Sequence[Request], names: set[str]) -> list[Request]:
    """``requests`` without the points named (a read left with none is dropped)."""
    kept = []
    for request in requests:
        points = [p for p in request.points if p.name not in names]
        if len(points) == len(request.points):
            kept.append(request)
        elif points:
            kept.append(_request(points))
    return kept


def _joined(
    requests: Sequence[Request], bus: BusConfig | None, refused: set[tuple[str, int, int]]
) -> list[Request]:
    """``requests`` with reads of one table that touch or overlap made one (within the bus's
    maximum), never across a hole, nor into a read the unit refused."""
    joined: list[Request] = []
    for request in sorted(requests, key=lambda r: (TABLES.index(r.table), r.address)):
        last = joined[-1] if joined else None
        if last is not None and last.table == request.table and request.address <= last.end:
            merged = _request((*last.points, *request.points))
            fits = merged.count <= max_count(request.table, bus)
            if fits and not _covers(merged, refused):
                joined[-1] = merged
                continue
        joined.append(request)
    return joined


def _covers(request: Request, refused: set[tuple[str, int, int]]) -> bool:
    return any(
        table == request.table and request.address <= start and end <= request.end
        for table, start, end in refused
    )


def _request(points: Sequence[ModbusPoint]) -> Request:
    """The one read that fetches ``points`` (of one table)."""
    start = min(p.address for p in points)
    end = max(p.address + p.count for p in points)
    return Request(points[0].table, start, end - start, tuple(points))
