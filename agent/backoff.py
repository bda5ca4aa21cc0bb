"""Exponential backoff with jitter, so a fleet of gateways does not stampede a server."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``; each drawn uniformly from
    [least * cap, cap] (``least`` 0: full jitter; 0.5: never below half the cap)."""

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 60.0,
        rng: random.Random | None = None,
        least: float = 0.0,
    ):
        self.initial = initial
        self.maximum = maximum
        self.least = least
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        # the exponent bounded: past it the cap is the maximum anyway, and 2.0 ** 1024 overflows
        cap = min(self.maximum, self.initial * 2 ** min(self.attempts, 64))
        self.attempts += 1
        return self._rng.uniform(self.least * cap, cap)

    def reset(self) -> None:
        self.attempts = 0
