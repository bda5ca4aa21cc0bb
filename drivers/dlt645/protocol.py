"""DL/T 645-2007 frames: building requests, cutting and checking replies, and the BCD values.

Pure functions, shared by the driver and the meter emulator. A frame is
``68 A0…A5 68 C L DATA CS 16``, after 0 to 4 FE bytes: the address is 12 BCD digits sent low
byte first, every data byte goes on the wire plus 0x33, and CS is the sum of every byte from
the first 0x68 through the last data byte, mod 256. The parts a data collector uses: read data
(0x11, replies 0x91, 0xB1 when further frames follow, 0xD1 abnormal) and read address (0x13,
reply 0x93).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

START = 0x68
END = 0x16
PREAMBLE = b"\xfe\xfe\xfe\xfe"  # the master wakes the meters' line drivers before each frame
READ_DATA = 0x11
READ_ADDRESS = 0x13
#: Control code bits of a reply: from the meter, abnormal, more frames follow.
REPLY = 0x80
ABNORMAL = 0x40
FOLLOWING = 0x20
FUNCTION = 0x1F
#: The address every meter answers to (one meter on the bus: read its address with it).
WILDCARD = bytes([0xAA] * 6)
#: The broadcast address: meters act on it and never reply.
BROADCAST = "999999999999"
#: Frame overhead: 68, six address bytes, 68, C, L, then CS and 16.
OVERHEAD = 12
#: The longest data field the standard allows (L <= 200 in a read reply): a larger L byte
#: is no frame's.
MAX_DATA = 200
#: The error bits of an abnormal reply's one data byte (DL/T 645-2007, the error word).
ERROR_BITS = (
    "other error",
    "no requested data",
    "wrong password or not authorised",
    "baud rate cannot be changed",
    "too many year time zones",
    "too many day time periods",
    "too many tariffs",
    "reserved bit 7",
)
_FORMAT = re.compile(r"(?P<whole>X+)(?:\.(?P<decimals>X+))?")
_DI = re.compile(r"[0-9A-Fa-f]{8}")


class ProtocolError(ValueError):
    """A reply that is not what the request calls for."""


class ChecksumError(ProtocolError):
    """A reply whose CS byte does not match its bytes: spoilt on the wire."""


class AddressMismatch(ProtocolError):
    """A reply from another address than the one asked."""


class BcdError(ProtocolError):
    """A value with a nibble above 9: garbled, or not the format the point says."""


class AbnormalReply(ProtocolError):
    """The meter said it cannot answer (control code 0xD1): the error bits, named."""

    def __init__(self, error: int) -> None:
        self.error = error
        named = [text for bit, text in enumerate(ERROR_BITS) if error >> bit & 1]
        super().__init__(
            f"abnormal reply, error byte 0x{error:02X} ({', '.join(named) or 'no bit set'})"
        )


@dataclass(frozen=True)
class Format:
    """How a value is written: ``digits`` BCD digits (two per byte), ``decimals`` of them after
    the point, and whether the top bit of the most significant byte is a sign."""

    digits: int
    decimals: int = 0
    signed: bool = False

    @property
    def size(self) -> int:
        return self.digits // 2

    @classmethod
    def parse(cls, text: str, signed: bool = False) -> Format:
        """``"XXX.XXX"`` as the standard's tables write a format; ``ValueError`` otherwise."""
        match = _FORMAT.fullmatch(text)
        if match is None:
            raise ValueError(
                f'"{text}" is not a format: write X for each digit and a point where the '
                'decimals start, as the standard\'s tables do, e.g. "XXX.XXX"'
            )
        decimals = len(match["decimals"] or "")
        digits = len(match["whole"]) + decimals
        if digits % 2 or digits > 16:
            raise ValueError(
                f'"{text}" has {digits} digits: a value is whole bytes of two BCD digits, '
                "2 to 16 digits"
            )
        return cls(digits, decimals, signed)

    def __str__(self) -> str:
        whole = "X" * (self.digits - self.decimals)
        return whole + ("." + "X" * self.decimals if self.decimals else "")


def parse_di(text: str) -> int:
    """A data identifier as the tables write it, most significant byte first: ``"02010100"``."""
    if not _DI.fullmatch(text):
        raise ValueError(
            f'"{text}" is not a data identifier: 8 hexadecimal digits as the standard\'s '
            'tables write them, most significant first, e.g. "02010100"'
        )
    return int(text, 16)


def di_text(di: int) -> str:
    return f"{di:08X}"


