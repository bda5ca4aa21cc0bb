"""What a driver sees of the configuration: its bus, its devices and their points, frozen.

The core reads the keys every driver shares (a point's name, unit, scale, offset, deadband,
heartbeat, writable, min, max; a device's interval; a bus's link); a driver's own keys arrive
converted in ``options``, or, for a driver that builds its own point type, as that type (a
subclass of ``PointConfig``, see ``agent.api.BuildsPoints``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

#: How a bus is reached: a TCP ``host`` and ``port``, or a local serial port and its line.
Link = Literal["network", "serial"]
Parity = Literal["N", "E", "O"]
#: The line settings of a serial bus, which a driver's ``line_defaults`` may give.
LINE_KEYS = ("baudrate", "parity", "bytesize", "stopbits")


@dataclass(frozen=True, slots=True)
class PointConfig:
    """One value of a device: its name, how its raw value becomes a reading, and its limits."""

    name: str
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    deadband: float | None = None
    heartbeat: float | None = None  # seconds
    writable: bool = False
    min: float | None = None
    max: float | None = None
    #: The driver's own point keys, converted (``point_options``).
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def value_type(self) -> str:
        """What the reading is, for ``meta``: the driver's ``type`` option, else a number."""
        return str(self.options.get("type", "number"))

    @property
    def needs(self) -> tuple[str, ...]:
        """The other points of the device whose readings this one's reading needs."""
        return ()


@dataclass(frozen=True, slots=True)
class TemplateConfig:
    """A named set of points that devices of one driver can share."""

    name: str
    points: tuple[PointConfig, ...]
    source: str = ""  # file it came from, for `edge-agent templates`
    description: str = ""
    driver: str = "modbus"


@dataclass(frozen=True, slots=True)
class BusType:
    """A bus type a driver brings, and how its ``[[bus]]`` tables write their link."""

    name: str
    link: Link
    #: A network bus's port when its table names none.
    default_port: int = 0


#: The bus type the core itself knows: a plain serial port whose devices name their driver.
SERIAL_BUS = BusType("serial", "serial")


@dataclass(frozen=True, slots=True)
class BusConfig:
    """A physical or network bus; every device on it shares one connection.

    Network buses use ``host`` and ``port``; serial ones ``serial_port`` (written ``port`` in the
    file, as a path) and the line settings. ``type`` ``"local"`` is no bus a person writes: the
    stand-in for a device on none (the gateway itself, sysfs, GPIO), named after the device.
    """

    name: str
    type: str
    host: str = ""
    port: int = 502
    serial_port: str = ""
    baudrate: int = 9600
    parity: Parity = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout: float = 1.0
    request_gap: float = 0.0
    #: The bus driver's own keys, converted (``bus_options``).
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The line settings (``LINE_KEYS``) its table writes: the others may be its driver's.
    line_written: frozenset[str] = frozenset()

    def line_defaulted(self, defaults: Mapping[str, Any]) -> BusConfig:
        """The bus with ``defaults`` (a driver's ``line_defaults``) where its table writes no
        setting of its own."""
        unwritten = {
            k: v for k, v in defaults.items() if k in LINE_KEYS and k not in self.line_written
        }
        return replace(self, **unwritten) if unwritten and self.serial else self

    @property
    def serial(self) -> bool:
        """Whether the bus is a local serial port (its line settings apply)."""
        return bool(self.serial_port)

    @property
    def address(self) -> str:
        """Where the bus is, for messages: the serial port or host:port."""
        return self.serial_port if self.serial else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """A device polled on its interval; its points come from ``point`` entries or a template."""

    name: str
    bus: str  # "" for a device on no bus
    driver: str
    interval: float
    unit: int = 1
    template: str | None = None
    points: tuple[PointConfig, ...] = ()
    #: The driver's own device keys, converted (``device_options``).
    options: Mapping[str, Any] = field(default_factory=dict)


def local_bus(device: DeviceConfig) -> BusConfig:
    """The stand-in bus of a device on no bus: its own, named after it."""
    return BusConfig(device.name, "local")
