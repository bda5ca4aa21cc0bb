"""DL/T 645-2007 energy meters on RS-485: the driver, the protocol, and a meter emulator."""

from .driver import Dlt645Driver

__all__ = ["Dlt645Driver"]
