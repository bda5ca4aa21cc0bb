"""``edge-agent scan BUS``: which unit ids answer on a Modbus bus (filled in with the RTU work)."""

from __future__ import annotations

from .config import BusConfig
from .errors import AgentError


async def scan_bus(bus: BusConfig, units: range) -> list[int]:
    raise AgentError(f"scan: not available yet for bus {bus.name}")
