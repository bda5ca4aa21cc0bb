"""Raspberry Pi GPIO through gpiozero: inputs, pulse counters and relay outputs (see README.md)."""

from .driver import GpioCounterDriver, GpioInputDriver, GpioOutputDriver

__all__ = ["GpioCounterDriver", "GpioInputDriver", "GpioOutputDriver"]
