"""The gateway itself: CPU, memory, disk, temperature, uptime (see README.md)."""

from .driver import SystemDriver

__all__ = ["SystemDriver"]
