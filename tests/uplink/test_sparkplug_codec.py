"""The hand-written Sparkplug B codec against the official ``protobuf`` runtime, both ways, for
every datatype the agent sends: the ``Payload`` message is described here, field by field,
from the Sparkplug 3.0 specification's ``.proto`` (package ``org.eclipse.tahu.protobuf``), and
the runtime builds its class from that description: no generated code, no ``protoc``."""

from __future__ import annotations

import contextlib
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.uplink.sparkplug.codec import (
    BLOBS,
    INTEGERS,
    TEXTS,
    DataType,
    Metric,
    Payload,
    SparkplugError,
    decode,
    encode,
)

descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
message_factory = pytest.importorskip("google.protobuf.message_factory")
descriptor_pool = pytest.importorskip("google.protobuf.descriptor_pool")

F = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = F.LABEL_OPTIONAL, F.LABEL_REPEATED

# (name, number, type, label, message type): the specification's fields the agent uses.
PROPERTY_VALUE = [
    ("type", 1, F.TYPE_UINT32, OPTIONAL, None),
    ("is_null", 2, F.TYPE_BOOL, OPTIONAL, None),
    ("int_value", 3, F.TYPE_UINT32, OPTIONAL, None),
    ("long_value", 4, F.TYPE_UINT64, OPTIONAL, None),
    ("float_value", 5, F.TYPE_FLOAT, OPTIONAL, None),
    ("double_value", 6, F.TYPE_DOUBLE, OPTIONAL, None),
    ("boolean_value", 7, F.TYPE_BOOL, OPTIONAL, None),
    ("string_value", 8, F.TYPE_STRING, OPTIONAL, None),
]
PROPERTY_SET = [
    ("keys", 1, F.TYPE_STRING, REPEATED, None),
    ("values", 2, F.TYPE_MESSAGE, REPEATED, "PropertyValue"),
]
METRIC = [
    ("name", 1, F.TYPE_STRING, OPTIONAL, None),
    ("alias", 2, F.TYPE_UINT64, OPTIONAL, None),
    ("timestamp", 3, F.TYPE_UINT64, OPTIONAL, None),
    ("datatype", 4, F.TYPE_UINT32, OPTIONAL, None),
    ("is_historical", 5, F.TYPE_BOOL, OPTIONAL, None),
    ("is_transient", 6, F.TYPE_BOOL, OPTIONAL, None),
    ("is_null", 7, F.TYPE_BOOL, OPTIONAL, None),
    ("properties", 9, F.TYPE_MESSAGE, OPTIONAL, "PropertySet"),
    ("int_value", 10, F.TYPE_UINT32, OPTIONAL, None),
    ("long_value", 11, F.TYPE_UINT64, OPTIONAL, None),
    ("float_value", 12, F.TYPE_FLOAT, OPTIONAL, None),
    ("double_value", 13, F.TYPE_DOUBLE, OPTIONAL, None),
    ("boolean_value", 14, F.TYPE_BOOL, OPTIONAL, None),
    ("string_value", 15, F.TYPE_STRING, OPTIONAL, None),
    ("bytes_value", 16, F.TYPE_BYTES, OPTIONAL, None),
]
PAYLOAD = [
    ("timestamp", 1, F.TYPE_UINT64, OPTIONAL, None),
    ("metrics", 2, F.TYPE_MESSAGE, REPEATED, "Metric"),
    ("seq", 3, F.TYPE_UINT64, OPTIONAL, None),
    ("uuid", 4, F.TYPE_STRING, OPTIONAL, None),
    ("body", 5, F.TYPE_BYTES, OPTIONAL, None),
]
#: The value fields of a metric, one of which is set (the .proto's ``oneof value``).
ONEOF = {"int_value", "long_value", "float_value", "double_value", "boolean_value"}
ONEOF |= {"string_value", "bytes_value"}


def _reference() -> Any:
    package = "org.eclipse.tahu.protobuf"
    proto = descriptor_pb2.FileDescriptorProto(
        name="sparkplug_b_test.proto", package=package, syntax="proto2"
    )
    payload = proto.message_type.add(name="Payload")
    for name, fields in (
        ("PropertyValue", PROPERTY_VALUE),
        ("PropertySet", PROPERTY_SET),
        ("Metric", METRIC),
    ):
        nested = payload.nested_type.add(name=name)
        for field, number, kind, label, of in fields:
            described = nested.field.add(name=field, number=number, type=kind, label=label)
            if of is not None:
                described.type_name = f".{package}.Payload.{of}"
            if nested.name == "Metric" and field in ONEOF:
                described.oneof_index = 0
        if name == "Metric":
            nested.oneof_decl.add(name="value")
    for field, number, kind, label, of in PAYLOAD:
        described = payload.field.add(name=field, number=number, type=kind, label=label)
        if of is not None:
            described.type_name = f".{package}.Payload.{of}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.Payload"))


ReferencePayload = _reference()


