"""Exponential backoff with full jitter, so a fleet of gateways does not stampede a server."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``; each drawn uniformly from [0, cap]."""

    def __init__(
        self, initial: float = 1.0, maximum: float = 60.0, rng: random.Random | None = None
    ):
        self.initial = initial
        self.maximum = maximum
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        cap = min(self.maximum, self.initial * 2**self.attempts)
        self.attempts += 1
        return self._rng.uniform(0, cap)

    def reset(self) -> None:
        self.attempts = 0
