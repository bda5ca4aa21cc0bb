"""Turn a point's raw Modbus registers (or bit) into a reading, and back. Pure functions, no I/O.

Word orders, for the 32- and 64-bit types, name the bytes of the value from most to least
significant (A first) as they appear on the wire:

* ``ABCD`` — big-endian: most significant register first, high byte first in each register;
* ``CDAB`` — registers in reverse order, high byte first in each ("word swap");
* ``BADC`` — registers in big order, the two bytes inside each register swapped ("byte swap");
* ``DCBA`` — fully little-endian bytes (both swaps).

The same two swaps apply to 64-bit values over four registers. On a 16-bit type only the byte swap
has an effect (``BADC`` and ``DCBA`` read the register byte-swapped). Strings honour only the byte
swap too: reversing the register order of a character array is not something devices do.

``decode`` scales numbers as ``raw * scale + offset``; with the identity scaling an integer stays
an ``int`` (a uint16 reads ``410``, not ``410.0``). Floats are cut to the digits they carry: the
shortest decimal that is the same float32, and 15 significant digits after scaling. A float
register holding NaN or ±inf decodes to that value unchanged: whether to publish it is the
caller's decision.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agent.api import Value, scaled, significant

from .schema import BIT_TABLES, ModbusPoint, WordOrder

if TYPE_CHECKING:
    from decimal import Decimal

#: ``struct`` format (big-endian) of each fixed-size numeric type.
_FORMATS: dict[str, str] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}
_FLOAT_TYPES = frozenset({"float32", "float64"})
_WORD_SWAPPED: frozenset[WordOrder] = frozenset({"CDAB", "DCBA"})
_BYTE_SWAPPED: frozenset[WordOrder] = frozenset({"BADC", "DCBA"})


def int_range(point_type: str) -> tuple[int, int]:
    """The smallest and largest raw value of an integer type, e.g. ``(-32768, 32767)`` for int16."""
    bits = struct.calcsize(_FORMATS[point_type]) * 8
    if point_type.startswith("u"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def decode(point: ModbusPoint, raw: Sequence[int] | Sequence[bool]) -> Value:
    """The reading of ``point`` from its raw registers, or its one bit on a coil/discrete table.

    ``raw`` must hold exactly ``point.count`` items. On a bit table the reading is a bool whatever
    the point's type. Raises ``ValueError`` when ``raw`` has the wrong length.
    """
    if len(raw) != point.count:
        raise ValueError(f"point {point.name}: expected {point.count} values, got {len(raw)}")
    if point.table in BIT_TABLES:
        return bool(raw[0])
    registers = [int(r) for r in raw]
    if point.type == "bool":
        if point.bit is not None:
            return bool(registers[0] >> point.bit & 1)
        return registers[0] != 0
    if point.type == "string":
        return _decode_string(point, registers)
    number: int | float = struct.unpack(_FORMATS[point.type], _to_bytes(registers, point.order))[0]
    return _finished(point, number)


def _shortest_float32(number: float) -> float:
    """The shortest decimal that is still the same float32.

    Widened to a double, a float32 shows digits it never had (231.2 becomes 231.1999969482422),
    which cost bytes on a metered link and confuse people. (Run for every float32 read: the
    formats are spelt out, not built per call.)
    """
    exact = _FLOAT32.pack(number)
    for digits in (".6g", ".7g", ".8g"):
        candidate = float(format(number, digits))
        if candidate == number or _FLOAT32.pack(candidate) == exact:
            return candidate
    return float(format(number, ".9g"))  # 9 digits always identify a float32


_FLOAT32 = struct.Struct(">f")


#: Largest scale exponent taken as meant: SunSpec's range; beyond it a register holds garbage.
MAX_EXPONENT = 10


class NotAvailable(ValueError):
    """The register holds one of the point's ``not_available`` values: there is no reading."""


def _is_not_available(point: ModbusPoint, number: float) -> bool:
    if isinstance(number, float) and math.isnan(number):
        return any(math.isnan(v) for v in point.not_available)
    if isinstance(number, int) and number < 0:
        # A manual writes an int16 sentinel as 0x8000: compare the raw bits too.
        low, high = int_range(point.type)
        return number in point.not_available or number + high - low + 1 in point.not_available
    return number in point.not_available


