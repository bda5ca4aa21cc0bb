"""What the technician's page shows of one device beyond ``edge-agent status``: its points with
their units and limits, the requests a poll makes, and each point's last hour."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..api import Describes
from ..config import Config
from ..poll.scheduler import BusPoller
from .history import SLOT_MS, WINDOW_MS, History


def device_detail(
    name: str, snapshot: dict[str, Any], config: Config, pollers: Sequence[BusPoller]
) -> dict[str, Any] | None:
    """The snapshot's device ``name`` with its points and request plan; None if there is none."""
    device = snapshot.get("devices", {}).get(name)
    configured = next((d for d in config.devices if d.name == name), None)
    if device is None or configured is None:
        return None
    values = device.get("values", {})
    points = [
        {
            "name": point.name,
            "value": values.get(point.name),
            "unit": point.unit,
            "type": point.value_type,
            "writable": point.writable,
            "min": point.min,
            "max": point.max,
        }
        for point in configured.points
    ]
    poller = next((p for p in pollers if name in p.health), None)
    driver = poller.driver_instance if poller is not None else None
    # What the running driver learned (a unit's missing points, a SunSpec chain) is in its plan.
    plan: list[str] = driver.describe(configured) if isinstance(driver, Describes) else []
    return {
        "name": name,
        **device,
        "points": points,
        "plan": plan,
        "writes": config.web.allow_writes,
        "agent": snapshot.get("agent", {}),
        "now": snapshot.get("now"),
    }


def device_history(
    name: str, config: Config, history: History, now_ms: int
) -> dict[str, Any] | None:
    """The device's numeric points over the last hour, one value per ``SLOT_MS``."""
    if not any(d.name == name for d in config.devices):
        return None
    return {
        "name": name,
        "now": now_ms,
        "window_ms": WINDOW_MS,
        "slot_ms": SLOT_MS,
        "points": {
            p: [list(pair) for pair in pairs] for p, pairs in history.of(name, now_ms).items()
        },
    }
