"""Telemetry on the wire: the contract's JSON and its zlib form, cut below a size limit, every
sample once and in order."""

from __future__ import annotations

import json
import random
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.model import Sample, Value
from agent.store.journal import _encode as journal_record
from agent.uplink import wire
from agent.uplink.wire import (
    MAX_PAYLOAD,
    ZLIB_CONTENT_TYPE,
    TelemetryEncoder,
    decode_telemetry,
    sample_json_bytes,
    to_json_bytes,
)

ENCODINGS = ["none", "zlib"]


def meter(count: int, width: int = 20, seed: int = 1) -> list[Sample]:
    """A 20-point meter whose readings drift, as field readings do."""
    rng = random.Random(seed)
    level = [100.0 + 10 * p for p in range(width)]
    batch = []
    for i in range(1, count + 1):
        level = [round(v + rng.gauss(0, 0.05), 2) for v in level]
        values = {f"p{p:02d}": v for p, v in enumerate(level)}
        batch.append(Sample(i, "meter", 1_795_000_000_000 + 1000 * i, values))
    return batch


@pytest.mark.parametrize("compression", ENCODINGS)
@pytest.mark.parametrize("backlog", [False, True])
def test_every_sample_goes_once_in_order_and_reads_back_as_the_contract_says(
    compression: str, backlog: bool
) -> None:
    batch = meter(300)
    messages = TelemetryEncoder("gw01", compression).messages(batch, backlog=backlog)
    assert [s.id for m in messages for s in m.samples] == [s.id for s in batch]
    marked = {"backlog": True} if backlog else {}  # the key only on batches sent late
    for message in messages:
        body = decode_telemetry(message.payload)
        assert body == {"agent": "gw01", "samples": [s.to_json() for s in message.samples]} | marked


@pytest.mark.parametrize("compression", ENCODINGS)
@pytest.mark.parametrize("limit", [300, 2_000, 20_000])
def test_every_message_fits_the_limit_as_sent(compression: str, limit: int) -> None:
    batch = meter(400)
    messages = TelemetryEncoder("gw01", compression).messages(batch, limit=limit)
    assert len(messages) > 1
    assert all(len(m.payload) <= limit or len(m.samples) == 1 for m in messages)
    assert [s.id for m in messages for s in m.samples] == [s.id for s in batch]


@pytest.mark.parametrize("compression", ENCODINGS)
def test_a_sample_larger_than_the_limit_goes_alone_and_the_rest_still_fit(
    compression: str,
) -> None:
    rng = random.Random(2)
    noise = {f"n{i}": rng.random() for i in range(400)}  # random digits barely compress
    batch = [*meter(3), Sample(4, "wide", 1_795_000_004_000, noise), *meter(3, seed=3)]
    messages = TelemetryEncoder("gw01", compression).messages(batch, limit=1_000)
    [alone] = [m for m in messages if any(s.id == 4 for s in m.samples)]
    assert len(alone.samples) == 1
    assert len(alone.payload) > 1_000
    assert all(len(m.payload) <= 1_000 for m in messages if m is not alone)


@pytest.mark.parametrize("compression", ENCODINGS)
def test_a_sample_larger_than_the_agents_own_limit_goes_alone(compression: str) -> None:
    rng = random.Random(4)
    huge = Sample(2, "wide", 1_795_000_002_000, {f"n{i}": rng.random() for i in range(20_000)})
    batch = [*meter(1), huge, *meter(1, seed=5)]
    messages = TelemetryEncoder("gw01", compression).messages(batch)
    assert [[s.id for s in m.samples] for m in messages] == [[1], [2], [1]]
    assert len(messages[1].payload) > MAX_PAYLOAD
    assert decode_telemetry(messages[1].payload)["samples"] == [huge.to_json()]


@pytest.mark.parametrize("compression", ENCODINGS)
def test_unsynced_samples_say_so(compression: str) -> None:
    sample = Sample(1, "meter", 5000, {"v": 1}, mono=5.0, boot="b")
    [message] = TelemetryEncoder("gw01", compression).messages([sample])
    assert decode_telemetry(message.payload)["samples"][0]["clock"] == "unsynced"