class RequestDecoder:
    """Each point of a read that started at ``address`` decoded from its slice of what the read
    brought, as ``decode`` decodes it, compiled once per read: the numbers are unpacked with one
    ``struct`` call per run of adjacent points that share a word order, from the registers as
    bytes, instead of point by point. A point whose register says "not available" is left out;
    one that cannot be decoded is left out with a message in ``errors``.

    A word order is a choice of buffer and byte order: with the registers packed high byte first
    (as on the wire), ``ABCD`` reads big-endian and ``DCBA`` little-endian; with each register's
    two bytes swapped, ``BADC`` reads big-endian and ``CDAB`` little-endian. Bits, strings and
    bit fields go through ``decode``, point by point.
    """

    def __init__(self, points: Sequence[ModbusPoint], address: int) -> None:
        self.points = tuple(points)
        self.address = address
        self._count = max((p.address - address + p.count for p in points), default=0)
        self._others = tuple(p for p in points if not _packable(p))
        numbers = sorted((p for p in points if _packable(p)), key=lambda p: p.address)
        self._runs: list[_Run] = []
        run: list[ModbusPoint] = []
        for point in numbers:
            if run and (_layout(point) != _layout(run[0]) or point.address < _end(run[-1])):
                self._runs.append(_Run.of(run, address))
                run = []
            run.append(point)
        if run:
            self._runs.append(_Run.of(run, address))
        decoded = [name for r in self._runs for name in r.names] + [p.name for p in self._others]
        #: whether the values come out in the points' order without a reordering
        self._in_order = decoded == [p.name for p in points]
        self._swapped = any(r.swapped for r in self._runs)
        self._wire = struct.Struct(f">{self._count}H")
        self._swap = struct.Struct(f"<{self._count}H")

    def __call__(self, raw: Sequence[int] | Sequence[bool], errors: list[str]) -> dict[str, Value]:
        if len(raw) != self._count or not self._runs:
            return self._point_by_point(self.points, raw, errors)
        wire = self._wire.pack(*raw)
        swapped = self._swap.pack(*raw) if self._swapped else wire
        values: dict[str, Value] = {}
        for run in self._runs:
            numbers = run.layout.unpack_from(swapped if run.swapped else wire)
            for name, finish, number in zip(run.names, run.finish, numbers, strict=True):
                if finish is None:
                    values[name] = number
                    continue
                try:
                    values[name] = finish(number)
                except NotAvailable:
                    continue
        values.update(self._point_by_point(self._others, raw, errors))
        if self._in_order:
            return values
        return {p.name: values[p.name] for p in self.points if p.name in values}

    def _point_by_point(
        self,
        points: Sequence[ModbusPoint],
        raw: Sequence[int] | Sequence[bool],
        errors: list[str],
    ) -> dict[str, Value]:
        values: dict[str, Value] = {}
        for point in points:
            start = point.address - self.address
            try:
                values[point.name] = decode(point, raw[start : start + point.count])
            except NotAvailable:
                continue
            except ValueError as exc:
                errors.append(str(exc))
        return values


@dataclass(frozen=True)
class _Run:
    """Adjacent points of a read that one ``struct`` unpacks."""

    swapped: bool  # from the registers with their bytes swapped
    layout: struct.Struct
    names: tuple[str, ...]
    #: Per point, what makes its reading of the number unpacked; None: the number is it.
    finish: tuple[Callable[[int | float], Value] | None, ...]

    @classmethod
    def of(cls, points: Sequence[ModbusPoint], address: int) -> _Run:
        swapped, endian = _layout(points[0])
        layout, at = endian, address
        for point in points:
            layout += "x" * (2 * (point.address - at)) + _FORMATS[point.type][1]
            at = _end(point)
        names = tuple(p.name for p in points)
        finish = tuple(_finisher(p) for p in points)
        return cls(swapped, struct.Struct(layout), names, finish)


