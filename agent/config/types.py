"""Frozen, typed configuration objects: what the rest of the agent sees of the TOML file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Table = Literal["holding", "input", "coil", "discrete"]
PointType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
WordOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]

TABLES: tuple[Table, ...] = ("holding", "input", "coil", "discrete")
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})
ORDERS: tuple[WordOrder, ...] = ("ABCD", "DCBA", "BADC", "CDAB")
#: Registers each fixed-size type occupies; a string's size comes from its ``length``.
TYPE_REGISTERS: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
}
POINT_TYPES: tuple[str, ...] = (*TYPE_REGISTERS, "string")


@dataclass(frozen=True, slots=True)
class PointConfig:
    """One value of a device: where it lives and how its raw registers become a reading."""

    name: str
    table: Table = "holding"
    address: int = 0
    type: PointType = "uint16"
    order: WordOrder = "ABCD"
    length: int = 0  # characters, for strings only
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    deadband: float | None = None
    heartbeat: float | None = None  # seconds
    writable: bool = False
    min: float | None = None
    max: float | None = None
    bit: int | None = None  # a single bit (0 = least significant) of a register
    #: Raw values that mean "not available" (e.g. 0x7FFF, 0xFFFF, NaN): no reading, not a number.
    not_available: tuple[float, ...] = ()
    #: Another point whose value v scales this one by 10**v (SunSpec's scale factors).
    scale_exponent: str | None = None
    #: The driver's own point keys, for drivers whose points are not Modbus registers.
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """How many registers (or bits, on coil/discrete tables) the point spans."""
        if self.table in BIT_TABLES:
            return 1
        if self.type == "string":
            return (self.length + 1) // 2
        return TYPE_REGISTERS[self.type]


@dataclass(frozen=True, slots=True)
class TemplateConfig:
    """A named set of points that devices can share."""

    name: str
    points: tuple[PointConfig, ...]
    source: str = ""  # file it came from, for `edge-agent templates`
    description: str = ""


#: "local" is no bus a person configures: the stand-in for a device on none (the gateway itself,
#: sysfs, GPIO), so that every device has an owner task like the devices on a bus.
#: "serial" is a plain serial port for sensors that are not Modbus (line-oriented ASCII and the
#: like): no driver is implied by it, each of its devices names one (``driver = "serial-line"``).
BusType = Literal["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp", "serial", "local"]
BUS_TYPES: tuple[BusType, ...] = ("modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp", "serial")
#: Buses on a local serial port: ``port`` is a path and the line settings apply.
SERIAL_BUS_TYPES: frozenset[str] = frozenset({"modbus-rtu", "serial"})
Parity = Literal["N", "E", "O"]


@dataclass(frozen=True, slots=True)
class BusConfig:
    """A physical or network bus; every device on it shares one connection.

    Network buses use ``host`` and ``port``; serial ones ``serial_port`` (written ``port`` in the
    file, as a path) and the line settings.
    """

    name: str
    type: BusType
    host: str = ""
    port: int = 502
    serial_port: str = ""
    baudrate: int = 9600
    parity: Parity = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout: float = 1.0
    request_gap: float = 0.0
    #: Largest read the slaves on this bus accept (the protocol allows 125 registers, 2000 bits).
    max_registers: int = 125
    max_bits: int = 2000
    #: Unused registers (or bits) a merged read may span between two points.
    merge_gap: int = 8
    #: Write every point with FC 15/16 (write multiple coils/registers), even a single coil or
    #: register, for slaves that lack FC 5/6 (write single coil/register).
    write_multiple: bool = False

    @property
    def serial(self) -> bool:
        return self.type in SERIAL_BUS_TYPES

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
    #: The driver's own device keys (see ``agent.driver``), converted.
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentSection:
    id: str
    data_dir: Path
    log_level: str = "info"
    include: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BufferSection:
    max_size: int = 200 * 1000 * 1000
    flush_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class MqttSection:
    host: str = "localhost"
    port: int = 1883
    tls: bool = False
    client_id: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    topic_prefix: str = "edge"
    qos: int = 1
    batch_max: int = 500
    batch_interval: float = 1.0
    health_interval: float = 60.0
    command_ttl: float = 60.0
    keepalive: float = 60.0
    #: Connect over mqtts:// without verifying the broker's certificate (a lab broker's
    #: self-signed one); ignored with mqtt://.
    tls_insecure: bool = False
    #: QoS 1 messages sent and not yet acknowledged at once (paho's in-flight window).
    max_inflight: int = 20
    #: Longest wait between reconnection attempts (full jitter below it: a fleet must not
    #: stampede a broker that comes back).
    reconnect_max: float = 60.0
    #: "5" (MQTT 5: refusals are read from the broker's acknowledgements) or "3.1.1".
    protocol: str = "5"
    #: Once the broker answers again, the CONNECT waits a random moment within this window: a
    #: fleet that lost the same broker spreads its reconnections over it.
    reconnect_window: float = 0.5
    #: MQTT 5: how long the broker keeps our session (the ``cmd`` subscription and the commands
    #: queued for us) while we are away; 0: a new session at every connection.
    session_expiry: float = 300.0
    #: "none" (JSON) or "zlib" (JSON compressed with zlib, for metered links).
    compression: str = "none"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole, validated configuration."""

    source: Path
    agent: AgentSection
    buffer: BufferSection
    mqtt: MqttSection
    buses: tuple[BusConfig, ...] = ()
    devices: tuple[DeviceConfig, ...] = ()
    templates: tuple[TemplateConfig, ...] = ()

    def bus(self, name: str) -> BusConfig:
        return next(b for b in self.buses if b.name == name)

    def device(self, name: str) -> DeviceConfig:
        return next(d for d in self.devices if d.name == name)

    def devices_on(self, bus: str) -> list[DeviceConfig]:
        return [d for d in self.devices if d.bus == bus]