#: The formats of the identifiers every meter has (DL/T 645-2007 appendix A): energy in kWh
#: (combined active energy is signed: forward minus reverse can be negative), voltage V,
#: current A, power kW/kvar/kVA, power factor, frequency Hz.
KNOWN: dict[int, tuple[Format, str, str]] = {
    0x00000000: (Format(8, 2, True), "kWh", "combined active energy, total"),
    **{
        0x00000000 + (t << 8): (Format(8, 2, True), "kWh", f"combined active energy, tariff {t}")
        for t in range(1, 5)
    },
    0x00010000: (Format(8, 2), "kWh", "forward active energy, total"),
    **{
        0x00010000 + (t << 8): (Format(8, 2), "kWh", f"forward active energy, tariff {t}")
        for t in range(1, 5)
    },
    0x00020000: (Format(8, 2), "kWh", "reverse active energy, total"),
    **{
        0x00020000 + (t << 8): (Format(8, 2), "kWh", f"reverse active energy, tariff {t}")
        for t in range(1, 5)
    },
    **{0x02010000 + (p << 8): (Format(4, 1), "V", f"voltage, phase {p}") for p in (1, 2, 3)},
    **{0x02020000 + (p << 8): (Format(6, 3, True), "A", f"current, phase {p}") for p in (1, 2, 3)},
    **{
        0x02030000 + (p << 8): (Format(6, 4, True), "kW", f"active power, {w}")
        for p, w in enumerate(("total", "phase 1", "phase 2", "phase 3"))
    },
    **{
        0x02040000 + (p << 8): (Format(6, 4, True), "kvar", f"reactive power, {w}")
        for p, w in enumerate(("total", "phase 1", "phase 2", "phase 3"))
    },
    **{
        0x02050000 + (p << 8): (Format(6, 4, True), "kVA", f"apparent power, {w}")
        for p, w in enumerate(("total", "phase 1", "phase 2", "phase 3"))
    },
    **{
        0x02060000 + (p << 8): (Format(4, 3, True), "", f"power factor, {w}")
        for p, w in enumerate(("total", "phase 1", "phase 2", "phase 3"))
    },
    0x02800002: (Format(4, 2), "Hz", "grid frequency"),
}


def known_format(di: int) -> Format | None:
    known = KNOWN.get(di)
    return known[0] if known else None


# --- addresses


def address_bytes(address: str) -> bytes:
    """The 12-digit nameplate address as sent: BCD, low byte first (``AA`` stays ``AA``)."""
    pairs = [address[i : i + 2] for i in range(0, 12, 2)]
    return bytes(0xAA if pair.upper() == "AA" else int(pair, 16) for pair in reversed(pairs))


def address_text(wire: bytes) -> str:
    """The nameplate address of the 6 address bytes of a frame."""
    return "".join(f"{byte:02X}" for byte in reversed(wire))


def matches(wire: bytes, asked: bytes) -> bool:
    """Whether a frame's address is the one asked: each ``AA`` byte asked matches any."""
    return len(wire) == 6 and all(a in (0xAA, w) for w, a in zip(wire, asked, strict=True))


# --- frames


def checksum(frame: bytes) -> int:
    return sum(frame) & 0xFF


def frame(address: bytes, control: int, data: bytes = b"") -> bytes:
    """One frame, without the FE preamble: the data bytes are sent plus 0x33."""
    body = bytes([START, *address, START, control, len(data), *((b + 0x33) & 0xFF for b in data)])
    return body + bytes([checksum(body), END])


def read_request(address: bytes, di: int) -> bytes:
    """Read data (0x11) of identifier ``di``, with the master's preamble."""
    return PREAMBLE + frame(address, READ_DATA, di.to_bytes(4, "little"))


def read_address_request() -> bytes:
    """Read address (0x13) to every meter: the one on the bus answers with its address."""
    return PREAMBLE + frame(WILDCARD, READ_ADDRESS)


def frame_size(data: bytes) -> int | None:
    """The length of the frame at the start of ``data``: 0 when more bytes are needed to tell,
    None when no frame starts there (a preamble FE, or noise: drop a byte and look again)."""
    if not data:
        return 0
    if data[0] != START:
        return None
    if len(data) < OVERHEAD - 2:
        return 0
    if data[7] != START or data[9] > MAX_DATA:
        return None
    return OVERHEAD + data[9]


def frame_problem(raw: bytes) -> ProtocolError | None:
    """What is wrong with ``raw``, one whole frame as ``frame_size`` cut it: None when it
    ends in 16 and its checksum holds."""
    size = frame_size(raw)
    if not size or len(raw) < size:
        return ProtocolError(f"a short frame of {len(raw)} byte(s): {raw.hex(' ')}")
    if raw[size - 1] != END:
        return ProtocolError(f"the frame does not end in 16: {raw.hex(' ')}")
    sent, computed = raw[size - 2], checksum(raw[: size - 2])
    if sent != computed:
        return ChecksumError(
            f"checksum mismatch: CS {sent:02X}, the bytes sum to {computed:02X}: {raw.hex(' ')}"
        )
    return None


def _valid_at(data: bytes, at: int) -> bool:
    size = frame_size(data[at:])
    if not size or len(data) - at < size:
        return False
    return frame_problem(data[at : at + size]) is None


