"""The data that flows from drivers to the broker."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

#: A reading's value as it is sent: JSON number, boolean or string.
Value = bool | int | float | str

#: Compact JSON, as every payload and record of the agent is written (made once: ``json.dumps``
#: with arguments builds an encoder at every call).
COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Poll:
    """What one poll of one device produced.

    ``values`` holds the points that were read; ``errors`` says, per failed request or point,
    what went wrong. A driver raises instead of returning a poll where nothing at all was read.
    """

    values: Mapping[str, Value]
    errors: tuple[str, ...] = ()
    #: The raw registers or bits behind each value, when the driver was asked to keep them
    #: (``edge-agent read`` shows them); empty while polling.
    raw: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: Points the device does not have (it refuses them as such): left out, not errors; the
    #: device is ``degraded``, not failing.
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sample:
    """One poll of one device as buffered and sent: the sample of docs/mqtt.md.

    ``mono`` and ``boot`` are set only while the wall clock could not be trusted when the poll
    ran: the monotonic time and boot id let the sample be re-stamped once the clock is right;
    a sample sent without that carries ``"clock": "unsynced"``, and from then on has ``mono``
    without ``boot`` (it is never re-stamped: a copy sent again must be the same).
    """

    id: int
    device: str
    ts: int  # ms since the Unix epoch, when the poll's first request went out
    values: Mapping[str, Value] = field(default_factory=dict)
    mono: float | None = None
    boot: str | None = None

    @property
    def unsynced(self) -> bool:
        return self.mono is not None

    @functools.cached_property
    def values_json(self) -> bytes:
        """The values as compact JSON, UTF-8: encoded once for the journal, the disk and the
        wire (the encoding is most of what a sample costs on its way)."""
        values = self.values if type(self.values) is dict else dict(self.values)
        return COMPACT_JSON.encode(values).encode()

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "id": self.id,
            "device": self.device,
            "ts": self.ts,
            "values": dict(self.values),
        }
        if self.unsynced:
            payload["clock"] = "unsynced"
        return payload
