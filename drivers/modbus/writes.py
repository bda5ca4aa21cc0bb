"""How a Modbus point is written: the registers (or coil state) of a value, and the request
that carries them (FC 5, 6, 15 or 16). No I/O: the driver sends what ``plan_write`` returns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agent.api import Value

from .codec import NotAvailable, decode, encode
from .schema import BIT_TABLES, ModbusPoint, Table

#: The function codes that write: one coil, one register, several coils, several registers.
WRITE_COIL, WRITE_REGISTER, WRITE_COILS, WRITE_REGISTERS = 5, 6, 15, 16


#: Most registers one write may carry (FC 16): the protocol's limit.
MAX_WRITE_REGISTERS = 123


#: What a person is told when a point of a read-only table is to be written.
_READ_ONLY: dict[str, str] = {
    "input": "input registers cannot be written",
    "discrete": "discrete inputs cannot be written",
}


@dataclass(frozen=True)
class Write:
    """One write request: ``values`` (registers, or coils as bools) into ``table`` from
    ``address`` with function code ``function``."""

    point: ModbusPoint
    function: int
    values: tuple[int, ...] | tuple[bool, ...]

    @property
    def table(self) -> Table:
        return self.point.table

    @property
    def address(self) -> int:
        return self.point.address

    @property
    def span(self) -> str:
        """The addresses written, for messages: ``"40-41"``, or ``"40"`` for a single one."""
        last = self.address + len(self.values) - 1
        return str(self.address) if last == self.address else f"{self.address}-{last}"

    def describe(self) -> str:
        """E.g. ``"FC 16 holding 40-41: setpoint = 0x4000 0x41ab"``."""
        if self.table in BIT_TABLES:
            shown = " ".join("on" if v else "off" for v in self.values)
        else:
            shown = " ".join(f"0x{v:04x}" for v in self.values)
        return f"FC {self.function} {self.table} {self.span}: {self.point.name} = {shown}"


def encode_write(point: ModbusPoint, value: Value) -> list[int] | list[bool]:
    """The raw registers (or coil state) that set ``point`` to ``value``; no I/O.

    ``value`` is encoded by the point's type, word order, scale and offset (``codec.encode``);
    a ``bit`` point gives its register with only that bit possibly set, to be merged into the
    register's current value. Raises ``ValueError`` with one line for a person, without the
    point's name (the caller puts it in front), when the point cannot be written (a read-only
    table, not ``writable``, scaled by another point) or the value does not fit it (wrong kind,
    not finite, out of the type's range, beyond ``min``/``max`` once rounded to a raw value, the
    point's "not available" value, a string too long).
    """
    if point.table in _READ_ONLY:
        raise ValueError(_READ_ONLY[point.table])
    if not point.writable:
        raise ValueError("not writable (writable = true is not set on the point)")
    if point.scale_exponent is not None:
        raise ValueError(
            f"its scale comes from point {point.scale_exponent} (scale_exponent): writing it "
            "is not supported"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    try:
        raw = encode(point, value)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix(f"point {point.name}: ")) from None
    if len(raw) > MAX_WRITE_REGISTERS:
        raise ValueError(
            f"{len(raw)} registers are more than one write can carry ({MAX_WRITE_REGISTERS})"
        )
    try:
        written = decode(point, raw)
    except NotAvailable:
        raise ValueError(f'{value!r} is the device\'s own "not available" value') from None
    if isinstance(written, int | float) and not isinstance(written, bool):
        # The caller checked value against min/max; rounding to a raw value may cross them.
        if point.min is not None and written < point.min:
            raise ValueError(
                f"{value!r} would be {written!r} on the device, below min {point.min:g}"
            )
        if point.max is not None and written > point.max:
            raise ValueError(
                f"{value!r} would be {written!r} on the device, above max {point.max:g}"
            )
    return raw


def plan_write(
    point: ModbusPoint, raw: Sequence[int] | Sequence[bool], write_multiple: bool = False
) -> Write:
    """The request that writes ``raw`` (from ``encode_write``, with a bit point's register
    merged) to ``point``: FC 5 for a coil, FC 6 for one register, FC 16 for more; FC 15/16
    always with ``write_multiple``."""
    if point.table in BIT_TABLES:
        function = WRITE_COILS if write_multiple else WRITE_COIL
        return Write(point, function, tuple(bool(v) for v in raw))
    function = WRITE_REGISTERS if write_multiple or len(raw) > 1 else WRITE_REGISTER
    return Write(point, function, tuple(int(v) for v in raw))
