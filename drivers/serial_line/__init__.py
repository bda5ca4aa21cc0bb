"""Line-oriented ASCII sensors on a serial bus (see README.md)."""

from .driver import SerialLineDriver

__all__ = ["SerialLineDriver"]
