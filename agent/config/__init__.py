"""The configuration: TOML in, frozen typed objects out, every problem reported at once."""

from .loader import load_config
from .types import (
    AgentSection,
    BufferSection,
    BusConfig,
    Config,
    DeviceConfig,
    MqttSection,
    PointConfig,
    TemplateConfig,
)

__all__ = [
    "AgentSection",
    "BufferSection",
    "BusConfig",
    "Config",
    "DeviceConfig",
    "MqttSection",
    "PointConfig",
    "TemplateConfig",
    "load_config",
]
