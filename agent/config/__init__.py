"""The configuration: TOML in, frozen typed objects out, every problem reported at once."""

from .loader import builtin_templates, load_config
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
    "builtin_templates",
    "load_config",
]
