"""Time as the agent sees it, passed in so tests can drive it."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Clock:
    """Wall-clock and monotonic time in seconds; replace either in tests."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return int(self.wall() * 1000)
