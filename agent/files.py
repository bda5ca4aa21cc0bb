"""Files written so that a power cut leaves the old or the new text, never a mix."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, text: str, mode: int = 0o600, encoding: str = "utf-8") -> None:
    """``text`` in ``path``: a temporary file beside it, synced, renamed over it, and the
    rename synced. The temporary file is hidden and not ``.toml`` (no include matches it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # a leftover temporary file keeps its old mode otherwise
        with open(fd, "w", encoding=encoding, closefd=False) as file:
            file.write(text)
            file.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make a rename or removal in ``directory`` durable (not every file system can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
