"""systemd's side of sd_notify: a datagram socket the agent is pointed at with ``NOTIFY_SOCKET``."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType


class NotifyListener:
    """Receives what the agent tells systemd; each datagram is a list of ``KEY=value`` lines."""

    def __init__(self) -> None:
        # a short path of its own: unix socket paths are limited to 108 bytes
        self._dir = Path(tempfile.mkdtemp(prefix="edge-notify-"))
        self.path = str(self._dir / "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.setblocking(False)
        #: Every line received so far, in order.
        self.lines: list[str] = []

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def next(self, timeout: float) -> list[str]:
        """The next datagram's lines; ``TimeoutError`` when none comes in ``timeout`` s."""
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self._sock, 4096), timeout)
        lines = data.decode().split("\n")
        self.lines.extend(lines)
        return lines

    async def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """The first line starting with ``prefix`` from now on (earlier datagrams are skipped)."""

        async def until() -> str:
            while True:
                for line in await self.next(timeout):
                    if line.startswith(prefix):
                        return line

        try:
            return await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no {prefix!r} in {timeout}s; got {self.lines[-10:]}") from None

    async def quiet(self, line: str, gap: float, timeout: float) -> None:
        """Return once ``line`` has not come for ``gap`` seconds; ``TimeoutError`` when it keeps
        coming for ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        last = loop.time()
        while (left := last + gap - loop.time()) > 0:
            if loop.time() + left > end:
                raise TimeoutError(f"{line!r} kept coming for {timeout}s")
            try:
                if line in await self.next(left):
                    last = loop.time()
            except asyncio.TimeoutError:
                return
