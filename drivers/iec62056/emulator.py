"""IEC 62056-21 meters emulated at the far end of a serial line, for tests and rigs.

Each ``SimulatedMeter`` answers a sign-on meant for it (its address, or none) with its
identification, takes the option select, and sends its data block at the speed agreed on,
after its reaction time. A ``MeterBus`` serves meters on a pseudo-terminal of its own, whose
other end (``port``) the agent opens: there it sees the speed the agent's port is set to (a
pty carries none, yet keeps the setting), and a message sent at another speed than the
meter's reads as noise, as it would on a wire. So a driver that forgets to switch, or to
switch back for the next sign-on, fails here as on a real meter. Faults a test can inject:
a wrong BCC, silence, a garbled or truncated data block, and a meter that answers every
address (two of them answering one sign-on collide into garbage).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import time
import tty
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

from . import protocol

#: termios speed constants back to the rates they name.
_SPEEDS = {getattr(termios, f"B{rate}"): rate for rate in protocol.BAUD_RATES}
#: How long a meter waits for the option select before it forgets the sign-on.
SESSION_TIMEOUT = 3.0


@dataclass
class SimulatedMeter:
    """One meter on the bus, its readout, and the faults a test can give it."""

    #: Its device address; "" answers only a sign-on without one.
    address: str = ""
    manufacturer: str = "EAG"
    #: Its baud character: the fastest speed it offers ("5": 9600).
    baud: str = "5"
    ident: str = "EDGE62056"
    #: The data lines of its readout, as sent (``"1.8.0(00012.345*kWh)"``).
    lines: list[str] = field(default_factory=list)
    #: Seconds between a message heard and its answer (the standard: 0.2 to 1.5).
    reaction: float = 0.02
    #: A dead meter hears nothing.
    alive: bool = True
    #: A meter that answers a sign-on whatever address it names.
    answers_any_address: bool = False
    #: The next readouts that get a wrong BCC, come garbled, or stop half-way.
    bad_bcc: int = 0
    garble: int = 0
    truncate: int = 0
    #: Every message heard, with its monotonic time.
    heard: list[tuple[float, bytes]] = field(default_factory=list)
    #: The speed the agent's port was set to when each data block went out (``None``: not
    #: observable, a port the caller holds).
    switched_to: list[int | None] = field(default_factory=list)
    #: Breaks heard.
    breaks: int = 0

    def identification(self) -> bytes:
        return f"/{self.manufacturer}{self.baud}{self.ident}".encode("ascii") + protocol.CRLF

    def answers(self, address: str) -> bool:
        if not self.alive:
            return False
        if self.answers_any_address or not address:
            return True
        return address.lstrip("0") == self.address.lstrip("0") != "" or address == self.address

    def data_block(self) -> bytes:
        """The data message, spoilt as the faults ask."""
        block = protocol.frame_block(self.lines)
        if self.bad_bcc:
            self.bad_bcc -= 1
            return block[:-1] + bytes([block[-1] ^ 0x5A])
        if self.garble:
            self.garble -= 1
            text = block[1:-2].replace(b"(", b"#").replace(b")", b"")
            body = text + bytes([protocol.ETX])
            return bytes([protocol.STX]) + body + bytes([protocol.bcc(body)])
        if self.truncate:
            self.truncate -= 1
            return block[: len(block) // 2]
        return block


class MeterBus:
    """Meters sharing a line: an async context manager serving them.

    Without ``path`` it opens a pseudo-terminal pair and the agent opens ``port``; with one,
    it serves a serial port the caller holds the other end of (speeds then unseen)."""

    def __init__(
        self, meters: Iterable[SimulatedMeter], path: str | None = None, sign_on_baud: int = 300
    ) -> None:
        self.meters = list(meters)
        self.sign_on_baud = sign_on_baud
        #: Messages heard at a speed other than the meters' (read as noise).
        self.noise: list[bytes] = []
        self._path = path
        self._fd = -1
        self._slave = -1
        self._port = path or ""
        self._heard = bytearray()
        self._session: tuple[SimulatedMeter, float] | None = None
        self._baud = sign_on_baud  # the speed the meters listen at
        self._pending: set[asyncio.TimerHandle] = set()

    @property
    def port(self) -> str:
        """The path the agent's bus opens."""
        return self._port

    async def __aenter__(self) -> MeterBus:
        if self._path is None:
            self._fd, self._slave = os.openpty()
            tty.setraw(self._slave)  # no echo, no line editing: bytes pass as they are
            self._port = os.ttyname(self._slave)
        else:
            self._fd = os.open(self._path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(self._fd)
        os.set_blocking(self._fd, False)
        asyncio.get_running_loop().add_reader(self._fd, self._readable)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._pending:
            handle.cancel()
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)
        if self._slave >= 0:
            os.close(self._slave)

    def meter(self, address: str) -> SimulatedMeter:
        return next(m for m in self.meters if m.address == address)

    def agent_baud(self) -> int | None:
        """The speed the agent's port is set to, when this end can see it (its own pty)."""
        if self._slave < 0:
            return None
        return _SPEEDS.get(termios.tcgetattr(self._fd)[5])

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._heard += os.read(self._fd, 4096)
        while True:
            message = self._next_message()
            if message is None:
                return
            agent = self.agent_baud()
            if agent is not None and agent != self._baud and not _switched_after(message, agent):
                self.noise.append(message)  # sent at another speed: garbage to the meters
                continue
            self._message(message)

    def _next_message(self) -> bytes | None:
        """The next whole message heard: a sign-on or option select (to CR LF), a break."""
        if self._heard.startswith(protocol.BREAK):
            del self._heard[: len(protocol.BREAK)]
            return protocol.BREAK
        end = self._heard.find(protocol.CRLF)
        if end < 0:
            return None
        message = bytes(self._heard[: end + 2])
        del self._heard[: end + 2]
        return message

    def _message(self, message: bytes) -> None:
        now = time.monotonic()
        if message == protocol.BREAK:
            if self._session is not None:
                self._session[0].breaks += 1
                self._session[0].heard.append((now, message))
            self._end_session()
            return
        start = message.find(b"/?")
        if start >= 0 and message.endswith(b"!\r\n"):
            self._sign_on(message[start + 2 : -3].decode("ascii", "replace"), now, message)
        elif message[:1] == bytes([protocol.ACK]) and self._session is not None:
            self._option_select(message, now)

    def _sign_on(self, address: str, now: float, message: bytes) -> None:
        answering = [m for m in self.meters if m.answers(address)]
        for meter in answering:
            meter.heard.append((now, message))
        if len(answering) > 1 and len({m.reaction for m in answering}) == 1:
            # several answer at once: their messages interleave
            mixed = _interleaved([m.identification() for m in answering])
            self._later(answering[0].reaction, mixed)
            self._session = None
        elif answering:
            # one after the other: the quickest holds the session, the others only answer
            answering.sort(key=lambda m: m.reaction)
            for late in answering[1:]:
                self._later(late.reaction, late.identification())
            meter = answering[0]
            self._session = (meter, now)
            self._later(meter.reaction, meter.identification())
            if meter.baud not in protocol.MODE_C_BAUDS:  # modes A and B: no option select
                self._send_block(meter, meter.reaction * 2, _mode_b_rate(meter.baud))

    def _option_select(self, message: bytes, now: float) -> None:
        assert self._session is not None
        meter, since = self._session
        meter.heard.append((now, message))
        text = message[1:-2].decode("ascii", "replace")
        offered = protocol.MODE_C_BAUDS.get(meter.baud, 300)
        rate = protocol.MODE_C_BAUDS.get(text[1:2]) if len(text) == 3 else None
        if now - since > SESSION_TIMEOUT or rate is None or rate > offered or text[2] != "0":
            self._end_session()  # not an option select this meter takes: silence
            return
        self._baud = rate  # the meter switches once the acknowledgement is in
        self._send_block(meter, meter.reaction, rate)

    def _send_block(self, meter: SimulatedMeter, delay: float, rate: int | None) -> None:
        def send() -> None:
            agent = self.agent_baud()
            meter.switched_to.append(agent)
            block = meter.data_block()
            if agent is not None and rate is not None and agent != rate:
                block = bytes(0x7F ^ b for b in block)  # heard at the wrong speed: noise
            self._write(block)
            self._end_session()

        if rate is not None:
            self._baud = rate
        self._schedule(delay, send)

    def _end_session(self) -> None:
        self._session = None
        self._baud = self.sign_on_baud

    def _later(self, delay: float, data: bytes) -> None:
        self._schedule(delay, lambda: self._write(data))

    def _schedule(self, delay: float, action: object) -> None:
        assert callable(action)
        handle: asyncio.TimerHandle

        def run() -> None:
            self._pending.discard(handle)
            action()

        handle = asyncio.get_running_loop().call_later(delay, run)
        self._pending.add(handle)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the agent's end closed: nobody to hear
            os.write(self._fd, data)


def _mode_b_rate(baud: str) -> int | None:
    return protocol.MODE_B_BAUDS.get(baud)


def _switched_after(message: bytes, agent: int) -> bool:
    """Whether ``message`` is an option select for the speed the agent's port is at now: it
    switches as soon as the acknowledgement is out, which can be before it is read here."""
    is_select = len(message) == 6 and message[0] == protocol.ACK
    return is_select and protocol.MODE_C_BAUDS.get(chr(message[2])) == agent


def _interleaved(messages: list[bytes]) -> bytes:
    """Messages sent at once by several meters, as the master hears them: mixed up."""
    mixed = bytearray()
    for position in range(max(len(m) for m in messages)):
        mixed += bytes(m[position] for m in messages if position < len(m))
    return bytes(mixed)
