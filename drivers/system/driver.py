"""``system``: the gateway's own health as a device — load, memory, disk, temperature, uptime and,
on a Raspberry Pi, the firmware's under-voltage and throttling flags.

A device with ``driver = "system"`` is on no bus. Each ``[[device.point]]`` names a metric (its
``metric`` key, or its name); the readings come from /proc and /sys, read fresh at every poll.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from agent.api import (
    BusConfig,
    DeviceConfig,
    DeviceError,
    DriverContext,
    PointConfig,
    Poll,
    Unconnected,
    Value,
    scaled,
)
from agent.api import keys as conv
from agent.api.keys import Convert, suggest

#: The firmware's flags (``vcgencmd get_throttled``): bit 0 under-voltage now, bit 2 throttled
#: now, bits 16 and 18 the same since boot.
THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"
THERMAL = "sys/class/thermal/thermal_zone0/temp"


class SystemDriver(Unconnected):
    """Reads the gateway itself; the ``root`` directory stands for ``/`` (tests lay out a fake)."""

    bus_types: ClassVar[tuple[str, ...]] = ()
    #: ``disk``: the file system whose space is reported (default /)
    device_options: ClassVar[Mapping[str, Convert[Any]]] = {"disk": conv.text}
    point_options: ClassVar[Mapping[str, Convert[Any]]] = {"metric": conv.text}

    def __init__(
        self, bus: BusConfig, context: DriverContext | None = None, root: Path = Path("/")
    ) -> None:
        self.bus = bus
        self.root = root

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        problems = []
        for device in devices:
            for point in device.points:
                metric = metric_of(point)
                if metric not in METRICS:
                    key = "metric" if "metric" in point.options else "name"
                    problems.append(
                        (
                            f"device.{device.name}.point.{point.name}.{key}",
                            f'"{metric}" is not a system metric{suggest(metric, METRICS)}; '
                            f"known: {', '.join(METRICS)}",
                        )
                    )
        return problems

    async def read(self, device: DeviceConfig) -> Poll:
        """Every point's metric now; one the gateway does not have is an error for that point."""
        values: dict[str, Value] = {}
        errors: list[str] = []
        for point in device.points:
            try:
                raw = METRICS[metric_of(point)](self, device)
            except (OSError, ValueError, IndexError) as exc:
                errors.append(f"device {device.name}: {metric_of(point)}: not available ({exc})")
                continue
            values[point.name] = scaled(point, raw)
        if errors and not values:
            raise DeviceError("; ".join(errors))
        return Poll(values, tuple(errors))

    # --- the metrics: public, as METRICS reads them

    def read_file(self, relative: str) -> str:
        """The text of ``relative`` under the root (``proc/uptime`` is /proc/uptime)."""
        return (self.root / relative).read_text()

    def meminfo(self, key: str) -> int:
        """One /proc/meminfo entry, in bytes."""
        for line in self.read_file("proc/meminfo").splitlines():
            name, _, rest = line.partition(":")
            if name == key:
                return int(rest.split()[0]) * 1024
        raise ValueError(f"{key} not in /proc/meminfo")

    def throttled_flags(self) -> int:
        """The firmware's throttling flags (see THROTTLED)."""
        return int(self.read_file(THROTTLED).strip(), 16)

    def disk(self, device: DeviceConfig) -> os.statvfs_result:
        """The file system of the device's ``disk`` option (default /)."""
        return os.statvfs(self.root / str(device.options.get("disk", "/")).lstrip("/"))


def metric_of(point: PointConfig) -> str:
    return str(point.options.get("metric", point.name))


def _load(index: int) -> Callable[[SystemDriver, DeviceConfig], Value]:
    return lambda d, _: float(d.read_file("proc/loadavg").split()[index])


METRICS: dict[str, Callable[[SystemDriver, DeviceConfig], Value]] = {
    "load1": _load(0),
    "load5": _load(1),
    "load15": _load(2),
    "mem_available": lambda d, _: d.meminfo("MemAvailable"),
    "mem_total": lambda d, _: d.meminfo("MemTotal"),
    "disk_free": lambda d, dev: (s := d.disk(dev)).f_bavail * s.f_frsize,
    "disk_total": lambda d, dev: (s := d.disk(dev)).f_blocks * s.f_frsize,
    "temperature": lambda d, _: int(d.read_file(THERMAL)) / 1000,
    "uptime": lambda d, _: float(d.read_file("proc/uptime").split()[0]),
    "under_voltage": lambda d, _: bool(d.throttled_flags() & 0x1),
    "throttled": lambda d, _: bool(d.throttled_flags() & 0x4),
    "under_voltage_since_boot": lambda d, _: bool(d.throttled_flags() & 0x10000),
}
