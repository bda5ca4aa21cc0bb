"""Telemetry messages: the contract's JSON, split below the size limit, each sample once."""

from __future__ import annotations

import json

from agent.model import Sample
from agent.wire import MAX_PAYLOAD, TelemetryEncoder


def telemetry_messages(
    agent_id: str, batch: list[Sample], backlog: bool = False
) -> list[tuple[list[Sample], bytes]]:
    encoder = TelemetryEncoder(agent_id)
    return [(m.samples, m.payload) for m in encoder.messages(batch, backlog)]


def samples(count: int, width: int = 20) -> list[Sample]:
    return [
        Sample(i, "meter", 1_795_000_000_000 + i, {f"p{j}": 230.5 + j for j in range(width)})
        for i in range(1, count + 1)
    ]


def test_one_message_holds_the_batch_as_the_contract_says() -> None:
    [(sent, payload)] = telemetry_messages("gw01", samples(2))
    assert [s.id for s in sent] == [1, 2]
    body = json.loads(payload)
    assert body == {
        "agent": "gw01",
        "samples": [s.to_json() for s in samples(2)],
    }


def test_backlog_batches_are_marked() -> None:
    [(_, payload)] = telemetry_messages("gw01", samples(1), backlog=True)
    assert json.loads(payload)["backlog"] is True


def test_a_large_batch_is_split_below_the_limit_keeping_every_sample_once() -> None:
    batch = samples(1200)
    messages = telemetry_messages("gw01", batch)
    assert len(messages) > 1
    assert all(len(payload) <= MAX_PAYLOAD for _, payload in messages)
    ids = [s["id"] for _, payload in messages for s in json.loads(payload)["samples"]]
    assert ids == [s.id for s in batch]
    assert [s.id for sent, _ in messages for s in sent] == ids


def test_a_sample_larger_than_the_limit_still_goes_alone() -> None:
    huge = samples(1, width=20_000)
    [(sent, payload)] = telemetry_messages("gw01", huge)
    assert len(payload) > MAX_PAYLOAD and sent == huge


def test_unsynced_samples_say_so() -> None:
    sample = Sample(1, "meter", 5000, {"v": 1}, mono=5.0, boot="b")
    [(_, payload)] = telemetry_messages("gw01", [sample])
    assert json.loads(payload)["samples"][0]["clock"] == "unsynced"
