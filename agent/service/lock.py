"""One agent per data dir: two would hand out the same sample ids and fight over the buffer.

The lock is the data dir itself (``flock`` on the directory), so it holds on a read-only or full
file system too; ``agent.lock`` beside it names the holder's pid when it can be written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import AgentError

LOCK_FILE = "agent.lock"


class DataDirBusy(AgentError):
    """Another edge-agent holds the data dir."""


class DataDirUnusable(AgentError):
    """The data dir cannot even be made or opened."""


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's lock for the ``with`` body (released by the kernel on any exit)."""
    with contextlib.suppress(OSError):  # a read-only parent: the directory may exist anyway
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise DataDirUnusable(
            f"data dir {data_dir}: {exc.strerror or exc}: make it a directory the agent may "
            "write, or set [agent] data_dir"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirBusy(
                f"data dir {data_dir} is in use by another edge-agent (pid {_holder(data_dir)}): "
                "stop it, or give this one its own [agent] data_dir"
            ) from None
        _name_holder(data_dir)
        yield
    finally:
        os.close(fd)


def _holder(data_dir: Path) -> str:
    try:
        return (data_dir / LOCK_FILE).read_text().strip() or "?"
    except (OSError, UnicodeDecodeError):
        return "?"


def _name_holder(data_dir: Path) -> None:
    """Write our pid for the message another agent gives; a read-only dir cannot take it."""
    with contextlib.suppress(OSError):
        fd = os.open(
            data_dir / LOCK_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600
        )
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
