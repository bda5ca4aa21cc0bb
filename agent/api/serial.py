"""A serial port read and written line by line through the event loop, for the drivers of
``serial`` buses (``serial-line``, ``nmea``, ``sdi12``), and frame by frame for binary protocols
(``dlt645``) or block by block (``iec62056``, which also switches speed mid-conversation).

pyserial's non-blocking descriptor is waited on with the loop's reader and a timer rather than a
thread doing blocking reads: a cancelled poll then really stops (no thread left blocked on the
port until its timeout, holding it), and awaiting one future cannot lose a cancellation the way
``asyncio.wait_for`` can before Python 3.12.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import termios
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import serial  # type: ignore[import-untyped]

from ..errors import BusError
from .config import BusConfig, DeviceConfig
from .driver import DriverContext

_Self = TypeVar("_Self", bound="SerialDriver")

#: The longest line kept: a sensor printing garbage without line ends cannot fill the memory.
MAX_LINE = 4096
#: What a port says when it cannot be held in break (TIOCSBRK): some USB adapters' drivers, and
#: qemu's user-mode emulation of an ARM gateway. tcsendbreak's timed break (TCSBRK) still works.
_NO_BREAK_CONTROL = {errno.ENOSYS, errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP}

_log = logging.getLogger(__name__)


def line_settings_problem(bus: BusConfig, exc: BaseException) -> str:
    """One line for a technician when ``bus``'s port refused its line settings (``exc``): which
    setting the port refuses, found by trying each alone, and the fix."""
    reason = _reason(exc)
    refused = refused_line_setting(bus)
    if refused is None:
        return (
            f"bus {bus.name}: {bus.serial_port} refuses the line settings "
            f"{bus.baudrate} {bus.bytesize}{bus.parity}{bus.stopbits} ({reason}): set the "
            "bus's baudrate, bytesize, parity and stopbits to what the adapter supports"
        )
    key, value = refused
    return (
        f"bus {bus.name}: {bus.serial_port} refuses {key} = {value!r} ({reason}): the adapter "
        f"cannot do it; set the bus's {key} to one it supports (and the devices to match)"
    )


class LineSettingsProblem:
    """``line_settings_problem`` asked once per distinct error: a port that refuses its
    settings at every reconnect is not probed (its lines toggled) at every reconnect."""

    def __init__(self, bus: BusConfig) -> None:
        self.bus = bus
        self._said: tuple[str, str] = ("", "")

    def __call__(self, exc: BaseException) -> str:
        if self._said[0] != str(exc):
            self._said = (str(exc), line_settings_problem(self.bus, exc))
        return self._said[1]


def refused_line_setting(bus: BusConfig) -> tuple[str, object] | None:
    """The first of the bus's line settings the port refuses on its own, or ``None`` (the port
    cannot be opened, another program holds it, or it refuses only the combination).

    Tried on the port's own settings, one change at a time, with termios directly, and put
    back as they were: a port in use by no one is left as it was found."""
    try:
        fd = os.open(bus.serial_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # never a port another program holds
        found = termios.tcgetattr(fd)
    except (OSError, termios.error):
        os.close(fd)
        return None
    try:
        for key, change in _setting_changes(bus):
            try:
                termios.tcsetattr(fd, termios.TCSANOW, change(list(found)))
            except termios.error:
                return key, getattr(bus, key)
        return None
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSANOW, found)
        os.close(fd)


_Attrs = list[Any]


def _setting_changes(bus: BusConfig) -> list[tuple[str, Callable[[_Attrs], _Attrs]]]:
    """Each line setting of ``bus`` as a change to termios attributes (``[iflag, oflag,
    cflag, lflag, ispeed, ospeed, cc]``)."""

    def cflag(mask: int, bits: int) -> Callable[[_Attrs], _Attrs]:
        def change(attrs: _Attrs) -> _Attrs:
            attrs[2] = attrs[2] & ~mask | bits
            return attrs

        return change

    def speed(attrs: _Attrs) -> _Attrs:
        attrs[4] = attrs[5] = getattr(termios, f"B{bus.baudrate}")
        return attrs

    parity = {"N": 0, "E": termios.PARENB, "O": termios.PARENB | termios.PARODD}[bus.parity]
    changes = [
        ("bytesize", cflag(termios.CSIZE, termios.CS7 if bus.bytesize == 7 else termios.CS8)),
        ("parity", cflag(termios.PARENB | termios.PARODD, parity)),
        ("stopbits", cflag(termios.CSTOPB, termios.CSTOPB if bus.stopbits == 2 else 0)),
    ]
    if hasattr(termios, f"B{bus.baudrate}"):  # a rate outside the table: pyserial's own way
        changes.insert(0, ("baudrate", speed))
    return changes


def is_line_settings_error(exc: BaseException) -> bool:
    """Whether opening a port failed on its line settings (termios refused them), not on the
    port itself (gone, busy, no permission)."""
    return isinstance(exc, termios.error) or (
        isinstance(exc, serial.SerialException) and "Could not configure port" in str(exc)
    )


def _reason(exc: BaseException) -> str:
    args: tuple[object, ...] = exc.args
    if len(args) == 2 and isinstance(args[1], str):  # termios.error(errno, text)
        return args[1]
    return str(exc) or type(exc).__name__


def line_timeout(bus: BusConfig, device: DeviceConfig) -> float:
    """How long a device's poll waits for its line: its ``line_timeout``, else the bus timeout."""
    return float(device.options.get("line_timeout", bus.timeout))


