"""The link's decisions without a broker: when to probe and when to back off, how refusals and
size limits shape what is sent. The real broker's side is tests/test_link_mqtt5.py."""

from __future__ import annotations

import errno
import random
import socket
import ssl

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.service.status import format_status
from agent.uplink.link import PROTOCOL_ERROR, LinkDropped, broker_away, busy_refusal


def failed_with(cause: BaseException) -> aiomqtt.MqttError:
    """What aiomqtt raises for a failed socket connect: the cause as its context."""
    try:
        try:
            raise cause
        except BaseException:
            raise aiomqtt.MqttError(str(cause)) from None
    except aiomqtt.MqttError as exc:
        return exc


@pytest.mark.parametrize(
    "cause",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        socket.gaierror(-3, "Temporary failure in name resolution"),
        TimeoutError("timed out"),
    ],
)
def test_a_broker_that_is_not_there_is_probed_for(cause: BaseException) -> None:
    assert broker_away(failed_with(cause))


@pytest.mark.parametrize(
    "exc",
    [
        failed_with(ssl.SSLError(1, "WRONG_VERSION_NUMBER")),
        failed_with(ConnectionResetError(errno.ECONNRESET, "reset")),
        aiomqtt.MqttError("Operation timed out"),  # TCP got through, no CONNACK came
        aiomqtt.MqttCodeError(ReasonCode(PacketTypes.CONNACK, identifier=135)),
    ],
)
def test_a_broker_that_answered_is_backed_off_from(exc: aiomqtt.MqttError) -> None:
    assert not broker_away(exc)


def test_a_busy_broker_is_named_so_and_a_refusal_is_not_busy() -> None:
    busy = aiomqtt.MqttCodeError(ReasonCode(PacketTypes.CONNACK, identifier=0x89))
    assert busy_refusal(busy) == "server busy"
    rate = aiomqtt.MqttCodeError(ReasonCode(PacketTypes.CONNACK, identifier=0x9F))
    assert busy_refusal(rate) == "connection rate exceeded"
    denied = aiomqtt.MqttCodeError(ReasonCode(PacketTypes.CONNACK, identifier=135))
    assert busy_refusal(denied) is None


def test_a_refusal_is_never_retried_at_once_and_its_wait_doubles() -> None:
    backoff = Backoff(5.0, 60.0, rng=random.Random(1), least=0.5)
    delays = [backoff.next_delay() for _ in range(6)]
    caps = [5, 10, 20, 40, 60, 60]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True)), delays
    backoff.reset()
    assert backoff.next_delay() <= 5


def test_a_backoff_after_thousands_of_attempts_stays_at_its_maximum() -> None:
    """Days of a refusing broker, a full disk, a dead bus: 2.0 ** 1024 would overflow."""
    backoff = Backoff(5.0, 60.0, rng=random.Random(1), least=0.5)
    backoff.attempts = 5000
    assert 30.0 <= backoff.next_delay() <= 60.0


def test_a_dropped_link_keeps_the_reason_code_it_went_with() -> None:
    dropped = LinkDropped("Unexpected disconnection", PROTOCOL_ERROR)
    assert dropped.reason == 0x82
    assert isinstance(dropped, aiomqtt.MqttError)


def test_status_shows_the_protocol_and_what_the_broker_refused() -> None:
    text = "\n".join(
        format_status(
            {
                "link": {
                    "state": "connected",
                    "broker": "mqtt://b:1883",
                    "protocol": "5",
                    "reconnects": 0,
                    "refused": 3,
                    "too_large": 1,
                    "sent": 10,
                },
                "devices": {},
            }
        )
    )
    assert (
        "connected to mqtt://b:1883 (MQTT 5); 0 reconnects, 10 readings sent, 3 messages REFUSED "
        "by the broker, 1 sample too large for the broker, dropped" in text
    )
