"""Frozen, typed configuration objects: what the rest of the agent sees of the TOML file.

The bus, device, point and template types are the drivers' too: they live in ``agent.api``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..api.config import BusConfig, DeviceConfig, TemplateConfig

#: The directory of the data dir that drivers keep their files in.
STATE_DIR = "state"


@dataclass(frozen=True, slots=True)
class AgentSection:
    id: str
    data_dir: Path
    log_level: str = "info"
    include: tuple[str, ...] = ()

    @property
    def state_dir(self) -> Path:
        """Where drivers keep what must survive a restart (a pulse count, a learned plan)."""
        return self.data_dir / STATE_DIR


@dataclass(frozen=True, slots=True)
class BufferSection:
    max_size: int = 200 * 1000 * 1000
    flush_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class WebSection:
    """``[web]``: the technician's page and its JSON API, served by the agent (off by default)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    #: HTTP Basic's password, from ``password_file``; None: loopback only, read only.
    password: str | None = field(default=None, repr=False)  # never printed
    allow_writes: bool = False
    max_clients: int = 8


@dataclass(frozen=True, slots=True)
class RemoteSection:
    """``[remote]``: what the fleet may do over MQTT beside commands (all off by default)."""

    #: ``config/set`` and ``config/get``: a whole configuration pushed, checked, applied and
    #: confirmed (or rolled back by itself).
    config: bool = False
    #: A push is rolled back unless the agent is back online with it within this.
    confirm_within: float = 120.0
    #: How old a push may be when it arrives (one queued while offline), unless it says.
    push_ttl: float = 3600.0
    #: The diagnostics answered on ``diag/reply``, each on its own.
    read: bool = False
    scan: bool = False
    status: bool = False
    frames: bool = False
    log: bool = False

    @property
    def diagnostics(self) -> tuple[str, ...]:
        """The names of the diagnostics turned on."""
        names = ("read", "scan", "status", "frames", "log")
        return tuple(name for name in names if getattr(self, name))


@dataclass(frozen=True, slots=True)
class SparkplugSection:
    """``[sparkplug]``: the agent as a Sparkplug B edge node instead of the JSON topics."""

    enabled: bool = False
    group_id: str = ""
    #: The edge node's id: ``agent.id`` unless written.
    edge_node_id: str = ""
    #: The primary host whose STATE gates publishing; None: publish whenever connected.
    primary_host_id: str | None = None


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
    web: WebSection = field(default_factory=WebSection)
    remote: RemoteSection = field(default_factory=RemoteSection)
    sparkplug: SparkplugSection = field(default_factory=SparkplugSection)
    #: The files it was read from, each as (name relative to the main file's folder, text):
    #: what ``config/get`` shows and the running configuration's hash is taken of.
    files: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    def bus(self, name: str) -> BusConfig:
        return next(b for b in self.buses if b.name == name)

    def device(self, name: str) -> DeviceConfig:
        return next(d for d in self.devices if d.name == name)

    def devices_on(self, bus: str) -> list[DeviceConfig]:
        return [d for d in self.devices if d.bus == bus]