def _packable(point: ModbusPoint) -> bool:
    return point.table not in BIT_TABLES and point.type in _FORMATS


def _layout(point: ModbusPoint) -> tuple[bool, str]:
    """Which buffer a number is unpacked from (swapped or not), and its ``struct`` byte order."""
    if point.count == 1:  # no second register to swap with: only the byte swap counts
        return False, "<" if point.order in _BYTE_SWAPPED else ">"
    word_swapped = point.order in _WORD_SWAPPED
    return word_swapped != (point.order in _BYTE_SWAPPED), "<" if word_swapped else ">"


def _end(point: ModbusPoint) -> int:
    return point.address + point.count


def _finisher(point: ModbusPoint) -> Callable[[int | float], Value] | None:
    """What makes the reading of a number unpacked for ``point``: None when it is the number
    (an integer, unscaled), the float32's shortest digits for an unscaled float32, else all
    that ``decode`` does after unpacking."""
    unscaled = (
        not point.not_available
        and point.scale_exponent is None
        and point.scale == 1
        and point.offset == 0
    )
    if unscaled and point.type not in _FLOAT_TYPES:
        return None
    if unscaled and point.type == "float32":
        return _shortest_float32
    return functools.partial(_finished, point)


def _finished(point: ModbusPoint, number: int | float) -> Value:
    """The reading of a number unpacked for ``point``: NotAvailable for its sentinel, a float32
    cut to its own digits, scaled (or left raw for its ``scale_exponent``)."""
    if point.not_available and _is_not_available(point, number):
        raise NotAvailable(f"point {point.name}: the device says not available ({number})")
    if point.type == "float32":
        number = _shortest_float32(number)
    if point.scale_exponent is not None:
        return number  # raw: scale and offset apply after the exponent (apply_exponents)
    return scaled(point, number)


def apply_exponents(
    points: Sequence[ModbusPoint], values: dict[str, Value], errors: list[str]
) -> dict[str, Value]:
    """Scale points that have a ``scale_exponent`` by 10 to the power of that point's value,
    then by their own ``scale`` and ``offset`` (raw x 10^exponent x scale + offset).

    Without its exponent (not read, or not available) a value means nothing and is left out.
    """
    for point in points:
        if point.scale_exponent is None or point.name not in values:
            continue
        value = values[point.name]
        exponent = values.get(point.scale_exponent)
        if not isinstance(exponent, int) or isinstance(value, bool | str):
            del values[point.name]
            continue
        if abs(exponent) > MAX_EXPONENT:
            del values[point.name]
            errors.append(
                f"point {point.name}: scale factor {point.scale_exponent} = {exponent} is not "
                f"plausible (SunSpec allows -{MAX_EXPONENT}..{MAX_EXPONENT})"
            )
            continue
        values[point.name] = scaled(point, significant(value * 10.0**exponent))
    return values


def encode(point: ModbusPoint, value: Value) -> list[int] | list[bool]:
    """The raw registers (or one bit) that make ``point`` read ``value``: the inverse of ``decode``.

    Numbers are unscaled as ``(value - offset) / scale`` and, for integer types, rounded to the
    nearest integer, halves away from zero (on the decimal digits of ``value``, see
    ``_nearest_raw``). A ``bit`` point gives its register with only that bit possibly set: merging
    it into the register's other bits is the caller's job. Raises ``ValueError`` with a message
    naming the point when the value has the wrong kind or does not fit the type (out of range,
    string too long or not ASCII).
    """
    if point.table in BIT_TABLES:
        return [_as_bool(point, value)]
    if point.type == "bool":
        on = _as_bool(point, value)
        if point.bit is not None:  # the other bits of the register are the caller's to merge
            return [int(on) << point.bit]
        return [int(on)]
    if point.type == "string":
        return _encode_string(point, value)
    try:
        data = struct.pack(_FORMATS[point.type], _unscale(point, value))
    except (struct.error, OverflowError) as exc:
        # Only floats get here (too large for float32, or an int too large for any float):
        # integers were range-checked by _unscale.
        raise ValueError(f"point {point.name}: {value!r} does not fit {point.type}") from exc
    return _from_bytes(data, point.order)


