"""A Sparkplug B edge node's messages: the agent is the node, each device a Sparkplug device,
each point a metric. This module builds the payloads and keeps the rules a host checks: the
``bdSeq`` of NBIRTH matches the NDEATH will of the same connection, ``seq`` counts 0-255 from
NBIRTH (0) through every message after it and wraps, a device's DBIRTH comes before its DDATA,
and DDATA names metrics by the alias their birth gave them. Sending is the link's.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...api.config import DeviceConfig, PointConfig
from ...files import write_atomically
from ...model import Value
from .codec import BLOBS, INTEGERS, TEXTS, DataType, Metric, Payload, encode, integer_range

log = logging.getLogger(__name__)

#: The largest finite float32: a Float metric beyond it goes as null.
FLOAT32_MAX = 3.4028234663852886e38

NAMESPACE = "spBv1.0"
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
#: Under the data dir: the last bdSeq used, so that a restart never repeats the one a host
#: still holds the NDEATH of.
BDSEQ_FILE = "sparkplug.json"

#: A point's driver type → its metric's datatype (a scaled value is a Double whatever its
#: registers hold).
POINT_DATATYPES = {
    "bool": DataType.BOOLEAN,
    "int16": DataType.INT16,
    "uint16": DataType.UINT16,
    "int32": DataType.INT32,
    "uint32": DataType.UINT32,
    "int64": DataType.INT64,
    "uint64": DataType.UINT64,
    "float32": DataType.FLOAT,
    "float64": DataType.DOUBLE,
    "string": DataType.STRING,
    "int": DataType.INT64,  # a whole number read from text (serial sensors)
}


def topic(group_id: str, kind: str, edge_node_id: str, device: str | None = None) -> str:
    """``spBv1.0/{group}/{kind}/{node}[/{device}]``."""
    base = f"{NAMESPACE}/{group_id}/{kind}/{edge_node_id}"
    return base if device is None else f"{base}/{device}"


def datatype_of(point: PointConfig) -> DataType:
    """The metric datatype of ``point``'s readings."""
    kind = POINT_DATATYPES.get(point.value_type, DataType.DOUBLE)
    scaled = point.scale != 1.0 or point.offset != 0.0 or point.options.get("scale_exponent")
    if scaled and kind not in (DataType.BOOLEAN, DataType.STRING):
        return DataType.DOUBLE
    return kind


def metric_value(datatype: DataType, value: Value | None) -> Value | None:
    """``value`` as ``datatype`` carries it, None (sent as null) when it cannot: a reading
    never stops a birth or a data message."""
    if value is None:
        return None
    if datatype in INTEGERS:
        return _whole(datatype, value)
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        try:
            real = float(value)
        except OverflowError:  # an integer beyond any float
            return None
        if datatype == DataType.FLOAT and (not math.isfinite(real) or abs(real) > FLOAT32_MAX):
            return None
        return real
    if datatype == DataType.BOOLEAN:
        return value if isinstance(value, bool) else None
    if datatype in TEXTS:
        return value if isinstance(value, str) else str(value)
    assert datatype not in BLOBS  # no point reads bytes
    return None


def _whole(datatype: DataType, value: Value) -> int | None:
    """``value`` as an integer of ``datatype``, None when it is not whole or does not fit."""
    if isinstance(value, bool) or (isinstance(value, float) and value.is_integer()):
        number = int(value)
    elif isinstance(value, int):
        number = value
    else:
        return None
    low, high = integer_range(datatype)
    return number if low <= number <= high else None


