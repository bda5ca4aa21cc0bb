"""``[remote]``: configuration pushed over MQTT and remote diagnostics, each off by default.

A push is rolled back by the agent itself unless it is back online with the new configuration
within ``confirm_within``; ``push_ttl`` bounds how old a push queued while offline may be.
"""

from __future__ import annotations

from ..api import keys as conv
from .sections import Section
from .types import RemoteSection

#: The longest confirmation wait: a broken push must heal within a day at worst.
MAX_CONFIRM = 24 * 3600.0


def load_remote(s: Section) -> RemoteSection:
    """The ``[remote]`` table ``s``, every problem said at its key."""
    d = RemoteSection()
    config = bool(s.take("config", conv.boolean, d.config))
    confirm = s.take("confirm_within", conv.positive_duration, d.confirm_within)
    if confirm is not None and not 10 <= confirm <= MAX_CONFIRM:
        s.problem(
            "confirm_within",
            f"{confirm:g}s: write between 10s (a reconnection must fit in it) and 24h",
        )
        confirm = d.confirm_within
    ttl = s.take("push_ttl", conv.positive_duration, d.push_ttl)
    flags = {
        name: bool(s.take(name, conv.boolean, False))
        for name in ("read", "scan", "status", "frames", "log")
    }
    s.finish()
    return RemoteSection(config, confirm or d.confirm_within, ttl or d.push_ttl, **flags)
