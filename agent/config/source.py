"""Reading TOML files while remembering on which line each table and key was written.

``tomllib`` gives values but no positions; a technician needs ``FILE:LINE``. A light scan of the
text maps every table header and ``key =`` line to its index path, e.g.
``("device", 1, "point", 0, "type")``, the same path the parsed data is walked by.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 gateways
    import tomli as tomllib

IndexPath = tuple[str | int, ...]

_HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"""\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_TOML_LINE = re.compile(r"at line (\d+)")


@dataclass
class SourceFile:
    """One parsed TOML file: its data and where each path was written."""

    path: Path
    data: dict[str, Any]
    lines: dict[IndexPath, int] = field(default_factory=dict)
    text: str = ""

    def line_of(self, index: IndexPath) -> int:
        """The line of ``index`` or of its nearest written parent (1 when none)."""
        for end in range(len(index), 0, -1):
            line = self.lines.get(index[:end])
            if line is not None:
                return line
        return 1


class TomlSyntaxError(ValueError):
    """The file is not valid TOML; ``line`` says where the parser gave up."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


def read_toml(path: Path) -> SourceFile:
    """Parse ``path``; raises ``OSError`` when unreadable, ``TomlSyntaxError`` when invalid."""
    return parse_toml(path, path.read_text(encoding="utf-8"))


def parse_toml(path: Path, text: str) -> SourceFile:
    """Parse ``text`` as the file ``path``; raises ``TomlSyntaxError`` when invalid."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_LINE.search(str(exc))
        raise TomlSyntaxError(path, int(match[1]) if match else 1, str(exc)) from None
    return SourceFile(path, data, _scan_lines(text), text)


def _split_key(key: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", key)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _resolve(parts: list[str], arrays: dict[IndexPath, int]) -> IndexPath:
    """Index path of a dotted header, entering the current element of every array on the way."""
    path: IndexPath = ()
    for part in parts:
        path = (*path, part)
        if path in arrays:
            path = (*path, arrays[path])
    return path


def _scan_lines(text: str) -> dict[IndexPath, int]:
    lines: dict[IndexPath, int] = {}
    arrays: dict[IndexPath, int] = {}  # array-of-tables path → index of its current element
    current: IndexPath = ()
    in_string: str | None = None  # the delimiter of an open multi-line string
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string:
            if line.count(in_string) % 2:
                in_string = None
            continue
        header = _HEADER.match(line)
        if header and not line.lstrip().startswith(('["', "['")):
            parts = _split_key(header[2])
            if header[1] == "[[":
                parent = _resolve(parts[:-1], arrays)
                array = (*parent, parts[-1])
                arrays[array] = arrays.get(array, -1) + 1
                current = (*array, arrays[array])
            else:
                current = _resolve(parts, arrays)
            lines.setdefault(current, number)
            continue
        key = _KEY.match(line)
        if key:
            lines.setdefault((*current, *_split_key(key[1])), number)
            rest = line[key.end() :]
            for delimiter in ('"""', "'''"):
                if rest.count(delimiter) % 2:
                    in_string = delimiter
    return lines


def glob_match(name: str, pattern: str) -> bool:
    """Whether the relative file ``name`` ("conf.d/a.toml") is one ``Path.glob(pattern)``
    finds: ``*`` and ``?`` within a part, ``**`` any number of folders."""
    parts = name.split("/")
    if any(part.startswith(".") for part in parts):  # as the disk's includes: never hidden
        return False
    return _parts_match(parts, pattern.split("/"))


def _parts_match(names: list[str], patterns: list[str]) -> bool:
    if not patterns:
        return not names
    if patterns[0] == "**":
        return any(_parts_match(names[skip:], patterns[1:]) for skip in range(len(names) + 1))
    if not names or not fnmatch.fnmatchcase(names[0], patterns[0]):
        return False
    return _parts_match(names[1:], patterns[1:])
