"""The last hour of each numeric point, for the technician's page: in memory only, and bounded.

One value per ``SLOT_MS`` (the last one read in it), in two fixed arrays per point: about 6 kB
a point whatever its poll rate, and nothing is ever written to the card.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping

from ..model import Value

#: One kept value per this many milliseconds, and this many of them: one hour.
SLOT_MS = 10_000
SLOTS = 360
WINDOW_MS = SLOT_MS * SLOTS


class _Series:
    """One point's ring of (ts, value), indexed by its time slot: a new value replaces the one
    an hour older in the same place, and a second one in the same slot the first."""

    __slots__ = ("stamps", "values")

    def __init__(self) -> None:
        self.stamps = array("q", bytes(8 * SLOTS))
        self.values = array("d", bytes(8 * SLOTS))

    def add(self, ts: int, value: float) -> None:
        slot = (ts // SLOT_MS) % SLOTS
        self.stamps[slot] = ts
        self.values[slot] = value

    def last_hour(self, now_ms: int) -> list[tuple[int, float]]:
        # What a clock set back left ahead of now is not shown; neither is what is older.
        kept = [
            (ts, value)
            for ts, value in zip(self.stamps, self.values, strict=True)
            if now_ms - WINDOW_MS < ts <= now_ms + SLOT_MS
        ]
        kept.sort()
        return kept


def plotted(value: Value) -> float | None:
    """What a value is on a plot: a number (a boolean as 0 or 1), or None for text and what is
    not a finite number."""
    if isinstance(value, str):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class History:
    """Each device's numeric points over the last hour."""

    def __init__(self) -> None:
        self._series: dict[str, dict[str, _Series]] = {}

    def add(self, device: str, ts: int, values: Mapping[str, Value]) -> None:
        points = self._series.setdefault(device, {})
        for name, value in values.items():
            number = plotted(value)
            if number is not None:
                points.setdefault(name, _Series()).add(ts, number)

    def of(self, device: str, now_ms: int) -> dict[str, list[tuple[int, float]]]:
        """The device's points, each as its (ts, value) pairs of the last hour, oldest first."""
        return {
            name: series.last_hour(now_ms) for name, series in self._series.get(device, {}).items()
        }

    def keep_only(self, points: Mapping[str, Iterable[str]]) -> None:
        """Forget what a reload took away: each device's points by name, and the rest."""
        for device in list(self._series):
            names = set(points.get(device, ()))
            series = self._series[device]
            for name in [n for n in series if n not in names]:
                del series[name]
            if not series:
                del self._series[device]
