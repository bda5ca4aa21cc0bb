"""Durations, sizes and ``${ENV}`` substitution as written in the TOML file."""

from __future__ import annotations

import re
from collections.abc import Mapping

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?i?b)?", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
#: ``$${`` first: it is the escape that writes a literal ``${`` (a password may hold one).
_ENV = re.compile(r"\$\$\{|\$\{([^}]*)\}")
ESCAPED_BRACE = "$${"


class UnsetVariableError(ValueError):
    """``${NAME}`` names a variable that is not set; ``name`` is what stood between the braces."""

    def __init__(self, name: str) -> None:
        super().__init__(f"environment variable {name} is not set (used as ${{{name}}})")
        self.name = name


def parse_duration(value: object) -> float:
    """Seconds from ``"250ms"``, ``"10s"``, ``"5m"``, ``"1h30m"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "10s", not a boolean')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(
                f'"{value}" is not a duration: write e.g. "250ms", "10s", "5m" or "1h"'
            )
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError(f'expected a duration such as "10s", got {type(value).__name__}')
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``"200MB"``, ``"1GiB"`` or a number of bytes (MB = 10**6, MiB = 2**20)."""
    if isinstance(value, bool):
        raise ValueError('expected a size such as "200MB", not a boolean')
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if not match:
            raise ValueError(f'"{value}" is not a size: write e.g. "200MB", "1GiB" or a byte count')
        size = int(float(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()])
    else:
        raise ValueError(f'expected a size such as "200MB", got {type(value).__name__}')
    if size <= 0:
        raise ValueError("a size must be greater than zero")
    return size


def substitute_env(text: str, environ: Mapping[str, str]) -> str:
    """Replace every ``${NAME}`` with the environment variable (an unset one is an error), and
    ``${NAME:-default}`` with it or, when it is unset or empty, with ``default`` (as a shell does:
    ``"${CREDENTIALS_DIRECTORY:-/etc/edge-agent}/mqtt-password"`` works under systemd and
    beside it). ``$${`` is a literal ``${``, for the text (a password) that holds one."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == ESCAPED_BRACE:
            return "${"
        name, has_default, default = match[1].partition(":-")
        if has_default:
            return environ.get(name) or default
        if name not in environ:
            raise UnsetVariableError(name)
        return environ[name]

    return _ENV.sub(replace, text)
