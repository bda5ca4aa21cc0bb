"""What the agent says of itself: the ``health`` payload (docs/mqtt.md) — devices, buffer, link and
the gateway — and the fuller snapshot ``edge-agent status`` reads from the local socket."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..api import CountsFaults, KeepsRaw
from ..store.buffer import Buffer, BufferStats
from .scheduler import BusPoller

THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")


def health_payload(
    pollers: Sequence[BusPoller],
    buffer: Buffer,
    link: Mapping[str, int],
    now_ms: int,
    commands: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Per-device ok/error counts and last error, buffer depth/oldest/dropped, the link's
    reconnects, refused publishes and samples too large for the broker, gateway CPU load,
    memory, disk and temperature."""
    stats = buffer.stats()
    return {
        "ts": now_ms,
        "devices": {name: _device(p, name) for p in pollers for name in p.health},
        "buffer": _buffer(stats),
        "link": dict(link),
        "gateway": _gateway(buffer.path.parent),
        "commands": dict(commands or {}),
    }


def status_snapshot(
    pollers: Sequence[BusPoller],
    buffer: Buffer,
    link: Mapping[str, Any],
    agent: Mapping[str, Any],
    now_ms: int,
) -> dict[str, Any]:
    """``health`` and more, for a technician at the gateway: each device's last good reading
    and raw frames, each bus's connection, the link's state and readings sent."""
    stats = buffer.stats()
    devices: dict[str, Any] = {}
    buses: dict[str, Any] = {}
    for poller in pollers:
        local = poller.bus.type == "local"
        if not local:
            overruns = sum(h.overruns for h in poller.health.values())
            buses[poller.bus.name] = {"connected": poller.connected, "overruns": overruns}
        driver = poller.driver_instance
        frames = driver.frames if isinstance(driver, KeepsRaw) else None
        for name, health in poller.health.items():
            device = devices[name] = {
                "bus": "" if local else poller.bus.name,
                "last_good": health.last_good,
                **_device(poller, name),
            }
            if frames is not None and (raw := list(frames(name))):
                device["frames"] = raw
    return {
        "agent": dict(agent),
        "link": dict(link),
        "buffer": _buffer(stats),
        "gateway": _gateway(buffer.path.parent),
        "buses": buses,
        "devices": devices,
        "now": now_ms,
    }


def _buffer(stats: BufferStats) -> dict[str, Any]:
    """Depth, oldest, bytes; dropped (the bound) and lost (damage on disk), ever; the next id,
    so that a consumer can tell every id below it was handed out, delivered or counted."""
    report: dict[str, Any] = {
        "depth": stats.depth,
        "oldest": stats.oldest_ts,
        "bytes": stats.bytes,
        "dropped": stats.dropped,
        "lost": stats.lost,
        "next_id": stats.next_id,
    }
    if stats.waiting_for_id:
        report["waiting_for_id"] = stats.waiting_for_id
    return report


def _device(poller: BusPoller, name: str) -> dict[str, Any]:
    health = poller.health[name]
    report: dict[str, Any] = {
        "ok": health.ok,
        "errors": health.errors,
        "overruns": health.overruns,
        "state": health.state,
    }
    if health.missing:
        report["missing"] = list(health.missing)
    if health.last_values:
        report["values"] = dict(health.last_values)
    if health.last_error:
        report["last_error"] = health.last_error
    if health.backoff:
        report["retry_every"] = health.backoff
    driver = poller.driver_instance
    counters: Mapping[str, Mapping[str, int]] = (
        driver.counters if isinstance(driver, CountsFaults) else {}
    )
    if counters.get(name):
        report["faults"] = {k: v for k, v in counters[name].items() if k != "ok"}
    return report


def _gateway(data_dir: Path) -> dict[str, Any]:
    gateway: dict[str, Any] = {"load": round(os.getloadavg()[0], 2)}
    with contextlib.suppress(OSError):
        gateway["disk_free"] = shutil.disk_usage(data_dir).free
    meminfo = _meminfo()
    if meminfo:
        gateway["mem_available"] = meminfo.get("MemAvailable", 0) * 1024
    with contextlib.suppress(OSError, ValueError):  # not every board has a thermal zone
        gateway["temperature"] = int(THERMAL.read_text()) / 1000
    return gateway


def _meminfo() -> dict[str, int]:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in lines) if v}
