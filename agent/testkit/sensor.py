"""A scripted serial sensor on a pseudo-terminal: lines out on a schedule, or in answer to a
command, for the ``serial-line`` and ``nmea`` drivers (or any that reads lines of text)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType

from agent.api.pty import PtyLink

from .aio import KitLoop

#: A reply: a line, several lines in turn (the last one repeated), or a function of the command.
Reply = str | bytes | Sequence[str | bytes] | Callable[[bytes], str | bytes | None]

AGENT, SENSOR = 0, 1


class _SensorLink(PtyLink):
    def __init__(self, sensor: SerialSensor) -> None:
        super().__init__()
        self.sensor = sensor

    def forward(self, index: int, data: bytes) -> None:
        if index == AGENT:
            self.sensor.hear(data)


class SerialSensor:
    """The far end of a serial cable, scripted by the test.

    The agent's ``[[bus]]`` of ``type = "serial"`` points at ``path`` (a link in ``directory``
    to a pseudo-terminal, or the pseudo-terminal itself; any baud rate works).
    ``answer(command, reply)`` answers each ``command`` the agent sends; ``every(seconds, *lines)``
    prints lines on a schedule, in turn; ``print(line)`` prints one now. Lines get ``terminator``
    (``"\\r\\n"`` by default; ``""`` sends bytes as given) unless they end with one.
    ``silent = True`` makes it answer nothing (a dead sensor); ``commands`` counts the commands it
    heard; ``heard`` keeps every byte the agent sent.

    With ``kit`` (the ``serial_sensor`` fixture) it runs on the kit's loop: ``start()``/``stop()``,
    usable from a plain test. Without, ``async with SerialSensor() as sensor`` serves it on the
    running loop, for an async test body (``await sensor.asked.wait()``).
    """

    def __init__(
        self,
        kit: KitLoop | None = None,
        directory: Path | None = None,
        name: str = "ttySENSOR",
        terminator: str = "\r\n",
    ) -> None:
        self.kit = kit
        self.directory = directory
        self.name = name
        self.terminator = terminator.encode()
        self.silent = False
        self.commands = 0
        self.heard = bytearray()
        #: Set at each command heard (on the sensor's loop: for async tests with no ``kit``).
        self.asked = asyncio.Event()
        self._pending = bytearray()
        self._answers: dict[bytes, list[bytes] | Callable[[bytes], str | bytes | None]] = {}
        self._link = _SensorLink(self)
        self._stack: AsyncExitStack | None = None

    @property
    def path(self) -> str:
        """The port the agent opens: a link ``name`` in ``directory``, else the pty itself."""
        if self.directory is not None:
            return str(self.directory / self.name)
        if not self._link.paths[AGENT]:
            raise RuntimeError("the sensor is not started")
        return self._link.paths[AGENT]

    async def __aenter__(self) -> SerialSensor:
        """Serve on the running loop (an async test without the kit's loop)."""
        await self._start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    def answer(self, command: str | bytes, reply: Reply) -> SerialSensor:
        """Answer ``command`` (e.g. ``"R\\r"``) with ``reply``: a line, a list of lines given in
        turn (the last one again and again), or ``f(command) -> line | None``."""
        key = command.encode() if isinstance(command, str) else bytes(command)
        if not key:
            raise ValueError("a command cannot be empty")
        if callable(reply):
            self._answers[key] = reply
        elif isinstance(reply, str | bytes):
            self._answers[key] = [self._line(reply)]
        else:
            if not reply:
                raise ValueError("give at least one reply")
            self._answers[key] = [self._line(r) for r in reply]
        return self

    def print(self, line: str | bytes) -> None:
        """Print ``line`` now (from any thread with the kit's loop; else on the sensor's loop)."""
        self._soon(self._print, self._line(line))

    def every(self, seconds: float, *lines: str | bytes) -> None:
        """Print ``lines`` in turn, one each ``seconds``, until the sensor stops."""
        if seconds <= 0 or not lines:
            raise ValueError("every() needs a positive period and at least one line")
        encoded = [self._line(line) for line in lines]
        self._soon(self._schedule, seconds, encoded)

    def start(self) -> SerialSensor:
        """Start serving on the kit's loop."""
        if self._stack is None:
            self._kit().call(self._start())
        return self

    def stop(self) -> None:
        if self._stack is not None:
            self._kit().call(self._close())

    def _kit(self) -> KitLoop:
        if self.kit is None:
            raise RuntimeError("a sensor without the kit's loop is used with `async with`")
        return self.kit

    def _soon(self, callback: Callable[..., object], *args: object) -> None:
        if self.kit is not None:
            self.kit.call_soon(callback, *args)
        else:
            callback(*args)

    async def _start(self) -> None:
        stack = AsyncExitStack()
        await stack.enter_async_context(self._link)
        self._stack = stack
        if self.directory is not None:
            link = self.directory / self.name
            link.unlink(missing_ok=True)
            link.symlink_to(self._link.paths[AGENT])

    async def _close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        if self.directory is not None:
            (self.directory / self.name).unlink(missing_ok=True)

    def _schedule(self, seconds: float, lines: list[bytes]) -> None:
        assert self._stack is not None, "the sensor is not started"
        task = asyncio.get_running_loop().create_task(self._every(seconds, lines))
        self._stack.push_async_callback(_cancel, task)

    async def _every(self, seconds: float, lines: list[bytes]) -> None:
        index = 0
        while True:
            await asyncio.sleep(seconds)
            self._print(lines[index % len(lines)])
            index += 1

    def _line(self, line: str | bytes) -> bytes:
        data = line.encode() if isinstance(line, str) else bytes(line)
        return data if data.endswith(self.terminator) else data + self.terminator

    def _print(self, data: bytes) -> None:
        if not self.silent:
            self._link.deliver(AGENT, data)

    def hear(self, data: bytes) -> None:
        """Take bytes the agent sent: keep them in ``heard``, answer the commands among them."""
        self.heard += data
        self._pending += data
        while True:
            found = [(self._pending.find(c), c) for c in self._answers if c in self._pending]
            if not found:
                break
            at, command = min(found)
            del self._pending[: at + len(command)]
            self.commands += 1
            self.asked.set()
            reply = self._reply(command)
            if reply is not None:
                self._print(reply)
        if len(self._pending) > 4096:  # noise nobody asked for: keep the tail only
            del self._pending[:-256]

    def _reply(self, command: bytes) -> bytes | None:
        script = self._answers[command]
        if callable(script):
            answer = script(command)
            return None if answer is None else self._line(answer)
        return script.pop(0) if len(script) > 1 else script[0]


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task})
