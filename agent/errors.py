"""The errors edge-agent raises.

AgentError
├── ConfigError (ValueError)      the configuration cannot be used; carries every Problem
├── DriverError                    a driver could not do what was asked
│   ├── UnknownDriverError (LookupError)
│   ├── BusError (ConnectionError)     the bus (port, TCP link) is not usable
│   └── DeviceError                    the bus works but the device did not answer well
└── StorageError (OSError)         the local buffer cannot be used
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, located for a person to fix."""

    file: str
    line: int
    path: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        kind = "warning: " if self.warning else ""
        return f"{self.file}:{self.line}: {self.path}: {kind}{self.message}"


class AgentError(Exception):
    """Root of every error edge-agent raises on purpose."""


class ConfigError(AgentError, ValueError):
    """The configuration is invalid; ``problems`` lists every error and warning found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if not p.warning]
        super().__init__("\n".join(str(p) for p in errors) or "invalid configuration")


class DriverError(AgentError):
    """A driver could not do what was asked."""


class UnknownDriverError(DriverError, LookupError):
    """No driver is registered under the name asked for."""


class BusError(DriverError, ConnectionError):
    """The bus itself (serial port, TCP connection) cannot be used right now."""


class DeviceError(DriverError):
    """The bus works but the device did not answer, or answered with an error.

    ``frames`` are the last raw frames exchanged with the device, oldest first (e.g.
    ``"sent 01 03 00 00 00 0a c5 cd"``, ``"received 01 83 02 c0 f1"``), where the driver keeps
    them: what a technician needs when a slave answers garbage.
    """

    def __init__(self, message: str, frames: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.frames = frames


class StorageError(AgentError, OSError):
    """The local buffer cannot be opened or written."""
