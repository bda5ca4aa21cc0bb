"""edge-agent telemetry payloads as rows, with the standard library only: the JSON of the contract,
plain or compressed with zlib (``[mqtt] compression = "zlib"``).

A compressed message says so in its MQTT 5 Content Type, ``application/json+zlib``; over MQTT
3.1.1 there is none, and the first byte tells: zlib's is 0x78, JSON's ``{``.
"""

from __future__ import annotations

import json
import math
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ZLIB = "application/json+zlib"
#: A compressed message larger than this once decompressed is refused: a few MB of readings is
#: far beyond any batch (the agent's own messages are at most 100 kB compressed).
MAX_DECOMPRESSED = 64 * 1024 * 1024


Row = tuple[str, str, int, datetime, str, float | None, str | None, bool]


class BadPayload(ValueError):
    """The message is not edge-agent telemetry; the text says why, on one line."""


def decoded(payload: bytes, content_type: str | None = None) -> Any:
    """The JSON of one telemetry message, decompressed first when it is compressed."""
    if content_type == ZLIB or (content_type is None and payload[:1] == b"\x78"):
        inflater = zlib.decompressobj()
        try:
            payload = inflater.decompress(payload, MAX_DECOMPRESSED)
        except zlib.error as exc:
            raise BadPayload(f"not zlib data ({exc})") from None
        if inflater.unconsumed_tail:
            raise BadPayload(f"more than {MAX_DECOMPRESSED} bytes once decompressed")
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadPayload(f"not JSON ({exc})") from None


def readings(topic: str, payload: bytes, content_type: str | None = None) -> list[Row]:
    """The rows of one telemetry message; ``BadPayload`` if anything in it is not telemetry.

    The whole message is checked before anything is inserted: it is stored entirely or not at
    all.
    """
    message = decoded(payload, content_type)
    if not isinstance(message, dict):
        raise BadPayload("not a JSON object")
    agent, samples = message.get("agent"), message.get("samples")
    if not isinstance(agent, str) or not agent:
        raise BadPayload('no "agent" string')
    levels = topic.split("/")
    if len(levels) >= 3 and levels[-2] != agent:
        raise BadPayload(f'"agent" is {agent!r} but the topic names {levels[-2]!r}')
    if not isinstance(samples, list):
        raise BadPayload('no "samples" array')
    rows: list[Row] = []
    for n, sample in enumerate(samples):
        rows.extend(_sample_rows(agent, n, sample))
    return rows


def _sample_rows(agent: str, n: int, sample: Any) -> list[Row]:
    """The rows of sample number ``n`` (one per value); ``BadPayload`` if it is not a sample."""
    if not isinstance(sample, dict):
        raise BadPayload(f"sample {n} is not an object")
    sid, device, ts, values = (sample.get(k) for k in ("id", "device", "ts", "values"))
    if not isinstance(sid, int) or isinstance(sid, bool) or not 0 <= sid < 2**63:
        raise BadPayload(f"sample {n}: id {sid!r} is not a 64-bit integer")
    if not isinstance(device, str) or not device:
        raise BadPayload(f"sample {sid}: no device")
    when = _sample_time(sid, ts)
    if not isinstance(values, dict):
        raise BadPayload(f"sample {sid}: no values object")
    unsynced = sample.get("clock") == "unsynced"
    rows: list[Row] = []
    for point, value in values.items():
        number, text = _number_or_text(sid, point, value)
        rows.append((agent, device, sid, when, point, number, text, unsynced))
    return rows


def _sample_time(sid: int, ts: Any) -> datetime:
    """The sample's ``ts`` (ms since the epoch) as a UTC time."""
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise BadPayload(f"sample {sid}: ts {ts!r} is not an integer (ms)")
    try:
        return EPOCH + timedelta(milliseconds=ts)  # exact, unlike ts / 1000
    except (OverflowError, OSError, ValueError):
        raise BadPayload(f"sample {sid}: ts {ts} is out of range") from None


def _number_or_text(sid: int, point: str, value: Any) -> tuple[float | None, str | None]:
    """A value as the row's number or text column (booleans as 0/1)."""
    if isinstance(value, bool | int | float):  # booleans as 0/1
        number, text = float(value), None
    elif isinstance(value, str):
        number, text = None, value
    else:
        raise BadPayload(f"sample {sid}: {point} = {value!r} is not a number or string")
    if number is not None and math.isinf(number):
        raise BadPayload(f"sample {sid}: {point} = {value!r} is out of range")
    return number, text
