"""Two pseudo-terminals wired to each other, like two serial ports joined by a cable: where a
driver's simulation (``edge-agent simulate --pty``) and the test kit serve serial devices."""

from __future__ import annotations

import asyncio
import logging
import os
import tty
from types import TracebackType
from typing import NamedTuple

log = logging.getLogger(__name__)


class _PtyEnd(NamedTuple):
    master: int
    slave: int  # held open so that the master never sees a hang-up
    path: str


class PtyLink:
    """Two pseudo-terminals wired to each other, like two serial ports joined by a cable.

    A pseudo-terminal pair has a path only at its slave end (``/dev/pts/N``), so a link is two
    pairs whose master ends the event loop copies into each other: what is written to
    ``paths[0]`` can be read at ``paths[1]`` and back. Unlike ``socat`` it needs nothing
    installed, and pyserial treats both paths as serial ports at any baud rate (a pty does not
    pace bytes: a frame crosses in well under a millisecond whatever the baud rate).

    Each end's slave side stays open here too: a program that closes its end leaves the link
    working for the next one, instead of the master reporting a hang-up. ``forward`` is the place
    to meddle with the traffic (see ``agent/testkit/serial.py``); ``open_end``/``close_end`` replace
    one end by a fresh pseudo-terminal (an unplugged adapter).
    """

    def __init__(self) -> None:
        self._ends: list[_PtyEnd | None] = [None, None]

    @property
    def paths(self) -> tuple[str, str]:
        first, second = self._ends
        return (first.path if first else "", second.path if second else "")

    async def __aenter__(self) -> PtyLink:
        try:
            for index in (0, 1):
                self.open_end(index)
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for index in (0, 1):
            self.close_end(index)

    def open_end(self, index: int) -> str:
        """Give end ``index`` a fresh pseudo-terminal; returns its path."""
        self.close_end(index)
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
            os.set_blocking(master, False)
            end = _PtyEnd(master, slave, os.ttyname(slave))
            asyncio.get_running_loop().add_reader(master, self._readable, index)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._ends[index] = end
        return end.path

    def close_end(self, index: int) -> None:
        """Close end ``index``: a program that has its path open sees the port fail."""
        end, self._ends[index] = self._ends[index], None
        if end is None:
            return
        asyncio.get_running_loop().remove_reader(end.master)
        os.close(end.master)
        os.close(end.slave)

    def forward(self, index: int, data: bytes) -> None:
        """Called with what was written at end ``index``: hands it to the other end."""
        self.deliver(1 - index, data)

    def deliver(self, index: int, data: bytes) -> None:
        """Make ``data`` readable at end ``index``; dropped, as on a wire, if it cannot take it."""
        end = self._ends[index]
        if end is None:
            return
        try:
            os.write(end.master, data)
        except OSError as exc:  # full (nobody reads) or gone
            log.debug("pty %s: %d byte(s) dropped: %s", end.path, len(data), exc)

    def _readable(self, index: int) -> None:
        end = self._ends[index]
        if end is None:
            return
        try:
            data = os.read(end.master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("pty %s: read failed: %s", end.path, exc)
            return
        self.forward(index, data)