def _float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def values_of(datatype: DataType) -> st.SearchStrategy[Any]:
    if datatype in INTEGERS:
        bits, signed = INTEGERS[datatype]
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        return st.integers(low, high)
    if datatype == DataType.FLOAT:
        return st.floats(width=32, allow_nan=False)
    if datatype == DataType.DOUBLE:
        return st.floats(allow_nan=False)
    if datatype == DataType.BOOLEAN:
        return st.booleans()
    if datatype in TEXTS:
        return st.text()
    assert datatype in BLOBS
    return st.binary()


SENT = [d for d in DataType if d != DataType.UNKNOWN]


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    datatype = draw(st.sampled_from(SENT))
    value = draw(st.none() | values_of(datatype))
    return Metric(
        name=draw(st.none() | st.text(max_size=20)),
        alias=draw(st.none() | st.integers(0, 2**64 - 1)),
        timestamp=draw(st.none() | st.integers(0, 2**64 - 1)),
        datatype=int(datatype),
        value=value,
        is_historical=draw(st.booleans()),
        is_transient=draw(st.booleans()),
        properties=draw(
            st.dictionaries(
                st.text(max_size=8),
                st.sampled_from([DataType.STRING, DataType.INT32, DataType.DOUBLE]).flatmap(
                    lambda d: st.tuples(st.just(int(d)), st.none() | values_of(d))
                ),
                max_size=3,
            )
        ),
    )


payloads = st.builds(
    Payload,
    timestamp=st.none() | st.integers(0, 2**64 - 1),
    metrics=st.lists(metrics(), max_size=5),
    seq=st.none() | st.integers(0, 255),
)


def _reference_value(datatype: DataType, metric: Any) -> Any:
    if metric.is_null:
        return None
    field = metric.WhichOneof("value")
    raw = getattr(metric, field)
    if datatype in INTEGERS:
        bits, signed = INTEGERS[datatype]
        raw &= (1 << bits) - 1
        return raw - (1 << bits) if signed and raw >> (bits - 1) else raw
    return raw


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_what_the_agent_encodes_the_official_runtime_reads(payload: Payload) -> None:
    reference = ReferencePayload.FromString(encode(payload))
    assert (reference.timestamp if reference.HasField("timestamp") else None) == payload.timestamp
    assert (reference.seq if reference.HasField("seq") else None) == payload.seq
    assert len(reference.metrics) == len(payload.metrics)
    for sent, read in zip(payload.metrics, reference.metrics, strict=True):
        assert (read.name if read.HasField("name") else None) == sent.name
        assert (read.alias if read.HasField("alias") else None) == sent.alias
        assert (read.timestamp if read.HasField("timestamp") else None) == sent.timestamp
        assert read.datatype == sent.datatype
        assert (read.is_historical, read.is_transient) == (sent.is_historical, sent.is_transient)
        datatype = DataType(sent.datatype or 0)
        value = _reference_value(datatype, read)
        if datatype == DataType.FLOAT and sent.value is not None:
            assert value == _float32(float(sent.value)) or math.isnan(value)
        else:
            assert value == sent.value
        properties = dict(zip(read.properties.keys, read.properties.values, strict=True))
        assert list(properties) == list(sent.properties)


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_what_the_official_runtime_encodes_the_agent_reads(payload: Payload) -> None:
    """The same payload built with the runtime (as a host builds its commands) decodes to it."""
    reference = ReferencePayload()
    if payload.timestamp is not None:
        reference.timestamp = payload.timestamp
    if payload.seq is not None:
        reference.seq = payload.seq
    for sent in payload.metrics:
        metric = reference.metrics.add()
        if sent.name is not None:
            metric.name = sent.name
        if sent.alias is not None:
            metric.alias = sent.alias
        if sent.timestamp is not None:
            metric.timestamp = sent.timestamp
        metric.datatype = sent.datatype or 0
        metric.is_historical = sent.is_historical
        metric.is_transient = sent.is_transient
        _set_reference_value(metric, DataType(sent.datatype or 0), sent.value)
        for key, (kind, value) in sent.properties.items():
            metric.properties.keys.append(key)
            entry = metric.properties.values.add(type=kind)
            _set_reference_property(entry, DataType(kind), value)
    decoded = decode(reference.SerializeToString())
    assert decoded.timestamp == payload.timestamp
    assert decoded.seq == payload.seq
    for sent, read in zip(payload.metrics, decoded.metrics, strict=True):
        if sent.datatype == DataType.FLOAT and sent.value is not None:
            assert read.value == _float32(float(sent.value))
            read.value = sent.value
        assert read == sent


def _set_reference_value(metric: Any, datatype: DataType, value: Any) -> None:
    if value is None:
        metric.is_null = True
    elif datatype in INTEGERS:
        bits, _ = INTEGERS[datatype]
        if bits == 64:
            metric.long_value = value & (2**64 - 1)
        else:
            metric.int_value = value & (2**32 - 1)  # Tahu's form: 32-bit two's complement
    elif datatype == DataType.FLOAT:
        metric.float_value = value
    elif datatype == DataType.DOUBLE:
        metric.double_value = value
    elif datatype == DataType.BOOLEAN:
        metric.boolean_value = value
    elif datatype in TEXTS:
        metric.string_value = value
    else:
        metric.bytes_value = value


