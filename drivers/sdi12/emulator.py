"""SDI-12 sensors emulated at the far end of a serial line (a pseudo-terminal), for tests and rigs.

Each ``SimulatedSensor`` answers the commands addressed to it as a sensor on the wire would:
``a!``, ``aI!``, ``aAb!``, ``aM!``/``aMn!``/``aMC!``/``aMCn!`` (announcing a wait, with an optional
early service request), ``aD0!``…``aD9!`` (values split across answers the way the standard's
35-character limit splits them, with the CRC when asked), and ``?!``. With ``echo=True`` the bus
behaves like a plain UART adapter's single wire: the agent hears a NUL (its own break) and its
own command before every answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

from . import protocol

#: The longest value part of an answer to ``aDn!`` after ``aM!`` (the standard's limit).
VALUES_PER_ANSWER = 35


@dataclass
class SimulatedSensor:
    """One sensor on the bus, and the faults a test can give it."""

    address: str
    #: Values per measurement name ("M", "M1", … — the CRC variants read the same values).
    measurements: dict[str, list[float]] = field(default_factory=dict)
    #: Seconds announced in ``atttn`` before the values are ready.
    wait: int = 0
    #: Seconds until the service request; ``None``: none is sent (the agent waits ``wait``).
    ready_after: float | None = 0.0
    vendor: str = "EDGEAGNT"
    model: str = "SIM12"
    firmware: str = "100"
    serial: str = "0001"
    #: A dead sensor hears nothing.
    alive: bool = True
    #: The next answers that get a wrong CRC, and that come garbled.
    spoil_crc: int = 0
    garble: int = 0
    #: Every command heard, with its monotonic time.
    heard: list[tuple[float, str]] = field(default_factory=list)
    _data: list[str] = field(default_factory=list)
    _crc: bool = False
    _service: asyncio.TimerHandle | None = None

    def schedule_service_request(self, delay: float, send: Callable[[str], None]) -> None:
        """Have ``send`` say the service request (the address, a line end) in ``delay`` seconds."""
        self._service = asyncio.get_running_loop().call_later(delay, send, f"{self.address}\r\n")

    def cancel_service_request(self) -> None:
        """Drop the service request still to come, if any (a break ends the measurement)."""
        if self._service is not None:
            self._service.cancel()
            self._service = None

    def identification(self) -> str:
        return (
            f"{self.address}14{self.vendor:<8.8}{self.model:<6.6}{self.firmware:<3.3}{self.serial}"
        )

    def answer(self, body: str) -> str | None:
        """The answer to command ``body`` (without address and ``!``), None for silence."""
        a = self.address
        if body == "":
            return a
        if body == "I":
            return self.identification()
        if body.startswith("A") and len(body) == 2 and body[1] in protocol.ADDRESSES:
            self.address = body[1]
            return self.address
        if body in protocol.MEASUREMENTS:
            return self._measure(body)
        if body in protocol.DATA_COMMANDS:
            return self._data_answer(int(body[1]))
        return None

    def _measure(self, name: str) -> str:
        values = self.measurements.get(name.replace("C", ""), [])
        self._crc = "C" in name
        self._data = protocol.format_values(values, VALUES_PER_ANSWER)
        return f"{self.address}{self.wait:03d}{len(values)}"

    def _data_answer(self, index: int) -> str:
        body = self.address + (self._data[index] if index < len(self._data) else "")
        if not self._crc:
            return body
        crc = protocol.crc_text(body)
        if self.spoil_crc:
            self.spoil_crc -= 1
            crc = crc[:2] + chr(0x40 | ((ord(crc[2]) + 1) & 0x3F))
        return body + crc


class Sdi12Bus:
    """Sensors sharing the line at ``path``: an async context manager serving them."""

    def __init__(
        self, path: str, sensors: Iterable[SimulatedSensor], echo: bool = True, echo_end: str = ""
    ) -> None:
        self.path = path
        self.sensors = list(sensors)
        self.echo = echo
        #: What follows the echo: nothing on a real wire; some adapters end it with a line end.
        self.echo_end = echo_end
        self._heard = bytearray()
        self._fd = -1

    async def __aenter__(self) -> Sdi12Bus:
        self._fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd)
        asyncio.get_running_loop().add_reader(self._fd, self._readable)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sensor in self.sensors:
            sensor.cancel_service_request()
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)

    def sensor(self, address: str) -> SimulatedSensor:
        return next(s for s in self.sensors if s.address == address)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._heard += os.read(self._fd, 4096)
        while b"!" in self._heard:
            end = self._heard.index(b"!") + 1
            raw = bytes(self._heard[:end])
            del self._heard[:end]
            self._command(raw.decode("ascii", "replace").lstrip("\x00"))

    def _command(self, command: str) -> None:
        if self.echo:
            self._send("\x00" + command + self.echo_end)  # the break and the command, heard back
        now = time.monotonic()
        # A break and a command end any measurement in progress (its service request with it).
        for sensor in self.sensors:
            sensor.cancel_service_request()
        alive = [s for s in self.sensors if s.alive]
        if command == "?!":
            for sensor in alive:
                sensor.heard.append((now, command))
            if len(alive) == 1:
                self._answer(alive[0], alive[0].address)
            elif alive:  # several answering at once collide into garbage
                self._send("\x7f\x03\r\n")
            return
        for sensor in alive:
            if command[:1] == sensor.address:
                sensor.heard.append((now, command))
                answer = sensor.answer(command[1:-1])
                if answer is not None:
                    self._answer(sensor, answer)
                    if command[1:-1] in protocol.MEASUREMENTS:
                        self._schedule_service_request(sensor)
                return

    def _answer(self, sensor: SimulatedSensor, answer: str) -> None:
        if sensor.garble:
            sensor.garble -= 1
            answer = "#" + answer[1:]
        self._send(answer + "\r\n")

    def _schedule_service_request(self, sensor: SimulatedSensor) -> None:
        if sensor.wait and sensor.ready_after is not None:
            sensor.schedule_service_request(sensor.ready_after, self._send)

    def _send(self, text: str) -> None:
        with contextlib.suppress(OSError):  # the agent's end closed: nobody to hear
            os.write(self._fd, text.encode("ascii"))
