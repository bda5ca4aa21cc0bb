"""Telemetry on the wire: how a batch of samples becomes MQTT messages of a bounded size.

``TelemetryEncoder.messages`` cuts a batch into messages of at most ``limit`` bytes each, with the
samples each one carries, so that the uplink acknowledges exactly what the broker took. A sample
too large to fit under the limit on its own comes back alone, in a message above the limit: the
caller decides (the broker's Maximum Packet Size makes it undeliverable; our own soft limit
does not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .model import Sample

#: A telemetry message's own size limit, well below any broker's (mosquitto: 256 MB; AWS IoT:
#: 128 kB).
MAX_PAYLOAD = 100_000


def to_json_bytes(payload: Any) -> bytes:
    """Compact JSON, UTF-8: what every payload of the agent is."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Message:
    """One telemetry message and the samples it carries."""

    samples: list[Sample]
    payload: bytes


class TelemetryEncoder:
    """SPEC §4 telemetry batches for one agent, in the encoding ``[mqtt] compression`` names."""

    def __init__(self, agent_id: str, compression: str = "none") -> None:
        self.agent_id = agent_id
        self.compression = compression
        self._head = b'{"agent":' + to_json_bytes(agent_id) + b',"samples":['

    @property
    def content_type(self) -> str | None:
        """MQTT 5 Content Type of the messages; None for plain JSON."""
        return None

    @property
    def utf8(self) -> bool:
        """Whether payloads are UTF-8 text (the MQTT 5 Payload Format Indicator)."""
        return True

    def messages(
        self, samples: list[Sample], backlog: bool = False, limit: int = MAX_PAYLOAD
    ) -> list[Message]:
        """The batch as messages of at most ``limit`` bytes (one sample may exceed it alone).
        ``backlog`` marks samples sent late, from the disk.

        Each sample is encoded once and the messages are joined from those pieces: a batch that
        is too large is split without encoding anything twice.
        """
        head = self._head
        tail = b'],"backlog":true}' if backlog else b"]}"
        messages: list[Message] = []
        pieces: list[bytes] = []
        start, size = 0, len(head) + len(tail)
        for index, sample in enumerate(samples):
            piece = to_json_bytes(sample.to_json())
            if pieces and size + len(piece) + 1 > limit:
                messages.append(Message(samples[start:index], head + b",".join(pieces) + tail))
                start, pieces, size = index, [], len(head) + len(tail)
            pieces.append(piece)
            size += len(piece) + 1
        if pieces:
            messages.append(Message(samples[start:], head + b",".join(pieces) + tail))
        return messages
