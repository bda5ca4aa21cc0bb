"""One agent per data dir: two would hand out the same sample ids and fight over the buffer."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import AgentError

LOCK_FILE = "agent.lock"


class DataDirBusy(AgentError):
    """Another edge-agent holds the data dir."""


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's lock for the ``with`` body (released by the kernel on any exit)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    with path.open("a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "?"
            raise DataDirBusy(
                f"data dir {data_dir} is in use by another edge-agent (pid {holder}): stop it, "
                "or give this one its own [agent] data_dir"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        yield
