"""``textfile``: numbers read from small text files, one point per file.

Many kernel drivers show a reading as a file holding one number (an ADC's
``/sys/bus/iio/devices/iio:device0/in_voltage0_raw``, a hwmon sensor's ``temp1_input``), and
many programs leave their latest value in a file the same way. This driver reads such files::

    [[device]]
    name = "adc"
    driver = "textfile"                              # on no bus
    directory = "/sys/bus/iio/devices/iio:device0"   # optional: where relative paths start
    interval = "10s"
      [[device.point]]
      name = "battery"
      path = "in_voltage0_raw"                       # required: the file (absolute, or relative)
      scale = 0.00125                                # value = number * scale + offset
      unit = "V"

A file that is missing, unreadable or holds no number is an error for its point only; when no
point could be read, the poll fails.

It is also the example of edge-agent's plugin interface (``agent.api.driver``'s docstring is the
authority): copy this package, rename it, and change what ``read`` does.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
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
from agent.api.keys import Convert

#: A reading is a few bytes; a longer file (a log, a device node) is not one.
MAX_BYTES = 64


def file_path(value: Any) -> str:
    """A converter: takes the TOML value and returns what lands in ``options``, or raises
    ``ValueError``/``TypeError`` with a message for a person; the loader prefixes it with
    ``FILE:LINE: key.path:``. ``agent.api.keys`` has the common ones (text, number,
    duration, one_of…), and this one builds on ``conv.text``."""
    path = conv.text(value)  # "must be a string, got a number"
    if not path.strip():
        raise ValueError("is empty: write the path of a file")
    return path


class TextFileDriver(Unconnected):
    """One device's files. ``Unconnected`` makes it an async context manager that does nothing:
    its ``__aenter__`` returns ``self`` and its ``__aexit__`` returns ``None``. A driver with a
    connection writes both itself: ``__aenter__`` opens it (raising ``BusError`` to be retried
    with backoff) and returns ``self``; ``__aexit__`` closes it and never raises."""

    # On no bus: each device gets a stand-in BusConfig(device name, "local") and a driver of its
    # own. A driver for devices on a port would list the bus types here, e.g. ("serial",).
    bus_types: ClassVar[tuple[str, ...]] = ()
    # The driver's own keys, {key: converter}; every other unknown key is refused by the loader.
    # A key left out of the file is absent from ``options``. Points also take the standard keys:
    # name, unit, scale, offset, deadband, heartbeat, writable, min, max.
    device_options: ClassVar[Mapping[str, Convert[Any]]] = {"directory": file_path}
    point_options: ClassVar[Mapping[str, Convert[Any]]] = {"path": file_path}

    def __init__(self, bus: BusConfig, context: DriverContext | None = None) -> None:
        self.bus = bus

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        """What the converters alone cannot judge, as (key path, message) pairs. It runs in
        ``edge-agent check`` and at start, so it does no I/O: a file missing now may be there
        when the agent polls (a kernel module loaded later), and a poll says so if not."""
        problems: list[tuple[str, str]] = []
        for device in devices:
            directory = device.options.get("directory")
            if directory is not None and not Path(directory).is_absolute():
                problems.append(
                    (f"device.{device.name}.directory", f'"{directory}" must be an absolute path')
                )
            for point in device.points:
                path = point.options.get("path")
                key = f"device.{device.name}.point.{point.name}.path"
                if path is None:
                    problems.append((key, "is required: the file to read"))
                elif directory is None and not Path(path).is_absolute():
                    why = "make it absolute, or set the device's directory"
                    problems.append((key, f'"{path}" is relative: {why}'))
        return problems

    def describe(self, device: DeviceConfig) -> list[str]:
        """Optional: the requests one poll makes, for logs and ``edge-agent check --plan``."""
        return [f"read {file_of(device, point)}" for point in device.points]

    async def read(self, device: DeviceConfig) -> Poll:
        """One poll of every point's file. Never returns ``None``: a ``Poll`` of what was read,
        with an error per point that failed, or ``DeviceError`` when nothing was read."""
        files = [file_of(device, point) for point in device.points]
        # Every device is polled on one event loop: never block it. A sysfs read may wait for
        # the chip behind it, so the files are read in a worker thread.
        results = await asyncio.to_thread(lambda: [read_number(file) for file in files])
        values: dict[str, Value] = {}
        errors: list[str] = []
        for point, file, (number, why) in zip(device.points, files, results, strict=True):
            if number is None:
                errors.append(f"device {device.name}: {file}: {why}")  # name the file
            else:
                values[point.name] = scaled(point, number)
        if errors and not values:
            raise DeviceError("; ".join(errors))
        return Poll(values, tuple(errors))


def file_of(device: DeviceConfig, point: PointConfig) -> Path:
    """The point's file: its ``path``, under the device's ``directory`` when relative."""
    # Path("/a") / "/b" is "/b": an absolute path ignores the directory.
    return Path(device.options.get("directory", "/")) / str(point.options["path"])


def read_number(file: Path) -> tuple[int | float | None, str]:
    """(the number in ``file``, "") or (None, why there is none)."""
    try:
        with file.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None, "no such file"
    except OSError as exc:  # permission denied, a directory, an I/O error from the kernel
        return None, f"cannot be read: {exc.strerror or exc}"
    if len(data) > MAX_BYTES:
        return None, f"holds more than a number (over {MAX_BYTES} bytes)"
    text = data.decode("ascii", errors="replace").strip()
    try:
        return int(text), ""
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None, f"not a number: {text!r}"
    if not math.isfinite(number):  # "nan" and "inf" parse, but JSON cannot carry them
        return None, f"not a number: {text!r}"
    return number, ""