def _byteorder(order: WordOrder) -> Literal["little", "big"]:
    """How the two bytes inside each register are laid out."""
    return "little" if order in _BYTE_SWAPPED else "big"


def _to_bytes(registers: Sequence[int], order: WordOrder) -> bytes:
    """The value's bytes, most significant first, from registers laid out in ``order``."""
    words = list(reversed(registers)) if order in _WORD_SWAPPED else list(registers)
    byteorder = _byteorder(order)
    return b"".join(w.to_bytes(2, byteorder) for w in words)


def _from_bytes(data: bytes, order: WordOrder) -> list[int]:
    """Registers laid out in ``order`` from the value's bytes, most significant first."""
    byteorder = _byteorder(order)
    words = [int.from_bytes(data[i : i + 2], byteorder) for i in range(0, len(data), 2)]
    return words[::-1] if order in _WORD_SWAPPED else words


def _decode_string(point: ModbusPoint, registers: list[int]) -> str:
    byteorder = _byteorder(point.order)
    data = b"".join(r.to_bytes(2, byteorder) for r in registers)[: point.length]
    # Devices pad fixed-width strings with NULs or spaces; neither is part of the text.
    return data.rstrip(b"\x00 ").decode("ascii", errors="replace")


def _encode_string(point: ModbusPoint, value: Value) -> list[int]:
    if not isinstance(value, str):
        raise ValueError(f"point {point.name}: expected a string, got {value!r}")
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError(f"point {point.name}: {value!r} is not ASCII") from exc
    if len(data) > point.length:
        raise ValueError(f"point {point.name}: {value!r} is longer than {point.length} characters")
    data = data.ljust(point.count * 2, b"\x00")
    byteorder = _byteorder(point.order)
    return [int.from_bytes(data[i : i + 2], byteorder) for i in range(0, len(data), 2)]


def _as_bool(point: ModbusPoint, value: Value) -> bool:
    # 0 and 1 are accepted too: a JSON command or a technician may well send them.
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"point {point.name}: expected a boolean, got {value!r}")


#: Raw values beyond this are shown in scientific notation in messages.
_HUGE = 10**20


def _unscale(point: ModbusPoint, value: Value) -> int | float:
    """The raw number for ``value``: unscaled, rounded and range-checked for integer types."""
    if isinstance(value, (bool, str)):
        raise ValueError(f"point {point.name}: expected a number, got {value!r}")
    if point.scale == 0:
        raise ValueError(f"point {point.name}: scale is 0, no raw value gives {value!r}")
    identity = point.scale == 1 and point.offset == 0
    if point.type in _FLOAT_TYPES:
        return float(value) if identity else (value - point.offset) / point.scale
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"point {point.name}: {value!r} is not a finite number")
    rounded = _nearest_raw(point, value)
    low, high = int_range(point.type)
    if not low <= rounded <= high:
        shown = f"{rounded:.0f}" if abs(rounded) < _HUGE else f"{rounded:.3e}"
        raise ValueError(
            f"point {point.name}: {value!r} is out of range for {point.type} "
            f"(raw {shown}, allowed {low}..{high})"
        )
    return int(rounded)


def _nearest_raw(point: ModbusPoint, value: int | float) -> Decimal:
    """``(value - offset) / scale`` rounded to the nearest integer, halves away from zero.

    Computed on the decimals as written, not in binary floating point: 21.35 with scale 0.1 is
    raw 213.5 and gives 214 (21.4), where floats would make it 213.49999999999997 and give 213;
    an int, even a 64-bit one, stays exact. (``decimal`` is imported by the first write: a
    gateway that only reads does without it.)
    """
    from decimal import ROUND_HALF_UP

    exact = (_decimal(value) - _decimal(point.offset)) / _decimal(point.scale)
    return exact.to_integral_value(rounding=ROUND_HALF_UP)


def _decimal(number: int | float) -> Decimal:
    from decimal import Decimal

    # repr is the shortest decimal that is the same float: the one a person or a TOML file wrote.
    return Decimal(number) if isinstance(number, int) else Decimal(repr(number))
