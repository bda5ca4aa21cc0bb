"""``ds18b20``: 1-Wire temperature probes through the kernel's w1 sysfs.

A device with ``driver = "ds18b20"`` is on no bus. Each ``[[device.point]]`` names its probe by
id (``sensor = "28-0316a2790aff"``, as listed under ``/sys/bus/w1/devices``). A reading is taken
from ``w1_slave``: its first line must end in ``YES`` (the probe's CRC checked out), its second
carries ``t=<milli °C>``. 85.0 °C (the probe's power-on value, sent when a conversion did not
happen) and an all-zero scratchpad (a probe that is not answering) are refused as errors, not
published as temperatures.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from agent.api import (
    BusConfig,
    DeviceConfig,
    DeviceError,
    DriverContext,
    Poll,
    Unconnected,
    Value,
    scaled,
)
from agent.api import keys as conv
from agent.api.keys import Convert

W1_DEVICES = Path("/sys/bus/w1/devices")
POWER_ON_MILLI = 85_000
_SENSOR_ID = re.compile(r"[0-9a-f]{2}-[0-9a-f]{12}")


def sensor_id(value: Any) -> str:
    """A 1-Wire id such as ``28-0316a2790aff``."""
    text = conv.text(value).lower()
    if not _SENSOR_ID.fullmatch(text):
        raise ValueError(f'"{text}" is not a 1-Wire id such as "28-0316a2790aff"')
    return text


class Ds18b20Driver(Unconnected):
    """Reads DS18B20 probes; ``devices_dir`` stands for /sys/bus/w1/devices (tests lay out one)."""

    bus_types: ClassVar[tuple[str, ...]] = ()
    device_options: ClassVar[Mapping[str, Convert[Any]]] = {"w1_dir": conv.text}
    point_options: ClassVar[Mapping[str, Convert[Any]]] = {"sensor": sensor_id}

    def __init__(self, bus: BusConfig, context: DriverContext | None = None) -> None:
        self.bus = bus

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        return [
            (f"device.{d.name}.point.{p.name}.sensor", "is required: the probe's 1-Wire id")
            for d in devices
            for p in d.points
            if "sensor" not in p.options
        ]

    async def read(self, device: DeviceConfig) -> Poll:
        """Every probe of the device; a probe that fails is an error for its point only."""
        directory = Path(str(device.options.get("w1_dir", W1_DEVICES)))
        # sysfs reads of w1_slave block ~750 ms per probe while it converts: not on the loop
        results = await asyncio.to_thread(
            lambda: [_probe(directory, str(p.options["sensor"])) for p in device.points]
        )
        values: dict[str, Value] = {}
        errors: list[str] = []
        for point, (milli, error) in zip(device.points, results, strict=True):
            if error:
                errors.append(f"device {device.name}: probe {point.options['sensor']}: {error}")
            else:
                values[point.name] = scaled(point, milli / 1000)
        if errors and not values:
            raise DeviceError("; ".join(errors))
        return Poll(values, tuple(errors))


def _probe(directory: Path, sensor: str) -> tuple[int, str]:
    """(milli °C, "") or (0, why not)."""
    try:
        lines = (directory / sensor / "w1_slave").read_text().splitlines()
    except FileNotFoundError:
        return 0, f"not found under {directory} (unplugged, or a wrong id?)"
    except OSError as exc:
        return 0, f"cannot be read: {exc.strerror or exc}"
    if len(lines) < 2 or "t=" not in lines[1]:
        return 0, f"unexpected w1_slave content {lines!r}"
    if not lines[0].strip().endswith("YES"):
        return 0, "CRC check failed (noise on the line, or a long cable without a pull-up?)"
    if all(b == "00" for b in lines[0].split(":")[0].split()):
        return 0, "all-zero data: the probe is not answering"
    milli = int(lines[1].rsplit("t=", 1)[1])
    if milli == POWER_ON_MILLI:
        return 0, "85.0 °C is the power-on value: the probe did not convert (power supply?)"
    return milli, ""
