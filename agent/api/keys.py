"""Converters for the keys of a configuration table: each takes the TOML value and returns it
converted, or raises ``ValueError``/``TypeError`` with a message a technician can act on (the
loader says it at the key's file and line). A driver declares its own keys with these.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
#: A key's converter: the TOML value in, the value the driver sees out.
Convert = Callable[[Any], T]

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


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` when a close match exists, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


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


# Converters: each raises ValueError/TypeError with a message a technician can act on.


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, got {_kind(value)}")
    return value


def utf8_text(value: Any) -> str:
    """A string that can be written as UTF-8: sent over MQTT or printed.

    TOML holds only UTF-8, but ``${VAR}`` can bring a lone surrogate: ``os.environ`` decodes
    an undecodable byte as one (surrogateescape), and encoding it later fails.
    """
    result = text(value)
    if (where := lone_surrogate(result)) is not None:
        raise ValueError(
            f"is not valid UTF-8: character {where + 1} is an undecodable byte (from an "
            "environment variable?); write it in UTF-8"
        )
    return result


def name(value: Any) -> str:
    """A name used in topics and key paths: letters, digits, ``_`` and ``-``."""
    result = text(value)
    if not result or not all(c.isalnum() or c in "_-" for c in result):
        raise ValueError(f'{shown(result)} is not a valid name: use letters, digits, "_" and "-"')
    return result


def integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"must be a whole number, got {_kind(value)}")
    return value


def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"must be a number, got {_kind(value)}")
    return float(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, got {_kind(value)}")
    return value


def strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("must be a list of strings")
    return tuple(value)


def duration(value: Any) -> float:
    return parse_duration(value)


def positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def size(value: Any) -> int:
    return parse_size(value)


def one_of(*choices: str) -> Convert[str]:
    def convert(value: Any) -> str:
        word = text(value)
        if word not in choices:
            hint = suggest(word, choices)
            raise ValueError(f"{shown(word)} is not one of {', '.join(choices)}{hint}")
        return word

    return convert


def in_range(low: int, high: int) -> Convert[int]:
    def convert(value: Any) -> int:
        result = integer(value)
        if not low <= result <= high:
            raise ValueError(f"{result} is out of range {low}..{high}")
        return result

    return convert


def lone_surrogate(value: str) -> int | None:
    """The index of the first character UTF-8 cannot encode, or None."""
    return next((i for i, c in enumerate(value) if "\ud800" <= c <= "\udfff"), None)


def shown(value: str, limit: int = 60) -> str:
    """``value`` quoted for a message: cut to ``limit`` characters, and with control characters
    and undecodable bytes escaped (a terminal would act on the first, UTF-8 refuses the second).
    Never for a secret."""
    cut = value if len(value) <= limit else f"{value[:limit]}…"
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in cut)
    return f'"{safe}"'


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
        type(value), "a table" if isinstance(value, dict) else "a list"
    )