def test_each_sample_is_encoded_once_and_compression_work_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cut by halving, not by growing a message a sample at a time and compressing each
    candidate: samples that barely compress have most messages halved after a first try."""
    rng = random.Random(6)
    batch = [
        Sample(i, "noisy", 1_795_000_000_000 + i, {f"n{j}": rng.random() for j in range(20)})
        for i in range(1, 401)
    ]
    encoded = [0]
    encode = wire.sample_json_bytes

    def counted_encode(sample: Sample) -> bytes:
        encoded[0] += 1
        return encode(sample)

    compressed = [0]
    compress = zlib.compress

    def counted_compress(data: bytes, /, level: int = -1) -> bytes:  # 3.10 has no wbits
        compressed[0] += len(data)
        return compress(data, level)

    monkeypatch.setattr(wire, "sample_json_bytes", counted_encode)
    monkeypatch.setattr(zlib, "compress", counted_compress)
    messages = TelemetryEncoder("gw01", "zlib").messages(batch, limit=2_000)
    plain = sum(len(zlib.decompress(m.payload)) for m in messages)
    assert len(messages) > 20
    assert encoded[0] == len(batch)
    assert compressed[0] <= 4 * plain  # each halving compresses the batch once more


def test_zlib_says_what_it_is_and_is_not_utf8() -> None:
    plain, packed = TelemetryEncoder("gw01"), TelemetryEncoder("gw01", "zlib")
    assert (plain.content_type, plain.utf8) == (None, True)
    assert (packed.content_type, packed.utf8) == (ZLIB_CONTENT_TYPE, False)
    [message] = packed.messages(meter(2))
    assert message.payload[:1] == b"\x78"  # how a 3.1.1 consumer tells it from JSON's "{"
    assert json.loads(zlib.decompress(message.payload))["agent"] == "gw01"


def test_a_backlog_batch_of_a_20_point_meter_costs_under_4_bytes_a_reading_compressed() -> None:
    batch = meter(500)
    [message] = TelemetryEncoder("gw01", "zlib").messages(batch, backlog=True)
    readings = 500 * 20
    assert len(message.payload) / readings < 4.0
    [plain] = TelemetryEncoder("gw01").messages(batch, backlog=True, limit=10**7)
    assert len(plain.payload) > 4 * len(message.payload)


def test_unicode_names_and_an_empty_batch() -> None:
    batch = [Sample(1, "pompe-été", 5000, {"débit": 1.5, "état": "marche"})]
    for compression in ENCODINGS:
        encoder = TelemetryEncoder("passerelle-ü", compression)
        [message] = encoder.messages(batch)
        assert decode_telemetry(message.payload)["samples"][0]["device"] == "pompe-été"
        assert encoder.messages([]) == []


@pytest.mark.parametrize("compression", ENCODINGS)
def test_the_default_limit_is_the_agents_own(compression: str) -> None:
    batch = meter(4_000)
    messages = TelemetryEncoder("gw01", compression).messages(batch)
    assert len(messages) > 1
    assert all(len(m.payload) <= MAX_PAYLOAD for m in messages)
    ids = [s["id"] for m in messages for s in decode_telemetry(m.payload)["samples"]]
    assert ids == [s.id for s in batch] == [s.id for m in messages for s in m.samples]


def test_an_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown compression"):
        TelemetryEncoder("gw01", "brotli")


# --- a sample's values encoded once ----------------------------------------------------------

VALUE = (
    st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)


@given(
    sample_id=st.integers(1, 2**53) | st.booleans(),
    device=st.text(min_size=1),
    ts=st.integers(-(2**40), 2**45) | st.floats(allow_nan=False, allow_infinity=False),
    values=st.dictionaries(st.text(), VALUE, max_size=8),
    mono=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    boot=st.none() | st.text(),
)
def test_the_values_encoded_once_give_the_bytes_of_a_whole_encoding(
    sample_id: int,
    device: str,
    ts: int | float,
    values: dict[str, Value],
    mono: float | None,
    boot: str | None,
) -> None:
    """The wire's sample and the journal's record, built around ``Sample.values_json``, are
    byte for byte what encoding each whole would give."""
    sample = Sample(sample_id, device, ts, values, mono=mono, boot=boot)  # type: ignore[arg-type]
    assert sample_json_bytes(sample) == to_json_bytes(sample.to_json())
    row = [sample_id, device, ts, values, mono, boot]
    assert (
        journal_record(sample)
        == json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode()
    )
