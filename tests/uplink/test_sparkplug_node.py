"""The edge node's Sparkplug B messages against the rules a host checks: bdSeq of birth and
will, seq from 0 through every message with its wrap, DBIRTH before DDATA and again after a
rebirth or a DDEATH, DDATA by alias, datatypes from the point types, historical readings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agent.api.config import DeviceConfig, PointConfig
from agent.uplink.sparkplug import node as node_module
from agent.uplink.sparkplug.codec import DataType, decode
from agent.uplink.sparkplug.node import (
    BDSEQ,
    BDSEQ_FILE,
    REBIRTH,
    BdSeq,
    EdgeNode,
    datatype_of,
    metric_value,
)

NOW = 1_765_000_000_000


def point(name: str, **options: object) -> PointConfig:
    scale = float(options.pop("scale", 1.0))  # type: ignore[arg-type]
    unit = str(options.pop("unit", ""))
    return PointConfig(name, scale=scale, unit=unit, options=options)


PUMP = DeviceConfig(
    name="pump",
    bus="plc",
    driver="modbus",
    interval=1.0,
    points=(
        point("speed", type="uint16", unit="rpm"),
        point("flow", type="int16", scale=0.1, unit="m3/h"),
        point("running", type="bool"),
        point("model", type="string"),
    ),
)
WELL = DeviceConfig("well", "", "system", 1.0, points=(point("level"),))


def node(bdseq: int = 7) -> EdgeNode:
    return EdgeNode("farm", "gw-17", [PUMP, WELL], bdseq)


def test_birth_and_will_carry_one_bdseq_and_the_birth_starts_seq_at_0() -> None:
    edge = node()
    will, birth = decode(edge.death(NOW)), decode(edge.birth(NOW))
    assert will.seq is None  # the broker sends it: no seq
    assert [(m.name, m.datatype, m.value) for m in will.metrics] == [(BDSEQ, DataType.INT64, 7)]
    assert birth.seq == 0
    assert [(m.name, m.datatype, m.value) for m in birth.metrics] == [
        (BDSEQ, DataType.INT64, 7),
        (REBIRTH, DataType.BOOLEAN, False),
    ]
    assert edge.topic("NBIRTH") == "spBv1.0/farm/NBIRTH/gw-17"
    assert edge.topic("DDATA", "pump") == "spBv1.0/farm/DDATA/gw-17/pump"


def test_seq_counts_every_message_after_the_birth_and_wraps_at_255() -> None:
    edge = node()
    seqs = [decode(edge.birth(NOW)).seq, decode(edge.device_birth("pump", {}, NOW)).seq]
    seqs += [decode(edge.device_data("pump", NOW, {"speed": i})).seq for i in range(300)]
    assert seqs == [n % 256 for n in range(302)]
    assert decode(edge.birth(NOW)).seq == 0  # a rebirth starts again


def test_ddata_names_by_the_alias_its_birth_gave_and_needs_that_birth_first() -> None:
    edge = node()
    edge.birth(NOW)
    with pytest.raises(ValueError, match="DDATA before its DBIRTH"):
        edge.device_data("pump", NOW, {"speed": 1})
    born = decode(edge.device_birth("pump", {"speed": 1450, "running": True}, NOW))
    aliases = {m.name: m.alias for m in born.metrics}
    assert aliases == {"speed": 1, "flow": 2, "running": 3, "model": 4}
    values = {m.name: m.value for m in born.metrics}
    assert values == {"speed": 1450, "flow": None, "running": True, "model": None}
    assert born.metrics[0].properties == {"engUnit": (DataType.STRING, "rpm")}
    data = decode(edge.device_data("pump", NOW + 5, {"speed": 1460, "flow": 12.5, "x": 1}))
    assert [(m.name, m.alias, m.value, m.timestamp) for m in data.metrics] == [
        (None, 1, 1460, NOW + 5),
        (None, 2, 12.5, NOW + 5),
    ]
    assert decode(edge.device_birth("well", {}, NOW)).metrics[0].alias == 5


def test_a_rebirth_or_a_ddeath_asks_for_the_device_to_be_born_again() -> None:
    edge = node()
    edge.birth(NOW)
    edge.device_birth("pump", {}, NOW)
    assert decode(edge.device_death("pump", NOW)).metrics == []
    assert not edge.born("pump")
    edge.device_birth("pump", {}, NOW)
    edge.birth(NOW)
    assert not edge.born("pump")


def test_readings_held_during_an_outage_go_out_marked_historical() -> None:
    edge = node()
    edge.birth(NOW)
    edge.device_birth("well", {}, NOW)
    [metric] = decode(edge.device_data("well", NOW - 60_000, {"level": 3}, historical=True)).metrics
    assert metric.is_historical
    assert metric.timestamp == NOW - 60_000


@pytest.mark.parametrize(
    ("options", "datatype"),
    [
        ({"type": "uint16"}, DataType.UINT16),
        ({"type": "int32"}, DataType.INT32),
        ({"type": "float32"}, DataType.FLOAT),
        ({"type": "bool"}, DataType.BOOLEAN),
        ({"type": "string"}, DataType.STRING),
        ({}, DataType.DOUBLE),
        ({"type": "int16", "scale": 0.1}, DataType.DOUBLE),
        ({"type": "int16", "scale_exponent": "sf"}, DataType.DOUBLE),
    ],
)
def test_a_points_datatype_follows_its_type_and_scaling(
    options: dict[str, object], datatype: DataType
) -> None:
    assert datatype_of(point("p", **options)) == datatype


@pytest.mark.parametrize(
    ("datatype", "value", "sent"),
    [
        (DataType.INT16, 5.0, 5),
        (DataType.INT16, 5.5, None),
        (DataType.INT16, True, 1),
        (DataType.DOUBLE, 3, 3.0),
        (DataType.DOUBLE, "x", None),
        (DataType.FLOAT, math.inf, None),
        (DataType.BOOLEAN, 1, None),
        (DataType.STRING, 12, "12"),
        # beyond the datatype: null, never another number or a refusal of the whole message
        (DataType.INT16, 40000, None),
        (DataType.UINT16, -1, None),
        (DataType.UINT64, 2**64, None),
        (DataType.INT64, 10**400, None),
        (DataType.DOUBLE, 10**400, None),
        (DataType.FLOAT, 1e39, None),
        (DataType.FLOAT, 1e38, 1e38),
        (DataType.DOUBLE, math.inf, math.inf),
    ],
)
def test_a_reading_its_datatype_cannot_carry_is_sent_as_null_not_a_crash(
    datatype: DataType, value: object, sent: object
) -> None:
    assert metric_value(datatype, value) == sent  # type: ignore[arg-type]


def test_a_reading_beyond_its_datatype_goes_in_ddata_as_null() -> None:
    """A garbled line of 400 digits from a serial sensor (``type = "int"``: Int64), or 40000
    in an Int16: the DDATA is sent, with that metric null."""
    meter = DeviceConfig(
        "meter",
        "",
        "serial_line",
        1.0,
        points=(point("count", type="int"), point("n", type="int16")),
    )
    edge = EdgeNode("farm", "gw", [meter], 0)
    edge.birth(NOW)
    edge.device_birth("meter", {}, NOW)
    sent = decode(edge.device_data("meter", NOW, {"count": 10**400, "n": 40000}))
    assert [m.value for m in sent.metrics] == [None, None]
    assert decode(edge.device_data("meter", NOW, {"count": -(2**63)})).metrics[0].value == -(2**63)


def test_bdseq_goes_on_across_restarts_and_wraps(tmp_path: Path) -> None:
    counter = BdSeq(tmp_path)
    assert [counter.next() for _ in range(3)] == [0, 1, 2]
    assert BdSeq(tmp_path).next() == 3  # a restart goes on
    (tmp_path / BDSEQ_FILE).write_text('{"bdseq": 255}')
    assert BdSeq(tmp_path).next() == 0
    for damaged in ("damaged", '{"bdseq": 9000}', '{"bdseq": -4}', "[]"):
        (tmp_path / BDSEQ_FILE).write_text(damaged)
        assert BdSeq(tmp_path).next() == 0


def test_bdseq_still_goes_up_when_the_data_dir_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A card remounted read-only: every new connection still gets the next bdSeq (a host
    could not tell a late NDEATH of the last session from the current one), said once."""
    (tmp_path / BDSEQ_FILE).write_text('{"bdseq": 41}')

    def refuse(path: Path, text: str) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(node_module, "write_atomically", refuse)
    counter = BdSeq(tmp_path)
    assert [counter.next() for _ in range(3)] == [42, 43, 44]
    assert sum("cannot keep bdSeq" in r.getMessage() for r in caplog.records) == 1


def test_the_official_runtime_reads_a_device_birth() -> None:
    from tests.uplink.test_sparkplug_codec import ReferencePayload

    edge = node()
    edge.birth(NOW)
    reference = ReferencePayload.FromString(edge.device_birth("pump", {"speed": 7}, NOW))
    first = reference.metrics[0]
    assert (first.name, first.alias, first.datatype, first.int_value) == ("speed", 1, 6, 7)
    assert list(first.properties.keys) == ["engUnit"]
    assert first.properties.values[0].string_value == "rpm"
    assert reference.metrics[1].is_null
