"""Typed access to one TOML table that records every problem instead of stopping at the first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from ..api.keys import Convert, suggest
from ..errors import Problem
from .source import IndexPath, SourceFile
from .units import ESCAPED_BRACE, UnsetVariableError, environment_names, substitute_env

T = TypeVar("T")

_MISSING = object()
_SECRET_UNSET = (
    "names an environment variable (${…}) that is not set; not shown, as the text is secret: "
    f'set the variable, or write a literal "${{" as "{ESCAPED_BRACE}"'
)


class Problems:
    """Every problem found while loading, in the order found, each said once."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self._said: set[Problem] = set()
        self._where: dict[str, tuple[str, int]] = {}
        self._tables: dict[str, int] = {}  # table path → how many tables were written with it

    def table_place(self, path: str) -> str:
        """The key under which the places of a table at ``path`` are noted, unique to it.

        Two tables can have one path (two ``[[device]]`` named alike): noted under one key, the
        second's places would be the first's, and its problems would point at the wrong table.
        The second is noted as ``path#2``, the third ``path#3``.
        """
        count = self._tables.get(path, 0) + 1
        self._tables[path] = count
        return path if count == 1 else f"{path}#{count}"

    def note_place(self, place: str, file: str, line: int) -> None:
        """Remember where ``place`` was written, so later checks (drivers) can point at it."""
        self._where.setdefault(place, (file, line))

    def where(self, place: str) -> tuple[str, int] | None:
        """The file and line of ``place`` or of its nearest known parent."""
        parts = place.split(".")
        for end in range(len(parts), 0, -1):
            found = self._where.get(".".join(parts[:end]))
            if found:
                return found
        return None

    def at(
        self, path: str, message: str, *, place: str | None = None, warning: bool = False
    ) -> None:
        """A problem at the key path ``path``, located at ``place`` (the table's own key, see
        ``table_place``; ``path`` when omitted) or its nearest known parent."""
        file, line = self.where(place or path) or ("?", 1)
        self.add(Problem(file, line, path, message, warning))

    def add(self, problem: Problem) -> None:
        if problem not in self._said:  # a check run once per duplicate name says it again
            self._said.add(problem)
            self.items.append(problem)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if not p.warning]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.warning]


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
        place: str | None = None,
    ) -> None:
        self.source = source
        self.data = data
        self.index = index
        self.path = path
        #: Where this table's places are noted: ``path``, unless another table has that path.
        self.place = path if place is None else place
        self.problems = problems
        self.environ = environ
        self._known: set[str] = set()
        problems.note_place(self.place, str(source.path), self.line())
        for key in data:
            problems.note_place(self.place_of(key), str(source.path), self.line(key))

    def line(self, key: str | None = None) -> int:
        return self.source.line_of(self.index if key is None else (*self.index, key))

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def place_of(self, key: str) -> str:
        """The place key of ``key`` (or of a key path below this table)."""
        return f"{self.place}.{key}" if self.place else key

    def problem(self, key: str | None, message: str, *, warning: bool = False) -> None:
        path = self.key_path(key) if key else self.path
        line = self.line(key)
        self.problems.add(Problem(str(self.source.path), line, path, message, warning))

    def report(self, key: str, messages: Sequence[str]) -> bool:
        """Each message as a problem at ``key``; True when there is none."""
        for message in messages:
            self.problem(key, message)
        return not messages

    def has(self, key: str) -> bool:
        return key in self.data

    def take(
        self,
        key: str,
        convert: Convert[T],
        default: T | object = _MISSING,
        *,
        secret: bool = False,
    ) -> T | None:
        """The converted value of ``key``; the default when absent; ``None`` after a problem.

        A ``secret`` key's text is never in a message: not even the "name" of an unset
        ``${…}``, which is the password's own text when the password holds ``${``.
        """
        self._known.add(key)
        if key not in self.data:
            if default is _MISSING:
                self.problem(key, "is required")
                return None
            return default  # type: ignore[return-value]
        try:
            value = self._substituted(self.data[key])
        except UnsetVariableError as exc:
            self.problem(key, _SECRET_UNSET if secret else str(exc))
            return None
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            self.problem(key, self._unexpanded(str(exc), self.data[key]))
            return None

    def child(self, key: str, index: IndexPath, path: str, data: Mapping[str, Any]) -> Section:
        """A sub-table, e.g. one ``[[device.point]]`` element."""
        self._known.add(key)
        prefix = f"{self.path}." if self.path else ""
        below = path[len(prefix) :] if path.startswith(prefix) else path
        place = self.problems.table_place(self.place_of(below))
        return Section(self.source, data, index, path, self.problems, self.environ, place)

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

    def _unexpanded(self, message: str, raw: Any) -> str:
        """``message`` with what ``${…}`` expanded to shown as the reference written: an
        environment variable's value may be a secret, and the technician wrote the name."""
        for name in environment_names(str(raw)):
            value = self.environ.get(name, "")
            if value:
                message = message.replace(value, f"${{{name}}}")
        return message

    def _substituted(self, value: Any) -> Any:
        if isinstance(value, str):
            return substitute_env(value, self.environ)
        if isinstance(value, list):
            return [self._substituted(v) for v in value]
        return value