def _set_reference_property(entry: Any, datatype: DataType, value: Any) -> None:
    if value is None:
        entry.is_null = True
    elif datatype == DataType.STRING:
        entry.string_value = value
    elif datatype == DataType.INT32:
        entry.int_value = value & (2**32 - 1)
    else:
        entry.double_value = value


def test_negative_small_integers_are_32_bit_twos_complement_as_tahu_writes_them() -> None:
    encoded = encode(Payload(metrics=[Metric(datatype=DataType.INT8, value=-1)]))
    assert ReferencePayload.FromString(encoded).metrics[0].int_value == 2**32 - 1
    # and the 64-bit form (protobuf's for a negative int32) reads the same
    other = ReferencePayload()
    other.metrics.add(datatype=DataType.INT16, long_value=2**64 - 5)
    assert decode(other.SerializeToString()).metrics[0].value == -5


@pytest.mark.parametrize(
    ("datatype", "wire"),
    [
        (DataType.INT16, 40000),  # above Int16: not -25536
        (DataType.INT16, 65541),  # 0x1_0005: not 5, its high bits dropped
        (DataType.INT8, 300),
        (DataType.INT8, 0xFF),  # an 8-bit form, or 255 by mistake: not taken for -1
        (DataType.INT32, 2**40),
        (DataType.UINT8, 256),
        (DataType.UINT32, 2**32),
    ],
)
def test_an_integer_its_datatype_cannot_hold_is_refused_never_cut_to_another(
    datatype: DataType, wire: int
) -> None:
    """A host's DCMD value beyond the metric's datatype would, cut to its width, write another
    number than the one sent: it is refused."""
    command = ReferencePayload(timestamp=1)
    if wire < 2**32:
        command.metrics.add(name="setpoint", datatype=int(datatype), int_value=wire)
    else:
        command.metrics.add(name="setpoint", datatype=int(datatype), long_value=wire)
    with pytest.raises(SparkplugError, match=r"not a|does not fit"):
        decode(command.SerializeToString())


@pytest.mark.parametrize(
    ("datatype", "value"),
    [(DataType.FLOAT, 1e39), (DataType.DOUBLE, 10**400), (DataType.STRING, "\ud800")],
)
def test_encode_refuses_with_its_own_error_only(datatype: DataType, value: Any) -> None:
    with pytest.raises(SparkplugError):
        encode(Payload(metrics=[Metric(name="x", datatype=int(datatype), value=value)]))
    with pytest.raises(SparkplugError):
        encode(Payload(metrics=[Metric(name="x", datatype=99, value=1)]))


@pytest.mark.parametrize(
    ("datatype", "value", "why"),
    [
        (DataType.INT8, 128, "does not fit"),
        (DataType.UINT16, -1, "does not fit"),
        (DataType.INT32, 1.5, "takes an integer"),
        (DataType.INT32, True, "takes an integer"),
        (DataType.BOOLEAN, 1, "true or false"),
        (DataType.STRING, 5, "takes a string"),
        (DataType.DOUBLE, "x", "takes a number"),
        (DataType.UNKNOWN, 1, "no value of datatype 0"),
    ],
)
def test_a_value_its_datatype_cannot_hold_is_refused(
    datatype: DataType, value: Any, why: str
) -> None:
    with pytest.raises(SparkplugError, match=why):
        encode(Payload(metrics=[Metric(datatype=datatype, value=value)]))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x12\x05\x0a\x03ab", "cut short|fewer remain"),  # a metric longer than what is left
        (b"\x08", "cut short"),  # a timestamp without its number
        (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
        (b"\x0b", "wire type 3"),  # a group: not in Sparkplug
        (b"\x00\x01", "field number 0"),
        (b"\x12\x02\x0a\x80", "cut short|fewer remain"),
        (b"\x12\x03\x0a\x01\xff", "not UTF-8"),  # a metric name that is not text
        (b"\x0a\x01x", "expected a number"),  # the timestamp as bytes
    ],
)
def test_a_malformed_payload_is_one_error_naming_where(data: bytes, why: str) -> None:
    with pytest.raises(SparkplugError, match=why):
        decode(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_sparkplug_error_only(data: bytes) -> None:
    with contextlib.suppress(SparkplugError):
        decode(data)


def test_unknown_fields_are_skipped_as_protobuf_does() -> None:
    reference = ReferencePayload(timestamp=5, uuid="schema-1", body=b"\x00\x01")
    reference.metrics.add(name="a", datatype=DataType.INT32, int_value=7)
    decoded = decode(reference.SerializeToString())
    assert decoded.timestamp == 5
    assert decoded.metrics == [Metric(name="a", datatype=DataType.INT32, value=7)]
