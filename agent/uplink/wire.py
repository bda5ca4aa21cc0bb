"""Telemetry on the wire: how a batch of samples becomes MQTT messages of a bounded size, as
JSON or, for metered links, as JSON compressed with zlib.

``TelemetryEncoder.messages`` cuts a batch into messages of at most ``limit`` bytes each, with the
samples each one carries, so that the uplink acknowledges exactly what the broker took. A sample
too large to fit under the limit on its own comes back alone, in a message above the limit: the
caller decides (the broker's Maximum Packet Size makes it undeliverable; our own soft limit
does not).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

from ..model import COMPACT_JSON, Sample

#: A telemetry message's own size limit, well below any broker's (mosquitto: 256 MB; AWS IoT:
#: 128 kB).
MAX_PAYLOAD = 100_000


def to_json_bytes(payload: Any) -> bytes:
    """Compact JSON, UTF-8: what every payload of the agent is."""
    return COMPACT_JSON.encode(payload).encode()


def sample_json_bytes(sample: Sample) -> bytes:
    """``to_json_bytes(sample.to_json())``, around the sample's values encoded once."""
    if type(sample.id) is not int or type(sample.ts) is not int:  # not what %d writes
        return to_json_bytes(sample.to_json())
    device = COMPACT_JSON.encode(sample.device).encode()
    head = b'{"id":%d,"device":%s,"ts":%d,"values":' % (sample.id, device, sample.ts)
    return head + sample.values_json + (b',"clock":"unsynced"}' if sample.unsynced else b"}")


@dataclass(frozen=True, slots=True)
class Message:
    """One telemetry message and the samples it carries."""

    samples: list[Sample]
    payload: bytes


#: ``[mqtt] compression = "zlib"``: the MQTT 5 Content Type of its messages. (OPC UA PubSub names
#: gzip-compressed JSON ``application/json+gzip`` on MQTT 5; this is the same for zlib.)
ZLIB_CONTENT_TYPE = "application/json+zlib"
#: How much a batch of samples shrinks at the least under zlib, to cut it into messages before
#: compressing: a message that still comes out too large is halved.
ZLIB_RATIO = 4
#: zlib's first byte with its default window; JSON's is ``{``. Consumers without the MQTT 5
#: Content Type (3.1.1) tell them apart by it.
ZLIB_FIRST_BYTE = 0x78


def decode_telemetry(payload: bytes) -> Any:
    """A telemetry payload as the JSON the contract describes, plain or zlib-compressed."""
    if payload[:1] == bytes([ZLIB_FIRST_BYTE]):
        payload = zlib.decompress(payload)
    return json.loads(payload)


class TelemetryEncoder:
    """Telemetry batches (docs/mqtt.md) for one agent, in the encoding ``[mqtt] compression`` names:
    the JSON itself, or the JSON compressed with zlib (RFC 1950, level 9)."""

    def __init__(self, agent_id: str, compression: str = "none") -> None:
        if compression not in ("none", "zlib"):
            raise ValueError(f"unknown compression {compression!r}")
        self.agent_id = agent_id
        self.compression = compression
        self._head = b'{"agent":' + to_json_bytes(agent_id) + b',"samples":['

    @property
    def content_type(self) -> str | None:
        """MQTT 5 Content Type of the messages; None for plain JSON."""
        return ZLIB_CONTENT_TYPE if self.compression == "zlib" else None

    @property
    def utf8(self) -> bool:
        """Whether payloads are UTF-8 text (the MQTT 5 Payload Format Indicator)."""
        return self.compression == "none"

    def messages(
        self, samples: list[Sample], backlog: bool = False, limit: int = MAX_PAYLOAD
    ) -> list[Message]:
        """The batch as messages of at most ``limit`` bytes as sent (one sample may exceed it
        alone), the samples in order. ``backlog`` marks samples sent late, from the disk.

        Each sample is encoded once; messages are joined from those pieces.
        """
        pieces = [sample_json_bytes(sample) for sample in samples]
        tail = b'],"backlog":true}' if backlog else b"]}"
        if self.compression == "none":
            return self._cut(samples, pieces, tail, limit)
        messages: list[Message] = []
        start = 0
        for plain in self._cut(samples, pieces, tail, limit * ZLIB_RATIO):
            end = start + len(plain.samples)
            messages += self._compressed(samples, pieces, start, end, tail, limit)
            start = end
        return messages

    def _cut(
        self, samples: list[Sample], pieces: list[bytes], tail: bytes, limit: int
    ) -> list[Message]:
        messages: list[Message] = []
        start, size = 0, len(self._head) + len(tail)
        for index, piece in enumerate(pieces):
            if index > start and size + len(piece) + 1 > limit:
                messages.append(self._joined(samples, pieces, start, index, tail))
                start, size = index, len(self._head) + len(tail)
            size += len(piece) + 1
        if start < len(pieces):
            messages.append(self._joined(samples, pieces, start, len(pieces), tail))
        return messages

    def _joined(
        self, samples: list[Sample], pieces: list[bytes], start: int, end: int, tail: bytes
    ) -> Message:
        return Message(samples[start:end], self._head + b",".join(pieces[start:end]) + tail)

    def _compressed(
        self,
        samples: list[Sample],
        pieces: list[bytes],
        start: int,
        end: int,
        tail: bytes,
        limit: int,
    ) -> list[Message]:
        """Samples ``start:end`` compressed; halved (each half compressed) while too large."""
        plain = self._joined(samples, pieces, start, end, tail)
        packed = zlib.compress(plain.payload, 9)
        if len(packed) <= limit or end - start == 1:
            return [Message(plain.samples, packed)]
        half = (start + end) // 2
        return self._compressed(samples, pieces, start, half, tail, limit) + self._compressed(
            samples, pieces, half, end, tail, limit
        )
