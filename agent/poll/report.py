"""Report by exception: a point is sent when it moved by its ``deadband``, or when its
``heartbeat`` has passed since it was last sent, so a quiet sensor on a metered link costs
almost nothing.

A point with neither is sent on every poll. One with only a heartbeat is sent when it changes at
all, or when the heartbeat passes. Booleans and strings are sent when they change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import DeviceConfig, PointConfig
from ..model import Value


@dataclass
class _LastSent:
    value: Value
    at: float  # monotonic seconds


class ReportFilter:
    """Remembers what was last sent per point of one device and holds back what did not move."""

    def __init__(self, points: Sequence[PointConfig]) -> None:
        self._rules = {
            p.name: (p.deadband or 0.0, p.heartbeat)
            for p in points
            if p.deadband is not None or p.heartbeat is not None
        }
        self._last: dict[str, _LastSent] = {}

    @classmethod
    def for_device(cls, device: DeviceConfig) -> ReportFilter:
        return cls(device.points)

    def apply(self, values: Mapping[str, Value], now: float) -> dict[str, Value]:
        """The values worth sending from one poll at monotonic time ``now``."""
        if not self._rules:
            return dict(values)
        sent: dict[str, Value] = {}
        for name, value in values.items():
            rule = self._rules.get(name)
            if rule is None or self._due(name, value, now, *rule):
                sent[name] = value
                if rule is not None:
                    self._last[name] = _LastSent(value, now)
        return sent

    def _due(
        self, name: str, value: Value, now: float, deadband: float, heartbeat: float | None
    ) -> bool:
        last = self._last.get(name)
        if last is None:
            return True
        if heartbeat is not None and now - last.at >= heartbeat:
            return True
        if isinstance(value, bool | str) or isinstance(last.value, bool | str):
            return value != last.value
        moved = abs(value - last.value)
        return moved > 0 if deadband == 0 else moved >= deadband
