"""Serial rigs: connected pseudo-terminal pairs, and a proxy that corrupts RTU frames.

Both are built on ``agent.api.pty.PtyLink``: two ``os.openpty()`` pairs whose master
ends the event loop copies into each other. That was chosen over ``socat PTY,link=…`` because it
needs no process to start, wait for and stop, works wherever Python does, and the copying is where
a proxy can meddle with the frames. pyserial opens either path at any baud rate (a pty stores the
line settings, ``termios`` reports them back, but does not pace the bytes).

Unplugging an adapter is the agent's port path disappearing: the agent's end is a symlink (like
``/dev/serial/by-id/…``) to a pseudo-terminal; ``unplug()`` closes that pseudo-terminal, so an
open port fails as a USB adapter's does, and removes the link; ``replug()`` links the path to a
fresh one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Literal

from pymodbus.framer import FramerRTU

from agent import registry
from agent.api import FramesLine
from agent.api.pty import PtyLink

#: What ``SerialProxy.corrupt`` can do to a slave's answer.
Fault = Literal["crc", "truncate", "unit", "drop"]
FAULTS: tuple[Fault, ...] = ("crc", "truncate", "unit", "drop")

AGENT, DEVICE = 0, 1  # the two ends of a proxy


@asynccontextmanager
async def pty_pair() -> AsyncIterator[tuple[str, str]]:
    """Two pseudo-terminal paths wired to each other like two serial ports on one cable."""
    async with PtyLink() as link:
        yield link.paths


class SerialProxy(PtyLink):
    """Sits between the agent's port (``agent_path``) and the slaves' port (``device_path``).

    Requests pass as whole frames (split by the RTU length rules); answers pass as their bytes
    come (a slave that drips its answer drips it on the agent's side too), except one to be
    spoilt, held until it is whole: ``corrupt(fault, n)`` spoils the next ``n`` answers from the
    slaves, ``unit_faults[unit] = fault`` every answer from that unit until it is removed (the
    queued faults go first). Frames are counted in ``passed``, ``requests`` and ``replies``.
    """

    def __init__(
        self,
        directory: Path,
        name: str = "ttyUSB0",
        *,
        slaves_link: Path | None = None,
        frames: FramesLine | None = None,
    ) -> None:
        super().__init__()
        self.agent_path = directory / name
        #: A link to the slaves' end too, when its path must be known before the start.
        self.slaves_link = slaves_link
        #: Where a frame ends: Modbus RTU's rules unless told otherwise.
        self.frames = frames or _modbus_rtu()
        self.passed = 0  # frames handed on, either way (spoilt ones too, dropped ones not)
        self.requests = 0  # frames from the agent
        self.replies = 0  # frames from the slaves
        self._faults: list[Fault] = []
        self.unit_faults: dict[int, Fault] = {}
        self._buffers = (bytearray(), bytearray())
        self._holding = False  # the answer coming is held back, to be spoilt once whole

    @property
    def device_path(self) -> str:
        return self.paths[DEVICE]

    @property
    def faults_pending(self) -> int:
        return len(self._faults)

    async def __aenter__(self) -> SerialProxy:
        await super().__aenter__()
        self._link()
        if self.slaves_link is not None:
            _replace_link(self.slaves_link, self.device_path)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.agent_path.unlink(missing_ok=True)
        if self.slaves_link is not None:
            self.slaves_link.unlink(missing_ok=True)
        await super().__aexit__(exc_type, exc, tb)

    def corrupt(self, fault: Fault, count: int = 1) -> None:
        """Spoil the next ``count`` answers: flip a CRC byte, cut the frame short, make it come
        from the next unit id (with a good CRC), or drop it."""
        self._faults.extend([fault] * count)

    def unplug(self) -> None:
        """The adapter goes: the agent's open port fails and its path disappears."""
        self.close_end(AGENT)
        self.agent_path.unlink(missing_ok=True)
        self._buffers[AGENT].clear()

    def replug(self) -> None:
        """The adapter comes back, as a fresh port at the same path."""
        self.open_end(AGENT)
        self._link()

    def forward(self, index: int, data: bytes) -> None:
        if index == AGENT:
            self._forward_request(data)
        else:
            self._forward_answer(data)

    def _forward_request(self, data: bytes) -> None:
        self._end_answer()
        buffer = self._buffers[AGENT]
        buffer += data
        for frame in _split(buffer, self.frames, request=True):
            self.requests += 1
            self.passed += 1
            self.deliver(DEVICE, frame)

    def _forward_answer(self, data: bytes) -> None:
        buffer = self._buffers[DEVICE]
        if not buffer:  # an answer starts: its first byte is the unit id
            self._holding = bool(self._faults) or data[0] in self.unit_faults
        if not self._holding:
            self.deliver(AGENT, data)
        buffer += data
        for frame in _split(buffer, self.frames, request=False):
            self.replies += 1
            if not self._holding:
                self.passed += 1  # on its way already
                continue
            passing = self._spoil(frame)
            if passing is not None:
                self.passed += 1
                self.deliver(AGENT, passing)

    def _end_answer(self) -> None:
        """A request means the answer before it is over: what is left of it (bytes of no whole
        frame: noise, an answer cut short) is not split with the next one. It passed on already,
        unless it was held to be spoilt: then it is lost, and the fault waits for a whole one."""
        self._buffers[DEVICE].clear()

    def _spoil(self, frame: bytes) -> bytes | None:
        fault = self._faults.pop(0) if self._faults else self.unit_faults.get(frame[0])
        if fault is None:
            return frame
        if fault == "crc":
            return frame[:-1] + bytes([frame[-1] ^ 0xFF])
        if fault == "truncate":
            return frame[: max(2, len(frame) - 3)]
        if fault == "unit":
            body = bytes([frame[0] % 247 + 1]) + frame[1:-2]
            return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")
        return None  # drop

    def _link(self) -> None:
        _replace_link(self.agent_path, self.paths[AGENT])


def _replace_link(link: Path, target: str) -> None:
    """``link`` pointing at ``target``, replaced in one step as udev does, so that the path
    never points nowhere."""
    temporary = link.with_name(link.name + ".new")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, link)


def _modbus_rtu() -> FramesLine:
    driver = registry.load_driver("modbus")
    assert isinstance(driver, FramesLine), "the modbus driver frames RTU lines"
    return driver


def _split(buffer: bytearray, frames: FramesLine, *, request: bool) -> list[bytes]:
    """Take the complete frames off the front of ``buffer``; bytes of no known layout go whole."""
    found: list[bytes] = []
    while buffer:
        size = frames.frame_size(bytes(buffer), request)
        if size is None:
            size = len(buffer)
        elif size == 0 or len(buffer) < size:
            break
        found.append(bytes(buffer[:size]))
        del buffer[:size]
    return found
