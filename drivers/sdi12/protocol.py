"""SDI-12 as text: the commands, the shapes of the answers, and the CRC of the ``aMC!`` family.

Pure functions, shared by the driver and the sensor emulator, so that both speak the same
protocol and each can be tested against the other. SDI-12 v1.4, the parts a data logger uses:
``?!`` ``a!`` ``aI!`` ``aM!`` ``aM1!``…``aM9!`` ``aMC!`` ``aMC1!``…``aMC9!`` ``aD0!``…``aD9!``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

#: The addresses a sensor may have: 0-9 (standard), then a-z and A-Z (extended).
ADDRESSES = string.digits + string.ascii_lowercase + string.ascii_uppercase
#: The measurements a point may name: plain, numbered additional ones, and their CRC variants.
MEASUREMENTS = tuple(f"M{crc}{n}" for crc in ("", "C") for n in ("", *"123456789"))
#: The data commands that follow a measurement, in order.
DATA_COMMANDS = tuple(f"D{n}" for n in range(10))
#: One value in a data answer: a mandatory sign, up to 7 digits and an optional decimal point.
VALUE = re.compile(r"[+-](?:\d+\.?\d*|\.\d+)")
_MEASUREMENT_ANSWER = re.compile(r"(?P<address>.)(?P<seconds>\d{3})(?P<count>\d{1,2})")


class ProtocolError(ValueError):
    """An answer that is not what the command calls for (garbled, or from another sensor)."""


class CrcError(ProtocolError):
    """An answer whose CRC does not match: spoilt on the wire."""


def command(address: str, body: str) -> bytes:
    """The bytes of command ``body`` (``"M1"``, ``"D0"``, ``"I"``…) to the sensor at ``address``."""
    return f"{address}{body}!".encode("ascii")


def crc16(data: bytes) -> int:
    """CRC-16/ARC (polynomial 0xA001 reflected, initial value 0), as SDI-12 specifies."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def crc_text(body: str) -> str:
    """The three characters that carry ``body``'s CRC: six bits each, offset by 0x40."""
    crc = crc16(body.encode("ascii", "replace"))
    return "".join(chr(0x40 | part) for part in (crc >> 12, (crc >> 6) & 0x3F, crc & 0x3F))


def strip_crc(answer: str) -> str:
    """``answer`` without its three CRC characters; ``ProtocolError`` when they do not match."""
    if len(answer) < 4:
        raise ProtocolError(f"{answer!r} is too short to carry a CRC")
    body, sent = answer[:-3], answer[-3:]
    if crc_text(body) != sent:
        raise CrcError(f"CRC mismatch in {answer!r} (expected {crc_text(body)!r})")
    return body


def measurement_answer(address: str, answer: str) -> tuple[int, int]:
    """``atttn`` (the answer to ``aM!``): seconds until the values are ready, and their count."""
    match = _MEASUREMENT_ANSWER.fullmatch(answer)
    if match is None:
        raise ProtocolError(f"{answer!r} is not a measurement answer (atttn)")
    _check_address(address, match["address"], answer)
    return int(match["seconds"]), int(match["count"])


def data_values(address: str, answer: str) -> list[float]:
    """The values of a data answer ``a+1.23-4.5``: none when the sensor has no (more) data."""
    _check_address(address, answer[:1], answer)
    rest = answer[1:]
    values = VALUE.findall(rest)
    if "".join(values) != rest:
        raise ProtocolError(f"{answer!r} is not a data answer (a+v-v…)")
    return [float(v) for v in values]


def _check_address(expected: str, got: str, answer: str) -> None:
    if got != expected:
        raise ProtocolError(f"{answer!r} came from address {got!r}, not {expected!r}")


@dataclass(frozen=True)
class Identification:
    """What ``aI!`` tells: ``allccccccccmmmmmmvvvxxx…``."""

    version: str  # SDI-12 version, "1.4"
    vendor: str
    model: str
    firmware: str
    serial: str

    @classmethod
    def parse(cls, address: str, answer: str) -> Identification:
        """Lenient: a sensor that fills its fields oddly is still the sensor at ``address``."""
        _check_address(address, answer[:1], answer)
        return cls(
            version=f"{answer[1]}.{answer[2]}",
            vendor=answer[3:11].strip(),
            model=answer[11:17].strip(),
            firmware=answer[17:20].strip(),
            serial=answer[20:].strip(),
        )

    def __str__(self) -> str:
        serial = f", serial {self.serial}" if self.serial else ""
        return f"{self.vendor} {self.model} v{self.firmware}{serial} (SDI-12 {self.version})"


def format_values(values: list[float], limit: int) -> list[str]:
    """``values`` as the value parts of successive data answers, each at most ``limit``
    characters (35 after ``aM!``, 75 after ``aC!``): what a sensor sends to ``aD0!``, ``aD1!``…"""
    parts: list[str] = []
    current = ""
    for value in values:
        text = f"{value:+.7g}"  # SDI-12 allows 7 digits
        if current and len(current) + len(text) > limit:
            parts.append(current)
            current = ""
        current += text
    if current:
        parts.append(current)
    return parts