class Framer:
    """``frame_size`` for ``LinePort.read_frame`` that cuts only valid frames and recovers
    from a false start: a 68 in noise that looks like a frame's beginning.

    A candidate that is complete but invalid (no 16 at its end, a bad CS) is given up one byte
    further on (a frame may start inside it), and remembered in ``spoilt``: said when no valid
    frame comes. A candidate still incomplete is given up too when a whole valid frame already
    lies further in the buffer. ``begun`` is the candidate under way (a reply cut short when
    the wait ends), ``noise`` counts the bytes dropped other than preamble FEs, ``heard`` is
    when bytes were last looked at (by ``clock``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.spoilt: ProtocolError | None = None
        self.begun = b""
        self.noise = 0
        self.heard = clock()

    def __call__(self, data: bytes) -> int | None:
        self.heard = self.clock()
        size = frame_size(data)
        if size is not None and size and len(data) >= size:
            problem = frame_problem(data[:size])
            if problem is None:
                self.begun = b""
                return size
            self.spoilt = problem
            size = None
        elif size is not None and any(_valid_at(data, at) for at in range(1, len(data))):
            size = None  # a false start: a whole frame lies inside it
        if size is None:
            self.begun = b""
            self.noise += data[0] != PREAMBLE[0]
            return None
        self.begun = data
        return 0


@dataclass(frozen=True)
class Frame:
    """A frame taken apart: the address bytes, the control code, the data (0x33 taken off)."""

    address: bytes
    control: int
    data: bytes


def parse_frame(raw: bytes) -> Frame:
    """``raw`` (one whole frame, as ``frame_size`` cut it) checked and taken apart."""
    problem = frame_problem(raw)
    if problem is not None:
        raise problem
    size = OVERHEAD + raw[9]
    data = bytes((b - 0x33) & 0xFF for b in raw[10 : size - 2])
    return Frame(raw[1:7], raw[8], data)


def mismatch(
    reply: Frame, asked: bytes, function: int, di: int | None = None
) -> ProtocolError | None:
    """Why ``reply`` is not the answer to the request of ``function`` (and identifier ``di``)
    to ``asked``: from another address, a reply to another function or identifier; None when
    it is (an abnormal reply, which echoes no identifier, answers any)."""
    if not matches(reply.address, asked):
        return AddressMismatch(
            f"a reply from address {address_text(reply.address)}, "
            f"not {address_text(asked)}: two meters with one address, or a stray frame"
        )
    if not reply.control & REPLY or reply.control & FUNCTION != function:
        return ProtocolError(f"control code {reply.control:02X} is no reply to {function:02X}")
    if di is not None and not reply.control & ABNORMAL and len(reply.data) >= 4:
        echoed = int.from_bytes(reply.data[:4], "little")
        if echoed != di:
            return ProtocolError(f"a reply for identifier {di_text(echoed)}, not {di_text(di)}")
    return None


def reply_to(raw: bytes, asked: bytes, function: int) -> Frame:
    """The reply ``raw`` checked against the request: from the address asked, a reply to
    ``function``; ``AbnormalReply`` when the meter says it cannot answer."""
    reply = parse_frame(raw)
    wrong = mismatch(reply, asked, function)
    if wrong is not None:
        raise wrong
    if reply.control & ABNORMAL:
        if not reply.data:
            raise ProtocolError(f"an abnormal reply without its error byte: {raw.hex(' ')}")
        raise AbnormalReply(reply.data[0])
    return reply


def value_bytes(reply: Frame, di: int, size: int) -> bytes:
    """The value in a read-data reply: after the identifier it echoes, ``size`` bytes (the
    first of several when further frames follow)."""
    if len(reply.data) < 4:
        raise ProtocolError(f"a reply of {len(reply.data)} data byte(s), without the identifier")
    echoed = int.from_bytes(reply.data[:4], "little")
    if echoed != di:
        raise ProtocolError(f"a reply for identifier {di_text(echoed)}, not {di_text(di)}")
    value = reply.data[4:]
    more = bool(reply.control & FOLLOWING)
    if len(value) < size or (len(value) > size and not more):
        raise ProtocolError(
            f"{len(value)} value byte(s) for {di_text(di)}, where its format needs {size}: "
            "check the point's format"
        )
    return value[:size]


# --- values


def decode(value: bytes, form: Format) -> int | float:
    """BCD ``value`` (low byte first) as a number; ``ProtocolError`` for a nibble above 9."""
    digits = bytearray(reversed(value))
    negative = form.signed and bool(digits[0] & 0x80)
    if form.signed:
        digits[0] &= 0x7F
    text = digits.hex()
    if not text.isdigit():
        raise BcdError(f"garbled BCD {value.hex(' ')}: a digit above 9")
    number = int(text) * (-1 if negative else 1)
    return number / 10**form.decimals if form.decimals else number


def encode(number: float, form: Format) -> bytes:
    """``number`` in ``form``: rounded to its decimals, low byte first; ``ValueError`` when it
    does not fit."""
    scaled = round(abs(number) * 10**form.decimals)
    text = f"{scaled:0{form.digits}d}"
    if len(text) > form.digits or (form.signed and text[0] > "7"):
        raise ValueError(f"{number} does not fit format {form}")
    digits = bytearray.fromhex(text)
    if form.signed and number < 0:
        digits[0] |= 0x80
    return bytes(reversed(digits))
