"""NMEA 0183 GPS receivers on a serial bus (see README.md)."""

from .driver import NmeaDriver

__all__ = ["NmeaDriver"]
