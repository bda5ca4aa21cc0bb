"""The configuration: TOML in, frozen typed objects out, every problem reported at once."""

from ..api.config import BusConfig, DeviceConfig, PointConfig, TemplateConfig
from .loader import builtin_templates, load_config
from .types import AgentSection, BufferSection, Config, MqttSection

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
