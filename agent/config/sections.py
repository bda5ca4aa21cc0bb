"""Typed access to one TOML table that records every problem instead of stopping at the first."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ..errors import Problem
from .source import IndexPath, SourceFile
from .units import parse_duration, parse_size, substitute_env

T = TypeVar("T")
Convert = Callable[[Any], T]

_MISSING = object()


class Problems:
    """Every problem found while loading, in the order found."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self._where: dict[str, tuple[str, int]] = {}

    def note_place(self, path: str, file: str, line: int) -> None:
        """Remember where ``path`` was written, so later checks (drivers) can point at it."""
        self._where.setdefault(path, (file, line))

    def at(self, path: str, message: str, *, warning: bool = False) -> None:
        """A problem located at the key path ``path`` or its nearest known parent."""
        parts = path.split(".")
        file, line = "?", 1
        for end in range(len(parts), 0, -1):
            found = self._where.get(".".join(parts[:end]))
            if found:
                file, line = found
                break
        self.items.append(Problem(file, line, path, message, warning))

    def add(self, problem: Problem) -> None:
        self.items.append(problem)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if not p.warning]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.warning]


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` when a close match exists, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class Section:
    """One table of the file: read keys with ``take``, then ``finish`` to refuse unknown ones."""

    def __init__(
        self,
        source: SourceFile,
        data: Mapping[str, Any],
        index: IndexPath,
        path: str,
        problems: Problems,
        environ: Mapping[str, str],
    ) -> None:
        self.source = source
        self.data = data
        self.index = index
        self.path = path
        self.problems = problems
        self.environ = environ
        self._known: set[str] = set()
        problems.note_place(path, str(source.path), self.line())
        for key in data:
            problems.note_place(self.key_path(key), str(source.path), self.line(key))

    def line(self, key: str | None = None) -> int:
        return self.source.line_of(self.index if key is None else (*self.index, key))

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str | None, message: str, *, warning: bool = False) -> None:
        path = self.key_path(key) if key else self.path
        line = self.line(key)
        self.problems.add(Problem(str(self.source.path), line, path, message, warning))

    def has(self, key: str) -> bool:
        return key in self.data

    def take(self, key: str, convert: Convert[T], default: T | object = _MISSING) -> T | None:
        """The converted value of ``key``; the default when absent; ``None`` after a problem."""
        self._known.add(key)
        if key not in self.data:
            if default is _MISSING:
                self.problem(key, "is required")
                return None
            return default  # type: ignore[return-value]
        try:
            return convert(self._substituted(self.data[key]))
        except (ValueError, TypeError) as exc:
            self.problem(key, str(exc))
            return None

    def child(self, key: str, index: IndexPath, path: str, data: Mapping[str, Any]) -> Section:
        """A sub-table, e.g. one ``[[device.point]]`` element."""
        self._known.add(key)
        return Section(self.source, data, index, path, self.problems, self.environ)

    def tables(self, key: str) -> list[tuple[IndexPath, Mapping[str, Any]]]:
        """The elements of an array of tables ``key`` (``[[…]]``), with their index paths."""
        self._known.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.problem(key, f"must be written as [[{self.key_path(key)}]] tables")
            return []
        return [((*self.index, key, i), v) for i, v in enumerate(value)]

    def ignore_rest(self) -> None:
        """Check no further keys: what they mean depends on something already refused."""
        self._known.update(self.data)

    def finish(self) -> None:
        """Report every key that nobody asked for: most often a typo."""
        for key in self.data:
            if key not in self._known:
                hint = (
                    suggest(key, self._known) or f"; known keys: {', '.join(sorted(self._known))}"
                )
                self.problem(key, f"unknown key{hint}")

    def _substituted(self, value: Any) -> Any:
        if isinstance(value, str):
            return substitute_env(value, self.environ)
        if isinstance(value, list):
            return [self._substituted(v) for v in value]
        return value


# Converters: each raises ValueError/TypeError with a message a technician can act on.


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, got {_kind(value)}")
    return value


def name(value: Any) -> str:
    """A name used in topics and key paths: letters, digits, ``_`` and ``-``."""
    result = text(value)
    if not result or not all(c.isalnum() or c in "_-" for c in result):
        raise ValueError(f'"{result}" is not a valid name: use letters, digits, "_" and "-"')
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
            raise ValueError(f'"{word}" is not one of {", ".join(choices)}{suggest(word, choices)}')
        return word

    return convert


def in_range(low: int, high: int) -> Convert[int]:
    def convert(value: Any) -> int:
        result = integer(value)
        if not low <= result <= high:
            raise ValueError(f"{result} is out of range {low}..{high}")
        return result

    return convert


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
        type(value), "a table" if isinstance(value, dict) else "a list"
    )
