"""The register codec: known register contents for every type and order, and round trips."""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import Value
from drivers.modbus.codec import (
    NotAvailable,
    RequestDecoder,
    apply_exponents,
    decode,
    encode,
    int_range,
)
from drivers.modbus.schema import ORDERS, ModbusPoint, PointType, WordOrder

INT_TYPES: tuple[PointType, ...] = ("int16", "uint16", "int32", "uint32", "int64", "uint64")
#: Each property runs once per type x order: fewer examples per run keep the whole file fast.
PER_COMBINATION = settings(max_examples=30)


def point(type_: PointType, order: WordOrder = "ABCD", **kwargs: object) -> ModbusPoint:
    return ModbusPoint(name="p", type=type_, order=order, **kwargs)  # type: ignore[arg-type]


# (type, order, registers, value): computed by hand from the value's big-endian bytes
# A B C D (E F G H): CDAB reverses the registers, BADC swaps the bytes in each, DCBA does both.
KNOWN: list[tuple[PointType, WordOrder, list[int], Value]] = [
    ("uint16", "ABCD", [0x019A], 410),
    ("uint16", "CDAB", [0x019A], 410),
    ("uint16", "BADC", [0x9A01], 410),
    ("uint16", "DCBA", [0x9A01], 410),
    ("int16", "ABCD", [0xFF85], -123),
    ("int16", "BADC", [0x85FF], -123),
    ("int32", "ABCD", [0xFFFF, 0xFFFE], -2),
    ("int32", "CDAB", [0xFFFE, 0xFFFF], -2),
    ("int32", "BADC", [0xFFFF, 0xFEFF], -2),
    ("int32", "DCBA", [0xFEFF, 0xFFFF], -2),
    ("uint32", "ABCD", [0x1234, 0x5678], 0x12345678),
    ("uint32", "CDAB", [0x5678, 0x1234], 0x12345678),
    ("uint32", "BADC", [0x3412, 0x7856], 0x12345678),
    ("uint32", "DCBA", [0x7856, 0x3412], 0x12345678),
    ("uint64", "ABCD", [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
    ("uint64", "CDAB", [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
    ("uint64", "BADC", [0x0201, 0x0403, 0x0605, 0x0807], 0x0102030405060708),
    ("uint64", "DCBA", [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
    ("uint64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], 2**64 - 1),
    ("int64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2),
    ("int64", "CDAB", [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], -2),
    ("int64", "BADC", [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], -2),
    ("int64", "DCBA", [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF], -2),
    ("float32", "ABCD", [0x3FC0, 0x0000], 1.5),
    ("float32", "CDAB", [0x0000, 0x3FC0], 1.5),
    ("float32", "BADC", [0xC03F, 0x0000], 1.5),
    ("float32", "DCBA", [0x0000, 0xC03F], 1.5),
    ("float32", "ABCD", [0xC020, 0x0000], -2.5),
    ("float64", "ABCD", [0x3FF8, 0, 0, 0], 1.5),
    ("float64", "CDAB", [0, 0, 0, 0x3FF8], 1.5),
    ("float64", "BADC", [0xF83F, 0, 0, 0], 1.5),
    ("float64", "DCBA", [0, 0, 0, 0xF83F], 1.5),
    ("float64", "ABCD", [0x4009, 0x21FB, 0x5444, 0x2D18], math.pi),
]


@pytest.mark.parametrize(("type_", "order", "registers", "value"), KNOWN)
def test_decode_known_registers(
    type_: PointType, order: WordOrder, registers: list[int], value: Value
) -> None:
    decoded = decode(point(type_, order), registers)
    assert decoded == value
    assert type(decoded) is type(value)


@pytest.mark.parametrize(("type_", "order", "registers", "value"), KNOWN)
def test_encode_known_values(
    type_: PointType, order: WordOrder, registers: list[int], value: Value
) -> None:
    assert encode(point(type_, order), value) == registers


def test_integers_stay_integers_without_scaling() -> None:
    assert decode(point("uint16"), [410]) == 410
    assert isinstance(decode(point("uint16"), [410]), int)


def test_scale_and_offset_give_floats() -> None:
    scaled = point("uint16", scale=0.5, offset=-40.0)
    assert decode(scaled, [410]) == 165.0
    assert isinstance(decode(scaled, [410]), float)
    assert encode(scaled, 165.0) == [410]
    # Scaling noise is cut (2301 * 0.1 is 230.10000000000002 in binary floating point)
    assert decode(point("uint16", scale=0.1), [2301]) == 230.1
    assert decode(point("uint16", scale=0.1), [993]) == 99.3


def test_float32_carries_its_own_digits_not_the_doubles() -> None:
    registers = encode(point("float32"), 231.2)
    assert decode(point("float32"), registers) == 231.2  # not 231.1999969482422
    assert str(decode(point("float32"), encode(point("float32"), 0.1))) == "0.1"


def test_scale_applies_to_floats_too() -> None:
    assert decode(point("float32", scale=1000.0), [0x3FC0, 0x0000]) == 1500.0


def test_encode_rounds_to_the_nearest_raw_value() -> None:
    assert encode(point("int16", scale=0.1), -12.34) == [0xFF85]  # -123.4 -> -123


def test_nan_and_infinity_pass_through() -> None:
    assert math.isnan(decode(point("float32"), [0x7FC0, 0x0000]))  # type: ignore[arg-type]
    assert decode(point("float32"), [0x7F80, 0x0000]) == math.inf
    assert decode(point("float64", scale=2.0), [0xFFF0, 0, 0, 0]) == -math.inf


def test_bool_on_registers_is_nonzero() -> None:
    assert decode(point("bool"), [0]) is False
    assert decode(point("bool"), [0x8000]) is True
    assert encode(point("bool"), True) == [1]
    assert encode(point("bool"), 0) == [0]


def test_bit_tables_give_bools() -> None:
    coil = ModbusPoint(name="relay", table="coil", type="bool")
    assert decode(coil, [True]) is True
    assert decode(replace(coil, table="discrete"), [False]) is False
    assert encode(coil, True) == [True]


def test_strings() -> None:
    serial = point("string", length=6)
    assert decode(serial, [0x5344, 0x4D36, 0x3330]) == "SDM630"
    assert decode(replace(serial, order="BADC"), [0x4453, 0x364D, 0x3033]) == "SDM630"
    assert encode(serial, "SDM630") == [0x5344, 0x4D36, 0x3330]
    assert encode(replace(serial, order="BADC"), "SDM630") == [0x4453, 0x364D, 0x3033]


def test_strings_lose_padding_and_odd_bytes() -> None:
    assert decode(point("string", length=5), [0x4142, 0x2000, 0x0000]) == "AB"
    assert decode(point("string", length=3), [0x4142, 0x4344]) == "ABC"  # D is beyond length
    assert encode(point("string", length=3), "AB") == [0x4142, 0x0000]


def test_strings_replace_non_ascii_bytes() -> None:
    assert decode(point("string", length=2), [0x41B0]) == "A\ufffd"


@pytest.mark.parametrize(
    ("config", "value", "message"),
    [
        (point("uint16"), 65536, "out of range for uint16"),
        (point("uint16"), -1, "out of range"),
        (point("int16", scale=0.1), 3276.8, "out of range"),
        (point("int64"), 2**63, "out of range"),
        (point("uint32"), math.inf, "not a finite number"),
        (point("float32"), 1e39, "does not fit float32"),
        (point("uint16"), "12", "expected a number"),
        (point("uint16"), True, "expected a number"),
        (point("bool"), 2, "expected a boolean"),
        (point("string", length=2), "ABC", "longer than 2"),
        (point("string", length=4), "°C", "not ASCII"),
        (point("string", length=4), 12, "expected a string"),
    ],
)
def test_encode_refuses_what_does_not_fit(config: ModbusPoint, value: Value, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        encode(config, value)
    assert "point p" in str(caught.value)


def test_decode_refuses_a_wrong_number_of_registers() -> None:
    with pytest.raises(ValueError, match="expected 2 values, got 1"):
        decode(point("float32"), [0])


# --- round trips -------------------------------------------------------------------------------


def _int_values(type_: PointType) -> st.SearchStrategy[int]:
    low, high = int_range(type_)
    return st.integers(low, high)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", INT_TYPES)
@PER_COMBINATION
@given(data=st.data())
def test_integers_round_trip(type_: PointType, order: WordOrder, data: st.DataObject) -> None:
    value = data.draw(_int_values(type_))
    config = point(type_, order)
    registers = encode(config, value)
    assert len(registers) == config.count
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode(config, registers) == value


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("type_", "width"), [("float32", 32), ("float64", 64)])
@PER_COMBINATION
@given(data=st.data())
def test_floats_round_trip(
    type_: PointType, width: int, order: WordOrder, data: st.DataObject
) -> None:
    value = data.draw(st.floats(width=width))  # type: ignore[arg-type]
    config = point(type_, order)
    decoded = decode(config, encode(config, value))
    assert isinstance(decoded, float)
    if math.isnan(value):
        assert math.isnan(decoded)
    elif type_ == "float32":  # the shortest decimal of the same float32, not the widened double
        assert struct.pack(">f", decoded) == struct.pack(">f", value)
        assert len(repr(decoded)) <= len(repr(value))
    else:
        assert decoded == value


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", INT_TYPES)
@PER_COMBINATION
@given(data=st.data())
def test_registers_round_trip(type_: PointType, order: WordOrder, data: st.DataObject) -> None:
    config = point(type_, order)
    registers = data.draw(
        st.lists(st.integers(0, 0xFFFF), min_size=config.count, max_size=config.count)
    )
    assert encode(config, decode(config, registers)) == registers


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", INT_TYPES)
@PER_COMBINATION
@given(data=st.data())
def test_scaled_integers_round_trip(
    type_: PointType, order: WordOrder, data: st.DataObject
) -> None:
    # Within 2**40 float arithmetic is exact enough for (raw * scale + offset - offset) / scale.
    low, high = int_range(type_)
    raw = data.draw(st.integers(max(low, -(2**40)), min(high, 2**40)))
    scale = data.draw(st.sampled_from([0.1, 0.01, 0.5, 10.0, -1.0]))
    offset = data.draw(st.sampled_from([0.0, -40.0, 273.15]))
    registers = encode(point(type_, order), raw)
    scaled = point(type_, order, scale=scale, offset=offset)
    assert encode(scaled, decode(scaled, registers)) == registers


@pytest.mark.parametrize("order", ORDERS)
@PER_COMBINATION
@given(
    # Printable ASCII; trailing spaces are padding by definition, so the text has none.
    text=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E)).map(str.rstrip),
    spare=st.integers(0, 3),
)
def test_strings_round_trip(order: WordOrder, text: str, spare: int) -> None:
    config = point("string", order, length=max(1, len(text) + spare))
    assert decode(config, encode(config, text)) == text


@given(value=st.booleans())
def test_bools_round_trip(value: bool) -> None:
    assert decode(point("bool"), encode(point("bool"), value)) is value


def test_a_garbage_scale_factor_drops_the_value_with_an_error() -> None:
    power = ModbusPoint(
        "power", table="holding", address=0, type="int16", scale_exponent="power_sf"
    )
    exponent = ModbusPoint("power_sf", table="holding", address=1, type="int16")
    errors: list[str] = []
    values = apply_exponents([power, exponent], {"power": 1234, "power_sf": 0x7FFF}, errors)
    assert "power" not in values
    assert errors == [
        "point power: scale factor power_sf = 32767 is not plausible (SunSpec allows -10..10)"
    ]
    assert apply_exponents([power, exponent], {"power": 1234, "power_sf": -1}, []) == {
        "power": 123.4,
        "power_sf": -1,
    }


# --- a read's decoder, compiled once --------------------------------------------------------

READ_TYPES: tuple[PointType, ...] = (*INT_TYPES, "float32", "float64", "string", "bool")
SENTINELS = {"int16": (-32768,), "uint16": (0xFFFF,), "float32": (math.nan,)}


@st.composite
def read_points(draw: st.DrawFn) -> tuple[int, list[ModbusPoint]]:
    """The points of one read: any types and orders, scaled or not, with gaps, overlaps (two
    points on one register) and "not available" values, in any order."""
    start = draw(st.integers(0, 5))
    points, at = [], start
    for index in range(draw(st.integers(1, 8))):
        type_ = draw(st.sampled_from(READ_TYPES))
        options: dict[str, object] = {}
        if type_ == "string":
            options["length"] = draw(st.integers(1, 6))
        if type_ == "bool" and draw(st.booleans()):
            options["bit"] = draw(st.integers(0, 15))
        if type_ not in ("string", "bool") and draw(st.booleans()):
            options["scale"] = draw(st.sampled_from([0.1, 2, 1]))
            options["offset"] = draw(st.sampled_from([0, 1.5]))
        if type_ in SENTINELS and draw(st.booleans()):
            options["not_available"] = SENTINELS[type_]
        address = max(start, at + draw(st.integers(-1, 2)))
        order = draw(st.sampled_from(ORDERS))
        points.append(ModbusPoint(f"p{index}", address=address, type=type_, order=order, **options))  # type: ignore[arg-type]
        at = max(at, address + points[-1].count)
    return start, draw(st.permutations(points))


def same_values(got: dict[str, Value], expected: dict[str, Value]) -> bool:
    """Equal, in the same order and of the same types, a NaN equal to a NaN."""
    if list(got) != list(expected):
        return False
    return all(
        type(a) is type(b)
        and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))  # type: ignore[arg-type]
        for a, b in zip(got.values(), expected.values(), strict=True)
    )


@settings(max_examples=400)
@given(read=read_points(), data=st.data())
def test_a_reads_decoder_decodes_as_decode_does_point_by_point(
    read: tuple[int, list[ModbusPoint]], data: st.DataObject
) -> None:
    start, points = read
    count = max(p.address + p.count for p in points) - start
    register = st.sampled_from([0, 0xFFFF, 0x8000, 0x7FC0, 0x019A]) | st.integers(0, 0xFFFF)
    raw = data.draw(st.lists(register, min_size=count, max_size=count))
    expected: dict[str, Value] = {}
    for p in points:
        with contextlib.suppress(NotAvailable):
            expected[p.name] = decode(p, raw[p.address - start : p.address - start + p.count])
    errors: list[str] = []
    assert same_values(RequestDecoder(points, start)(raw, errors), expected)
    assert not errors


def test_a_reads_decoder_given_too_few_registers_decodes_what_it_can() -> None:
    points = [ModbusPoint("p", address=0), ModbusPoint("f", address=1, type="float32")]
    errors: list[str] = []
    assert RequestDecoder(points, 0)([7, 0x4348], errors) == {"p": 7}
    assert errors == ["point f: expected 2 values, got 1"]
