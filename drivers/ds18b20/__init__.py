"""DS18B20 1-Wire temperature probes through the kernel's w1 sysfs (see README.md)."""

from .driver import Ds18b20Driver

__all__ = ["Ds18b20Driver"]
