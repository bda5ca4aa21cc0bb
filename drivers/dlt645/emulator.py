"""DL/T 645-2007 meters emulated at the far end of a serial line (a pseudo-terminal), for tests
and rigs.

Each ``SimulatedMeter`` answers read data (0x11) for the identifiers it holds (0x91, or 0xB1
when ``following`` is set), an abnormal 0xD1 "no requested data" for the others, and read
address (0x13) to ``AA…AA`` (several meters answering at once collide: ``collided``; meters
with different ``delay`` answer one after the other). Each reply is prefixed with ``preamble``
FE bytes, begins ``delay`` seconds after the request, and takes ``byte_time`` seconds a byte
(0: all at once; 11/2400 is a byte of 2400 8E1). The meters of a bus speak one at a time: a
reply waits for the one before it to end. Faults a test can set, each a count of the next
replies it spoils: ``bad_checksum``, ``wrong_address``, ``garble_bcd`` (a value nibble made
0xA), ``truncate`` (the reply stops half-way), ``late`` (the reply comes ``late_by`` seconds
later still: after the master gave up on it); ``noise`` is bytes sent before every reply (line
noise); ``alive = False`` is a silent meter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

from . import protocol
from .protocol import Format


@dataclass
class SimulatedMeter:
    """One meter on the bus, the values it holds by identifier, and its faults."""

    address: str
    #: Readings by identifier, in the unit the standard gives (kWh, V, A, kW…).
    values: dict[int, float] = field(default_factory=dict)
    #: Formats of identifiers the standard's table (``protocol.KNOWN``) lacks.
    formats: dict[int, Format] = field(default_factory=dict)
    preamble: int = 0
    following: bool = False
    alive: bool = True
    bad_checksum: int = 0
    wrong_address: int = 0
    garble_bcd: int = 0
    truncate: int = 0
    late: int = 0
    late_by: float = 0.0
    delay: float = 0.0
    byte_time: float = 0.0
    noise: bytes = b""
    #: Every request heard, as (control code, identifier or None).
    heard: list[tuple[int, int | None]] = field(default_factory=list)

    def format_of(self, di: int) -> Format | None:
        return self.formats.get(di) or protocol.known_format(di)

    def reply_delay(self) -> float:
        """How long after the request the next reply begins (a ``late`` one: ``late_by`` more)."""
        if self.late:
            self.late -= 1
            return self.delay + self.late_by
        return self.delay

    def reply(self, request: protocol.Frame) -> bytes | None:
        """The frame that answers ``request`` (addressed to this meter), None for silence."""
        function = request.control & protocol.FUNCTION
        if function == protocol.READ_ADDRESS:
            self.heard.append((request.control, None))
            return self._frame(0x93, protocol.address_bytes(self.address))
        if function != protocol.READ_DATA or len(request.data) < 4:
            return None
        di = int.from_bytes(request.data[:4], "little")
        self.heard.append((request.control, di))
        form = self.format_of(di)
        if di not in self.values or form is None:
            return self._frame(0xD1, bytes([0x02]))  # bit 1: no requested data
        value = protocol.encode(self.values[di], form)
        if self.garble_bcd:
            self.garble_bcd -= 1
            value = bytes([value[0] | 0x0A, *value[1:]])
        control = 0xB1 if self.following else 0x91
        return self._frame(control, request.data[:4] + value)

    def _frame(self, control: int, data: bytes) -> bytes:
        address = protocol.address_bytes(self.address)
        if self.wrong_address:
            self.wrong_address -= 1
            address = bytes([address[0] ^ 0x01, *address[1:]])
        raw = bytearray(protocol.frame(address, control, data))
        if self.bad_checksum:
            self.bad_checksum -= 1
            raw[-2] ^= 0xFF
        if self.truncate:
            self.truncate -= 1
            del raw[len(raw) // 2 :]
        return self.noise + b"\xfe" * self.preamble + bytes(raw)


def collided(answers: list[bytes]) -> bytes:
    """What the master hears when meters answer at once: on an RS-485 pair a driven 1 wins
    over nothing, modelled as the replies' bytes OR-ed (a frame whose checksum fails)."""
    heard = bytearray(max(len(a) for a in answers))
    for answer in answers:
        for at, byte in enumerate(answer):
            heard[at] |= byte
    return bytes(heard)


class Dlt645Bus:
    """Meters sharing the line at ``path``: an async context manager serving them."""

    def __init__(self, path: str, meters: Iterable[SimulatedMeter], echo: bool = False) -> None:
        self.path = path
        self.meters = list(meters)
        #: An adapter that hears its own request (half duplex): the request comes back first.
        self.echo = echo
        #: When each request was heard (``time.monotonic``).
        self.heard_at: list[float] = []
        self._heard = bytearray()
        self._fd = -1
        #: Replies to send, in turn: (when to begin, the bytes, seconds a byte).
        self._outbox: asyncio.Queue[tuple[float, bytes, float]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Dlt645Bus:
        self._fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd)
        asyncio.get_running_loop().add_reader(self._fd, self._readable)
        self._sender = asyncio.create_task(self._send_replies())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        os.close(self._fd)

    def meter(self, address: str) -> SimulatedMeter:
        return next(m for m in self.meters if m.address == address)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._heard += os.read(self._fd, 4096)
        while self._heard:
            size = protocol.frame_size(bytes(self._heard))
            if size is None:
                del self._heard[:1]  # preamble or noise
                continue
            if not size or len(self._heard) < size:
                return
            raw = bytes(self._heard[:size])
            del self._heard[:size]
            if self.echo:
                self._send(raw)
            with contextlib.suppress(protocol.ProtocolError):  # a spoilt request: silence
                self._request(protocol.parse_frame(raw))

    def _request(self, request: protocol.Frame) -> None:
        if request.control & protocol.REPLY:
            return  # another meter's reply, not a request
        now = time.monotonic()
        self.heard_at.append(now)
        addressed = [
            m
            for m in self.meters
            if m.alive and protocol.matches(protocol.address_bytes(m.address), request.address)
        ]
        if request.address == protocol.address_bytes(protocol.BROADCAST) or not addressed:
            return
        answers = [(m.reply_delay(), m.byte_time, a) for m in addressed if (a := m.reply(request))]
        # Meters answering after the same delay collide; the others speak in turn.
        for delay in sorted({d for d, _, _ in answers}):
            at_once = [(b, a) for d, b, a in answers if d == delay]
            pace = max(b for b, _ in at_once)
            self._outbox.put_nowait((now + delay, collided([a for _, a in at_once]), pace))

    async def _send_replies(self) -> None:
        while True:
            when, data, byte_time = await self._outbox.get()
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            if not byte_time:
                self._send(data)
                continue
            for byte in data:
                self._send(bytes([byte]))
                await asyncio.sleep(byte_time)

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the agent's end closed: nobody to hear
            os.write(self._fd, data)
