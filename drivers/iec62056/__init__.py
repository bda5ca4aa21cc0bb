"""IEC 62056-21 meter readout (mode C) through an optical head or an RS-485 adapter: the driver,
the protocol, and a meter emulator."""

from .driver import Iec62056Driver

__all__ = ["Iec62056Driver"]
