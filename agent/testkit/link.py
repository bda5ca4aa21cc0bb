"""A slow or stalled link between the agent and its broker: a TCP proxy on the kit's loop.

A cellular link does not fail cleanly: round trips of seconds, a tower hand-over that holds
every byte for a while, a NAT that drops the connection without a word. ``SlowLink`` forwards
``url`` (what the agent's ``[mqtt] url`` points at) to the broker, each chunk ``delay`` seconds
late; ``stalled = True`` holds every byte until it is set back; ``replies_held = True`` holds
only the broker's (a publish arrives, its acknowledgement is lost); ``cut()`` closes every
connection at once, as a lost carrier does.
"""

from __future__ import annotations

import asyncio
import contextlib

from .aio import KitLoop
from .net import free_port


class SlowLink:
    """``127.0.0.1:port`` forwarded to ``target_host:target_port`` with ``delay`` seconds on
    every chunk, both ways; ``stalled`` holds everything; ``cut()`` drops every connection."""

    host = "127.0.0.1"

    def __init__(self, kit: KitLoop, target_host: str, target_port: int) -> None:
        self.kit = kit
        self.target = (target_host, target_port)
        self.port = free_port()
        self.delay = 0.0
        self._flowing = asyncio.Event()
        self._replying = asyncio.Event()  # the broker's bytes to the agent
        self._server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    @stalled.setter
    def stalled(self, stalled: bool) -> None:
        self.kit.call_soon(self._flowing.clear if stalled else self._flowing.set)

    @property
    def replies_held(self) -> bool:
        """The agent's bytes reach the broker, the broker's answers (PUBACKs) are held: a
        publish that arrived and whose acknowledgement is lost."""
        return not self._replying.is_set()

    @replies_held.setter
    def replies_held(self, held: bool) -> None:
        self.kit.call_soon(self._replying.clear if held else self._replying.set)

    def start(self) -> SlowLink:
        self.kit.call(self._start())
        return self

    def stop(self) -> None:
        self.kit.call(self._stop())

    def cut(self) -> None:
        """Every connection through the link is dropped; new ones are taken again."""
        self.kit.call(self._cut())

    async def _start(self) -> None:
        self._flowing.set()
        self._replying.set()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._cut()

    async def _cut(self) -> None:
        # Abort the sockets and let each connection's task end by itself: the tasks belong to
        # asyncio's server, which does not take them being cancelled well (before 3.12).
        for writer in list(self._open):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._open.discard(writer)
            return
        self._open.add(upstream_writer)
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer, self._flowing),
                self._pipe(upstream_reader, writer, self._replying),
            )
        finally:
            for end in (writer, upstream_writer):
                end.transport.abort()
                self._open.discard(end)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: asyncio.Event
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                await self._flowing.wait()
                await way.wait()
                if writer.transport.is_closing():
                    break
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()  # one way ends: the other must too, as TCP's reset does
