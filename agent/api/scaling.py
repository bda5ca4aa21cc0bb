"""One rule for turning a raw number into a reading: ``raw * scale + offset``."""

from __future__ import annotations

from ..model import Value
from .config import PointConfig

#: Significant digits a scaled reading keeps: every digit a 64-bit register can mean, and none
#: of binary floating point's noise (993 * 0.1 is 99.30000000000001; the reading is 99.3).
DIGITS = 15


def scaled(point: PointConfig, raw: Value) -> Value:
    """``raw`` scaled by the point's ``scale`` and ``offset``; a bool or a string as it is, and
    a number as it is under the identity scaling (an integer stays an integer)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return raw
    if point.scale == 1 and point.offset == 0:
        return raw
    return significant(raw * point.scale + point.offset)


def significant(number: float, digits: int = DIGITS) -> float:
    """``number`` rounded to ``digits`` significant digits."""
    return float(f"{number:.{digits}g}")
