"""IEC 62056-21 (formerly IEC 61107) direct local data exchange, as bytes and text: the messages a
master sends, the identification a meter answers, the data block and its block check character
(BCC), and the OBIS identifiers of its data lines.

Pure functions, shared by the driver and the meter emulator. Mode C data readout, as the
standard draws it::

    master  /?[address]!CR LF                      at 300 baud (7E1)
    meter   /XXXZ[\\W]ident CR LF                   XXX manufacturer, Z baud character
    master  ACK V Z Y CR LF                        V '0' normal, Z the baud, Y '0' readout
            (both switch to Z's baud; the meter answers 200-1500 ms later)
    meter   STX data lines... ! CR LF ETX BCC      BCC: XOR of every byte after STX, ETX included

Modes A and B (a baud character outside ``0``-``6``) send the data block without an option
select: mode B at the speed its letter names, mode A at the sign-on speed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SOH = 0x01
STX = 0x02
ETX = 0x03
ACK = 0x06
CRLF = b"\r\n"
#: Mode C's baud characters and the speeds they name.
MODE_C_BAUDS = {"0": 300, "1": 600, "2": 1200, "3": 2400, "4": 4800, "5": 9600, "6": 19200}
#: Mode B's (G, H and I are reserved: read as the sign-on speed).
MODE_B_BAUDS = {"A": 600, "B": 1200, "C": 2400, "D": 4800, "E": 9600, "F": 19200}
#: The speeds a bus or ``max_baudrate`` may name.
BAUD_RATES = tuple(MODE_C_BAUDS.values())
#: The longest device address of a sign-on.
MAX_ADDRESS = 32
#: The break (SOH B0 ETX BCC): a meter that gets it ends its session and waits for a sign-on.
BREAK = b"\x01B0\x03q"

_IDENTIFICATION = re.compile(r"/(?P<maker>[A-Za-z]{3})(?P<baud>[!-~])(?P<ident>[ -~]*)")
_ENHANCED = re.compile(r"\\(.)")
#: An OBIS identifier as data lines write it: ``[A-B:]C.D.E[*F|&F]`` (``1-0:1.8.0*255``,
#: ``1.8.0``, ``0.9.1``, ``F.F``, ``C.1.0``, ``1.8.0&01``); C, D and E may be letters (VDEW).
_OBIS = re.compile(
    r"(?:(?P<a>[0-9A-Za-z]{1,3})-(?P<b>[0-9A-Za-z]{1,3}):)?"
    r"(?P<cde>[0-9A-Za-z]{1,3}(?:\.[0-9A-Za-z]{1,3}){0,2})"
    r"(?:(?P<sep>[*&])(?P<f>[0-9A-Za-z]{1,3}))?"
)


class ProtocolError(ValueError):
    """A message that is not what the conversation calls for (garbled, truncated, collided)."""


class BccError(ProtocolError):
    """A data block whose BCC does not match: spoilt on the wire."""


def bcc(data: bytes) -> int:
    """The block check character of ``data`` (the bytes after STX or SOH, ETX included)."""
    check = 0
    for byte in data:
        check ^= byte
    return check


def sign_on(address: str = "") -> bytes:
    """The request message: without an address any meter answers (point to point)."""
    return f"/?{address}!".encode("ascii") + CRLF


def option_select(baud: str, mode: str = "0", control: str = "0") -> bytes:
    """The acknowledgement/option select message: ``ACK V Z Y CR LF`` (mode ``0``: readout)."""
    return bytes([ACK]) + f"{control}{baud}{mode}".encode("ascii") + CRLF


def baud_character(rate: int) -> str:
    """The mode C character that names ``rate``."""
    return next(char for char, speed in MODE_C_BAUDS.items() if speed == rate)


@dataclass(frozen=True)
class Identification:
    """What a meter says of itself: ``/XXXZ<ident>``."""

    manufacturer: str  # three letters; a lower-case third one: 20 ms reaction time
    baud: str  # Z, the baud character
    ident: str  # the rest, with any enhanced identification (``\\2``) it starts with

    @classmethod
    def parse(cls, line: str) -> Identification:
        """The identification in ``line`` (without its line end). A message holds one ``/``:
        two meters answering at once interleave theirs, and are refused here."""
        match = _IDENTIFICATION.fullmatch(line)
        if match is None or "/" in line[1:] or "!" in line:
            raise ProtocolError(f"{line!r} is not an identification (/XXXZident)")
        return cls(match["maker"], match["baud"], match["ident"])

    @property
    def mode(self) -> str:
        """``C`` (option select, baud switch), ``B`` (switch without one) or ``A`` (none)."""
        if self.baud in MODE_C_BAUDS:
            return "C"
        return "B" if self.baud in MODE_B_BAUDS else "A"

    @property
    def max_baudrate(self) -> int | None:
        """The fastest speed the meter offers; ``None`` in mode A (it stays at the sign-on's)."""
        return MODE_C_BAUDS.get(self.baud) or MODE_B_BAUDS.get(self.baud)

    @property
    def enhanced(self) -> tuple[str, ...]:
        """The enhanced identification characters (``\\2``: HDLC/DLMS available)."""
        found = []
        rest = self.ident
        while (match := _ENHANCED.match(rest)) is not None:
            found.append(match[1])
            rest = rest[match.end() :]
        return tuple(found)

    @property
    def model(self) -> str:
        """The ident without its enhanced identification characters."""
        return _ENHANCED.sub("", self.ident, count=len(self.enhanced))

    def __str__(self) -> str:
        return f"/{self.manufacturer}{self.baud}{self.ident}"


@dataclass(frozen=True)
class Obis:
    """An OBIS identifier of a data line: ``A-B:C.D.E*F``, A, B and F optional."""

    code: str  # C.D.E, as written
    medium: str | None = None  # A-B, as written
    billing: str | None = None  # "*F" or "&F"; "*255" (not used) is kept as None

    @classmethod
    def parse(cls, text: str) -> Obis | None:
        match = _OBIS.fullmatch(text.strip())
        if match is None:
            return None
        medium = f"{match['a']}-{match['b']}" if match["a"] is not None else None
        billing = f"{match['sep']}{match['f']}" if match["sep"] else None
        return cls(match["cde"], medium, None if billing == "*255" else billing)

    def matches(self, line: Obis) -> bool:
        """Whether the data line ``line`` holds this (a configured) identifier: by C.D.E (and
        the billing period) when this one gives no medium, exactly when it gives one."""
        if (self.code, self.billing) != (line.code, line.billing):
            return False
        return self.medium is None or self.medium == line.medium

    def __str__(self) -> str:
        medium = f"{self.medium}:" if self.medium else ""
        return f"{medium}{self.code}{self.billing or ''}"


@dataclass(frozen=True)
class DataSet:
    """One identifier of a data block and its values, each ``(value, unit)``."""

    address: str
    values: tuple[tuple[str, str], ...]

    @property
    def obis(self) -> Obis | None:
        return Obis.parse(self.address)


def frame_block(lines: list[str]) -> bytes:
    """The data message of ``lines``: STX, each line and CR LF, ``!`` CR LF, ETX, BCC."""
    body = "".join(f"{line}\r\n" for line in lines).encode("ascii") + b"!\r\n" + bytes([ETX])
    return bytes([STX]) + body + bytes([bcc(body)])


def unframe_block(block: bytes) -> str:
    """The text between STX and ETX of a data message (``STX … ETX BCC``), BCC checked."""
    if len(block) < 3 or block[0] != STX or block[-2] != ETX:
        raise ProtocolError(f"{block[:40]!r} is not a data message (STX … ETX BCC)")
    body, sent = block[1:-1], block[-1]
    if bcc(body) != sent:
        raise BccError(f"BCC 0x{sent:02X} does not match the block's 0x{bcc(body):02X}")
    return body[:-1].decode("ascii", "replace")


def data_sets(text: str) -> tuple[list[DataSet], list[str]]:
    """The data sets of a data block's text, and the lines that are not data lines. A line
    holds one or more sets, ``ID(v*unit)(v2)…ID2(…)``; a line of values without an identifier
    (a load profile's) continues the set before it. The ``!`` line ends the data."""
    found: list[DataSet] = []
    bad: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line == "!":
            break
        if not line:
            continue
        parsed = _line_sets(line)
        if parsed is None:
            bad.append(line)
            continue
        for data_set in parsed:
            if not data_set.address and found:
                last = found[-1]
                found[-1] = DataSet(last.address, last.values + data_set.values)
            else:
                found.append(data_set)
    return found, bad


def _line_sets(line: str) -> list[DataSet] | None:
    sets: list[DataSet] = []
    at = 0
    while at < len(line):
        opening = line.find("(", at)
        if opening < 0:
            return None  # an identifier without a value
        address = line[at:opening].strip()
        values: list[tuple[str, str]] = []
        at = opening
        while at < len(line) and line[at] == "(":
            closing = line.find(")", at)
            if closing < 0 or "(" in line[at + 1 : closing]:
                return None
            value, _, unit = line[at + 1 : closing].partition("*")
            values.append((value.strip(), unit.strip()))
            at = closing + 1
        if address and Obis.parse(address) is None and not _plain_address(address):
            return None
        sets.append(DataSet(address, tuple(values)))
    return sets


def _plain_address(address: str) -> bool:
    """An identifier that is no OBIS code yet is a legal data set address (``C.90.1.255``):
    printable, without the characters the standard reserves."""
    return all(" " < c <= "~" and c not in "()/!*" for c in address) and len(address) <= 16
