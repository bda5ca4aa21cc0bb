"""Sparkplug B payloads in protobuf's wire format, written by hand for the part of the
specification's ``Payload`` message an edge node sends and reads: the payload's timestamp and
``seq``, and metrics with name, alias, timestamp, datatype, historical and null flags, a
property set, and a value of any basic type.

Why by hand: the official ``protobuf`` runtime adds a native module (or a slow pure-Python one)
and megabytes on a 512 MB gateway for a message this small; the codec is proven against that
runtime in the tests, both ways, for every datatype. Decoding is strict where a host's mistake
must be caught (a truncated field, a wrong wire type) and skips fields it does not know, as
protobuf does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

PropertyValue = bool | int | float | str | None
MetricValue = bool | int | float | str | bytes | None


class SparkplugError(ValueError):
    """A payload that is not a Sparkplug B payload; the message says where it went wrong."""


class DataType(IntEnum):
    """Sparkplug B datatypes (the specification's numbers)."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    BYTES = 17
    FILE = 18


#: Integer datatypes: (bits, signed).
INTEGERS = {
    DataType.INT8: (8, True),
    DataType.INT16: (16, True),
    DataType.INT32: (32, True),
    DataType.INT64: (64, True),
    DataType.UINT8: (8, False),
    DataType.UINT16: (16, False),
    DataType.UINT32: (32, False),
    DataType.UINT64: (64, False),
    DataType.DATETIME: (64, False),
}
TEXTS = (DataType.STRING, DataType.TEXT, DataType.UUID)
BLOBS = (DataType.BYTES, DataType.FILE)

# Wire types, and the field numbers of the specification's .proto.
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_P_TIMESTAMP, _P_METRICS, _P_SEQ = 1, 2, 3
_M_NAME, _M_ALIAS, _M_TIMESTAMP, _M_DATATYPE = 1, 2, 3, 4
_M_HISTORICAL, _M_TRANSIENT, _M_NULL, _M_PROPERTIES = 5, 6, 7, 9
_S_KEYS, _S_VALUES = 1, 2
_V_TYPE, _V_NULL = 1, 2
_U64 = (1 << 64) - 1


class _ValueFields(NamedTuple):
    """Where a metric, or a property, holds its value: one field per kind (the ``oneof``)."""

    int_value: int
    long_value: int
    float_value: int
    double_value: int
    boolean_value: int
    string_value: int
    bytes_value: int | None


_METRIC_VALUE = _ValueFields(10, 11, 12, 13, 14, 15, 16)
_PROPERTY_VALUE = _ValueFields(3, 4, 5, 6, 7, 8, None)  # a property holds no bytes


@dataclass
class Metric:
    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    value: MetricValue = None
    is_historical: bool = False
    is_transient: bool = False
    #: Properties (units, engineering scale…), each a (datatype, value) pair.
    properties: dict[str, tuple[int, PropertyValue]] = field(default_factory=dict)

    @property
    def is_null(self) -> bool:
        return self.value is None


@dataclass
class Payload:
    timestamp: int | None = None
    metrics: list[Metric] = field(default_factory=list)
    seq: int | None = None


# --- encoding


def encode(payload: Payload) -> bytes:
    """The payload's bytes, as the specification's ``Payload`` message; ``SparkplugError``
    when a value cannot be sent as its metric's datatype."""
    try:
        return _encode_payload(payload)
    except SparkplugError:
        raise
    except (OverflowError, UnicodeError, ValueError) as exc:  # a float32 out of range, a lone
        raise SparkplugError(f"cannot be encoded: {exc}") from None  # surrogate, a datatype


def _encode_payload(payload: Payload) -> bytes:
    out = bytearray()
    if payload.timestamp is not None:
        _varint_field(out, _P_TIMESTAMP, payload.timestamp)
    for metric in payload.metrics:
        _bytes_field(out, _P_METRICS, _encode_metric(metric))
    if payload.seq is not None:
        _varint_field(out, _P_SEQ, payload.seq)
    return bytes(out)


def _encode_metric(metric: Metric) -> bytes:
    out = bytearray()
    if metric.name is not None:
        _bytes_field(out, _M_NAME, metric.name.encode())
    if metric.alias is not None:
        _varint_field(out, _M_ALIAS, metric.alias)
    if metric.timestamp is not None:
        _varint_field(out, _M_TIMESTAMP, metric.timestamp)
    if metric.datatype is not None:
        _varint_field(out, _M_DATATYPE, metric.datatype)
    if metric.is_historical:
        _varint_field(out, _M_HISTORICAL, 1)
    if metric.is_transient:
        _varint_field(out, _M_TRANSIENT, 1)
    if metric.value is None:
        _varint_field(out, _M_NULL, 1)
    if metric.properties:
        _bytes_field(out, _M_PROPERTIES, _encode_properties(metric.properties))
    if metric.value is not None:
        _encode_value(out, _METRIC_VALUE, DataType(metric.datatype or 0), metric.value)
    return bytes(out)


def _encode_value(
    out: bytearray, fields: _ValueFields, datatype: DataType, value: MetricValue
) -> None:
    """``value`` in the field of ``fields`` that ``datatype`` takes; refused when it cannot."""
    if datatype in INTEGERS:
        bits, _ = INTEGERS[datatype]
        # Signed values below 64 bits as 32-bit two's complement in the uint32 field, as Tahu
        # writes them; a decoder sign-extends from the datatype's own width.
        width = 64 if bits == 64 else 32
        number = _integer(value, datatype) & ((1 << width) - 1)
        _varint_field(out, fields.long_value if bits == 64 else fields.int_value, number)
    elif datatype == DataType.FLOAT:
        _key(out, fields.float_value, _FIXED32)
        out += struct.pack("<f", _real(value, datatype))
    elif datatype == DataType.DOUBLE:
        _key(out, fields.double_value, _FIXED64)
        out += struct.pack("<d", _real(value, datatype))
    elif datatype == DataType.BOOLEAN:
        if not isinstance(value, bool):
            raise SparkplugError(f"a Boolean metric takes true or false, not {value!r}")
        _varint_field(out, fields.boolean_value, int(value))
    elif datatype in TEXTS:
        if not isinstance(value, str):
            raise SparkplugError(f"a {datatype.name} metric takes a string, not {value!r}")
        _bytes_field(out, fields.string_value, value.encode())
    elif datatype in BLOBS and fields.bytes_value is not None:
        if not isinstance(value, bytes):
            raise SparkplugError(f"a {datatype.name} metric takes bytes, not {value!r}")
        _bytes_field(out, fields.bytes_value, value)
    else:
        raise SparkplugError(f"no value of datatype {int(datatype)} can be sent there")


def integer_range(datatype: DataType) -> tuple[int, int]:
    """The lowest and highest value of an integer datatype."""
    bits, signed = INTEGERS[datatype]
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _integer(value: MetricValue, datatype: DataType) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SparkplugError(f"a {datatype.name} metric takes an integer, not {value!r}")
    low, high = integer_range(datatype)
    if not low <= value <= high:
        raise SparkplugError(f"{value} does not fit a {datatype.name} metric ({low} to {high})")
    return value


def _real(value: MetricValue, datatype: DataType) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SparkplugError(f"a {datatype.name} metric takes a number, not {value!r}")
    return float(value)


def _encode_properties(properties: dict[str, tuple[int, PropertyValue]]) -> bytes:
    out = bytearray()
    for key in properties:
        _bytes_field(out, _S_KEYS, key.encode())
    for datatype, value in properties.values():
        _bytes_field(out, _S_VALUES, _encode_property(DataType(datatype), value))
    return bytes(out)


def _encode_property(datatype: DataType, value: PropertyValue) -> bytes:
    out = bytearray()
    _varint_field(out, _V_TYPE, int(datatype))
    if value is None:
        _varint_field(out, _V_NULL, 1)
    else:
        _encode_value(out, _PROPERTY_VALUE, datatype, value)
    return bytes(out)


def _key(out: bytearray, number: int, wire: int) -> None:
    _varint(out, number << 3 | wire)


def _varint_field(out: bytearray, number: int, value: int) -> None:
    _key(out, number, _VARINT)
    _varint(out, value)


def _bytes_field(out: bytearray, number: int, data: bytes) -> None:
    _key(out, number, _LENGTH)
    _varint(out, len(data))
    out += data


def _varint(out: bytearray, value: int) -> None:
    if not 0 <= value <= _U64:
        raise SparkplugError(f"{value} does not fit 64 bits")
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


# --- decoding


def decode(data: bytes) -> Payload:
    """The payload in ``data``; ``SparkplugError`` when it is not one."""
    payload = Payload()
    for number, wire, value in _fields(data, "payload"):
        if number == _P_TIMESTAMP:
            payload.timestamp = _as_int(value, wire, "payload.timestamp")
        elif number == _P_SEQ:
            payload.seq = _as_int(value, wire, "payload.seq")
        elif number == _P_METRICS:
            payload.metrics.append(_decode_metric(_as_bytes(value, wire, "payload.metrics")))
    return payload


def _decode_metric(data: bytes) -> Metric:
    metric = Metric()
    raw: tuple[int, int, int | bytes] | None = None
    is_null = False
    for number, wire, value in _fields(data, "metric"):
        if number == _M_NAME:
            metric.name = _text(_as_bytes(value, wire, "metric.name"), "metric.name")
        elif number == _M_ALIAS:
            metric.alias = _as_int(value, wire, "metric.alias")
        elif number == _M_TIMESTAMP:
            metric.timestamp = _as_int(value, wire, "metric.timestamp")
        elif number == _M_DATATYPE:
            metric.datatype = _as_int(value, wire, "metric.datatype")
        elif number == _M_HISTORICAL:
            metric.is_historical = bool(_as_int(value, wire, "metric.is_historical"))
        elif number == _M_TRANSIENT:
            metric.is_transient = bool(_as_int(value, wire, "metric.is_transient"))
        elif number == _M_NULL:
            is_null = bool(_as_int(value, wire, "metric.is_null"))
        elif number == _M_PROPERTIES:
            metric.properties = _decode_properties(_as_bytes(value, wire, "metric.properties"))
        elif number in _METRIC_VALUE:
            raw = (number, wire, value)
    if raw is not None and not is_null:
        metric.value = _decoded_value(_METRIC_VALUE, metric.datatype, *raw, "metric value")
    return metric


def _decoded_value(
    fields: _ValueFields,
    datatype: int | None,
    number: int,
    wire: int,
    value: int | bytes,
    what: str,
) -> MetricValue:
    """The value held in field ``number`` of ``fields``, an integer sign-extended as its
    ``datatype`` says."""
    if number in (fields.int_value, fields.long_value):
        integer = _as_int(value, wire, what)
        kind = DataType.UNKNOWN
        if datatype is not None and datatype in DataType._value2member_map_:
            kind = DataType(datatype)
        return integer_from_wire(integer, kind) if kind in INTEGERS else integer
    if number == fields.boolean_value:
        return bool(_as_int(value, wire, what))
    if number == fields.float_value:
        return float(struct.unpack("<f", _as_fixed(value, wire, _FIXED32, what))[0])
    if number == fields.double_value:
        return float(struct.unpack("<d", _as_fixed(value, wire, _FIXED64, what))[0])
    if number == fields.string_value:
        return _text(_as_bytes(value, wire, what), what)
    return _as_bytes(value, wire, what)


def _decode_properties(data: bytes) -> dict[str, tuple[int, PropertyValue]]:
    keys: list[str] = []
    values: list[tuple[int, PropertyValue]] = []
    for number, wire, value in _fields(data, "properties"):
        if number == _S_KEYS:
            keys.append(_text(_as_bytes(value, wire, "properties.keys"), "properties.keys"))
        elif number == _S_VALUES:
            values.append(_decode_property(_as_bytes(value, wire, "properties.values")))
    if len(keys) != len(values):
        raise SparkplugError(f"properties: {len(keys)} keys for {len(values)} values")
    return dict(zip(keys, values, strict=True))


def _decode_property(data: bytes) -> tuple[int, PropertyValue]:
    datatype, is_null = 0, False
    raw: tuple[int, int, int | bytes] | None = None
    for number, wire, value in _fields(data, "property"):
        if number == _V_TYPE:
            datatype = _as_int(value, wire, "property.type")
        elif number == _V_NULL:
            is_null = bool(_as_int(value, wire, "property.is_null"))
        elif number in _PROPERTY_VALUE and number != _PROPERTY_VALUE.bytes_value:
            raw = (number, wire, value)
    if raw is None or is_null:
        return datatype, None
    found = _decoded_value(_PROPERTY_VALUE, datatype, *raw, "property value")
    assert not isinstance(found, bytes)  # a property holds no bytes: not taken above
    return datatype, found


def integer_from_wire(raw: int, datatype: DataType) -> int:
    """The integer an int or long field holding ``raw`` carries as ``datatype``: a negative
    number below 64 bits is its two's complement in 32 bits (as Tahu writes it) or 64 bits
    (as protobuf writes an int32). Anything else (a value wider than the datatype, high bits
    that are not a sign extension) is refused, never cut to another number."""
    bits, signed = INTEGERS[datatype]
    if not signed:
        if raw >> bits:
            raise SparkplugError(f"{raw} does not fit a {datatype.name}")
        return raw
    half = 1 << (bits - 1)
    if raw < half:
        return raw
    for width in (32, 64) if bits <= 32 else (64,):
        if (1 << width) - half <= raw < 1 << width:
            return raw - (1 << width)
    raise SparkplugError(f"{raw} is not a {datatype.name} (a value beyond it, or not its sign)")


def _fields(data: bytes, what: str) -> list[tuple[int, int, int | bytes]]:
    """Each field of a message: (number, wire type, an integer or the bytes it holds)."""
    found: list[tuple[int, int, int | bytes]] = []
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at, what)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise SparkplugError(f"{what}: field number 0 at byte {at}")
        if wire == _VARINT:
            value, at = _read_varint(data, at, what)
            found.append((number, wire, value))
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if at + size > len(data):
                raise SparkplugError(f"{what}: field {number} cut short")
            found.append((number, wire, data[at : at + size]))
            at += size
        elif wire == _LENGTH:
            size, at = _read_varint(data, at, what)
            if at + size > len(data):
                raise SparkplugError(f"{what}: field {number} is {size} bytes, fewer remain")
            found.append((number, wire, data[at : at + size]))
            at += size
        else:
            raise SparkplugError(f"{what}: field {number} has wire type {wire}, not Sparkplug's")
    return found


def _read_varint(data: bytes, at: int, what: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise SparkplugError(f"{what}: a number cut short at byte {at}")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & _U64, at
        shift += 7
        if shift >= 70:
            raise SparkplugError(f"{what}: a number longer than 10 bytes at byte {at}")


def _as_int(value: int | bytes, wire: int, what: str) -> int:
    if wire != _VARINT or not isinstance(value, int):
        raise SparkplugError(f"{what}: expected a number (wire type 0), got wire type {wire}")
    return value


def _as_bytes(value: int | bytes, wire: int, what: str) -> bytes:
    if wire != _LENGTH or not isinstance(value, bytes):
        raise SparkplugError(f"{what}: expected bytes (wire type 2), got wire type {wire}")
    return value


def _as_fixed(value: int | bytes, wire: int, expected: int, what: str) -> bytes:
    if wire != expected or not isinstance(value, bytes):
        raise SparkplugError(f"{what}: expected wire type {expected}, got {wire}")
    return value


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SparkplugError(f"{what}: not UTF-8 ({exc.reason})") from None