class LinePort:
    """The port of one ``serial`` bus: ``open``, then ``write`` and ``read_line`` per poll."""

    def __init__(self, bus: BusConfig) -> None:
        self.bus = bus
        self._settings_problem = LineSettingsProblem(bus)
        self._port: serial.Serial | None = None
        self._buffer = bytearray()
        self._last_byte = 0.0  # monotonic time the last byte arrived
        self._timed_break = False  # the port cannot hold a break: tcsendbreak's timed one

    def open(self) -> None:
        """Open the port exclusively; ``BusError`` naming the port when that fails."""
        if self._port is not None:
            return
        try:
            # Opening configures the line with a few ioctls: quick, so done in the loop (a
            # thread could outlive a cancelled connect and hold the port). An adapter that
            # refuses the line settings (7 data bits on some chips) fails in termios.
            port = serial.Serial(
                port=self.bus.serial_port,
                baudrate=self.bus.baudrate,
                parity=self.bus.parity,
                stopbits=self.bus.stopbits,
                bytesize=self.bus.bytesize,
                timeout=0,
                exclusive=True,  # a second program on the line would steal half the answers
            )
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            if is_line_settings_error(exc):
                raise BusError(self._settings_problem(exc)) from exc
            raise BusError(
                f"bus {self.bus.name}: cannot open {self.bus.serial_port}: {exc}"
            ) from exc
        # pyserial leaves the descriptor non-blocking; made sure of, since every read and write
        # goes through the event loop and must never block it.
        os.set_blocking(port.fileno(), False)
        self._port = port
        self._buffer.clear()

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            # an unplugged adapter: nothing left to close
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def discard_stale(self, timeout: float) -> None:
        """Throw away what arrived between polls, so an old line is not taken for this poll's.

        A partial line that is still coming in is kept: it is the start of the next line. One
        that stopped arriving longer ago than ``timeout`` is a fragment, and goes too.
        """
        self._receive()
        end = max(self._buffer.rfind(b"\n"), self._buffer.rfind(b"\r"))
        del self._buffer[: end + 1]
        if self._buffer and time.monotonic() - self._last_byte > timeout:
            self._buffer.clear()

    async def send_break(self, duration: float, marking: float) -> None:
        """Hold the line in break for ``duration`` seconds, then marking for ``marking`` (SDI-12's
        wake-up). A pseudo-terminal takes the break as a no-op. A port that cannot be held in
        break gets the kernel's timed break instead, longer than SDI-12 asks (sensors wake at
        12 ms or more), said once."""
        port = self._port
        if port is None:
            raise BusError(f"bus {self.bus.name}: {self.bus.serial_port} is not open")
        try:
            if not self._timed_break:
                try:
                    port.break_condition = True
                except OSError as exc:
                    if exc.errno not in _NO_BREAK_CONTROL:
                        raise
                    self._timed_break = True
                    _log.warning(
                        "bus %s: %s cannot hold a break (%s): waking sensors with the kernel's "
                        "timed break (0.25 to 0.5 s) instead",
                        self.bus.name,
                        self.bus.serial_port,
                        exc.strerror or exc,
                    )
            if self._timed_break:
                # tcsendbreak blocks for the whole break: in a thread, not in the loop.
                await asyncio.to_thread(termios.tcsendbreak, port.fileno(), 0)
            else:
                try:
                    await asyncio.sleep(duration)
                finally:
                    port.break_condition = False
        except (serial.SerialException, OSError, termios.error) as exc:
            raise BusError(f"bus {self.bus.name}: {self.bus.serial_port}: {exc}") from exc
        await asyncio.sleep(marking)

    async def set_baudrate(self, baudrate: int) -> None:
        """Switch the port to ``baudrate`` once what was written has left it (``tcdrain``, in a
        thread: it blocks until the last byte is out): a protocol that changes speed
        mid-conversation (IEC 62056-21's option select) must not cut its own message off. A
        pseudo-terminal accepts any rate and ignores it."""
        port = self._port
        if port is None:
            raise BusError(f"bus {self.bus.name}: {self.bus.serial_port} is not open")
        if port.baudrate == baudrate:
            return
        try:
            await asyncio.to_thread(termios.tcdrain, port.fileno())
            port.baudrate = baudrate
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            raise BusError(
                f"bus {self.bus.name}: {self.bus.serial_port} refuses baudrate = {baudrate}: {exc}"
            ) from exc

    async def read_bytes(self, deadline: float) -> bytes:
        """The bytes received and not yet read, or the next that arrive, as they are: for a
        framed answer whose end is not a line end (a block check character after ETX can be
        any byte); ``TimeoutError`` at ``deadline``."""
        while True:
            if self._buffer or self._receive(trim=False):
                data = bytes(self._buffer)
                self._buffer.clear()
                return data
            await self._wait(deadline, writing=False)
            if not self._receive(trim=False):
                raise BusError(f"bus {self.bus.name}: {self.bus.serial_port} hung up")
            # the loop returns what arrived

    async def read_line(self, terminator: bytes, deadline: float) -> str:
        """The next non-empty line, decoded, without its terminator (nor a ``\\r`` before it);
        ``TimeoutError`` at ``deadline``."""
        while True:
            at = self._buffer.find(terminator)
            if at >= 0:
                raw = bytes(self._buffer[:at])
                del self._buffer[: at + len(terminator)]
                line = raw.decode("utf-8", "replace").strip("\r\n")
                if line:  # a bare "\r\n" between answers carries nothing
                    return line
                continue
            if self._receive():
                continue
            await self._wait(deadline, writing=False)
            if not self._receive():
                # Readable yet nothing to read: the end of file of a port that hung up (an
                # adapter unplugged); the scheduler reconnects on a BusError.
                raise BusError(f"bus {self.bus.name}: {self.bus.serial_port} hung up")

    async def read_frame(self, frame_size: Callable[[bytes], int | None], deadline: float) -> bytes:
        """The next frame of a binary protocol, cut by ``frame_size(data)``: the length of the
        frame at the start of ``data``, 0 while more bytes are needed to tell, ``None`` when no
        frame starts there (that byte is noise, and dropped); ``TimeoutError`` at ``deadline``."""
        while True:
            size = frame_size(bytes(self._buffer)) if self._buffer else 0
            if size is None:
                del self._buffer[:1]
                continue
            if size and len(self._buffer) >= size:
                frame = bytes(self._buffer[:size])
                del self._buffer[:size]
                return frame
            if self._receive():
                continue
            await self._wait(deadline, writing=False)
            if not self._receive():
                raise BusError(f"bus {self.bus.name}: {self.bus.serial_port} hung up")

    async def write(self, data: bytes, deadline: float) -> None:
        while data:
            try:
                sent = os.write(self._fd(), data)
            except BlockingIOError:
                await self._wait(deadline, writing=True)
                continue
            except OSError as exc:
                raise BusError(f"bus {self.bus.name}: {self.bus.serial_port}: {exc}") from exc
            data = data[sent:]

    def _fd(self) -> int:
        if self._port is None:
            raise BusError(f"bus {self.bus.name}: {self.bus.serial_port} is not open")
        return int(self._port.fileno())

    def _receive(self, trim: bool = True) -> bool:
        """Take whatever the port holds into the buffer; False when there was nothing. With
        ``trim``, only the last ``MAX_LINE`` bytes are kept (lines); without, all of it (a
        block the caller takes whole at once)."""
        got = False
        while True:
            try:
                data = os.read(self._fd(), 4096)
            except BlockingIOError:
                return got
            except OSError as exc:
                raise BusError(f"bus {self.bus.name}: {self.bus.serial_port}: {exc}") from exc
            if not data:  # a tty in raw mode with VMIN=0 reads nothing rather than EAGAIN
                return got
            got = True
            self._last_byte = time.monotonic()
            self._buffer += data
            if trim and len(self._buffer) > MAX_LINE:
                del self._buffer[:-MAX_LINE]

    async def _wait(self, deadline: float, *, writing: bool) -> None:
        """Until the port is readable (or writable), or raise TimeoutError at ``deadline``."""
        loop = asyncio.get_running_loop()
        fd = self._fd()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        def expire() -> None:
            if not ready.done():
                ready.set_exception(TimeoutError())

        add, remove = (
            (loop.add_writer, loop.remove_writer)
            if writing
            else (loop.add_reader, loop.remove_reader)
        )
        add(fd, wake)
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), expire)
        try:
            await ready
        finally:
            timer.cancel()
            remove(fd)


class SerialDriver:
    """Base of the drivers of ``serial`` buses: the bus's ``LinePort``, opened on entering and
    closed on leaving, and the checks of the bus they all make."""

    bus_types: ClassVar[tuple[str, ...]] = ("serial",)
    #: The name configurations give the driver, for messages.
    driver_name: ClassVar[str] = ""

    def __init__(self, bus: BusConfig, context: DriverContext | None = None) -> None:
        self.bus = bus
        self.context = context or DriverContext()
        self._line = LinePort(bus)

    @classmethod
    def bus_problems(cls, bus: BusConfig) -> list[tuple[str, str]]:
        if bus.type not in cls.bus_types:
            return [(f"bus.{bus.name}.type", f'{cls.driver_name} devices need type = "serial"')]
        if not bus.serial_port:
            return [(f"bus.{bus.name}.port", "is required: the serial port's path")]
        return []

    async def __aenter__(self: _Self) -> _Self:
        self._line.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._line.close()