class BdSeq:
    """The bdSeq of each new MQTT CONNECT: one past the last one used, 0-255, wrapping.
    Counted in memory, so that a data dir that cannot be written (a card remounted read-only,
    a full disk) never repeats one within a run; kept in ``BDSEQ_FILE`` so that a restart does
    not repeat the one a host still holds the NDEATH of."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / BDSEQ_FILE
        self._last: int | None = None
        self._unkept = False  # said once that it cannot be kept, until it can again

    def next(self) -> int:
        if self._last is None:
            self._last = self._kept()
        self._last = (self._last + 1) % 256
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self._path, json.dumps({"bdseq": self._last}))
            self._unkept = False
        except OSError as exc:
            if not self._unkept:
                self._unkept = True
                log.warning(
                    "sparkplug: cannot keep bdSeq in %s (%s): a restart may repeat it",
                    self._path,
                    exc,
                )
        return self._last

    def _kept(self) -> int:
        try:
            last = int(json.loads(self._path.read_text())["bdseq"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1
        return last if 0 <= last <= 255 else -1


@dataclass(frozen=True)
class _Point:
    device: str
    point: PointConfig
    datatype: DataType
    alias: int


class EdgeNode:
    """The payloads of one edge node's session; ``seq`` is counted here, so every message of
    the session must be built here, in the order it is sent."""

    def __init__(
        self, group_id: str, edge_node_id: str, devices: Sequence[DeviceConfig], bdseq: int
    ) -> None:
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.bdseq = bdseq
        self._seq = 0
        #: Aliases from 1 in the configuration's order, stable across rebirths of a session.
        self._points: dict[tuple[str, str], _Point] = {}
        alias = 1
        for device in devices:
            for point in device.points:
                self._points[device.name, point.name] = _Point(
                    device.name, point, datatype_of(point), alias
                )
                alias += 1
        self._devices = {device.name for device in devices}
        self._born: set[str] = set()

    def topic(self, kind: str, device: str | None = None) -> str:
        return topic(self.group_id, kind, self.edge_node_id, device)

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) % 256
        return seq

    # --- the node

    def death(self, now_ms: int) -> bytes:
        """NDEATH, the connection's will: its bdSeq, no seq (the broker sends it)."""
        metric = Metric(name=BDSEQ, timestamp=now_ms, datatype=DataType.INT64, value=self.bdseq)
        return encode(Payload(timestamp=now_ms, metrics=[metric]))

    def birth(self, now_ms: int) -> bytes:
        """NBIRTH: seq 0, the bdSeq of the will, and the rebirth control. Every device must be
        born again after it."""
        self._seq = 0
        self._born.clear()
        metrics = [
            Metric(name=BDSEQ, timestamp=now_ms, datatype=DataType.INT64, value=self.bdseq),
            Metric(name=REBIRTH, timestamp=now_ms, datatype=DataType.BOOLEAN, value=False),
        ]
        return encode(Payload(timestamp=now_ms, metrics=metrics, seq=self._next_seq()))

    # --- devices

    def born(self, device: str) -> bool:
        return device in self._born

    def born_devices(self) -> set[str]:
        return set(self._born)

    def knows(self, device: str) -> bool:
        """The device is in this node's configuration (it can be born)."""
        return device in self._devices

    def datatype(self, device: str, name: str) -> DataType | None:
        """The datatype the device's birth gives its metric ``name``."""
        known = self._points.get((device, name))
        return None if known is None else known.datatype

    def names_of(self, device: str) -> dict[int, str]:
        """The device's points by the alias its birth gives them (a DCMD may name either)."""
        return {p.alias: p.point.name for p in self._points.values() if p.device == device}

    def device_birth(
        self, device: str, values: Mapping[str, Value], now_ms: int, read_at: int | None = None
    ) -> bytes:
        """DBIRTH: every point with its name, alias, datatype, unit and current value (null when
        it has none yet), stamped ``read_at``, when they were read (now if not known)."""
        metrics = [
            Metric(
                name=p.point.name,
                alias=p.alias,
                timestamp=now_ms if read_at is None else read_at,
                datatype=int(p.datatype),
                value=metric_value(p.datatype, values.get(p.point.name)),
                properties=_properties(p.point),
            )
            for p in self._points.values()
            if p.device == device
        ]
        self._born.add(device)
        return encode(Payload(timestamp=now_ms, metrics=metrics, seq=self._next_seq()))

    def device_data(
        self, device: str, ts: int, values: Mapping[str, Value | None], historical: bool = False
    ) -> bytes:
        """DDATA of one reading: each value by its alias, stamped with the reading's time;
        ``historical``: read while the link was down (a host must not take it for now)."""
        if device not in self._born:
            raise ValueError(f"device {device}: DDATA before its DBIRTH")
        metrics = []
        for name, value in values.items():
            known = self._points.get((device, name))
            if known is None:
                continue  # not in the birth: a host could not place it
            metrics.append(
                Metric(
                    alias=known.alias,
                    timestamp=ts,
                    datatype=int(known.datatype),
                    value=metric_value(known.datatype, value),
                    is_historical=historical,
                )
            )
        return encode(Payload(timestamp=ts, metrics=metrics, seq=self._next_seq()))

    def device_death(self, device: str, now_ms: int) -> bytes:
        """DDEATH: the device stopped answering; it is born again when it answers."""
        self._born.discard(device)
        return encode(Payload(timestamp=now_ms, seq=self._next_seq()))


def _properties(point: PointConfig) -> dict[str, tuple[int, bool | int | float | str | None]]:
    """A metric's properties: its engineering unit, and its limits where it has them."""
    found: dict[str, tuple[int, bool | int | float | str | None]] = {}
    if point.unit:
        found["engUnit"] = (int(DataType.STRING), point.unit)
    if point.min is not None:
        found["engLow"] = (int(DataType.DOUBLE), float(point.min))
    if point.max is not None:
        found["engHigh"] = (int(DataType.DOUBLE), float(point.max))
    if point.writable:
        found["writable"] = (int(DataType.BOOLEAN), True)
    return found
