"""SDI-12 sensors through a serial adapter: the driver, the protocol, and a sensor emulator."""

from .driver import Sdi12Driver

__all__ = ["Sdi12Driver"]
