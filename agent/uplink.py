"""The MQTT link: telemetry batches out of the buffer, ``status`` and ``meta`` retained.

One owner task runs ``Uplink.run``; it reconnects with backoff whenever the broker goes away and
re-sends whatever the broker had not acknowledged. With QoS 1, ``publish`` returns only after the
PUBACK, and only then do the samples leave the buffer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiomqtt

from . import __version__
from .aio import cancel_and_wait, wait_event
from .backoff import Backoff
from .buffer import Buffer
from .clock import Clock, ClockGuard
from .config import Config, MqttSection
from .model import Sample
from .mqtt_link import (
    ACL_HINT,
    NOT_ONLINE,
    PUBLISH_TIMEOUT,
    connect_failure,
    library_logger,
    tls_context,
)

log = logging.getLogger(__name__)

#: A telemetry message's size limit, well below any broker's (mosquitto: 256 MB; AWS IoT: 128 kB).
MAX_PAYLOAD = 100_000
#: How long samples wait whose final form the disk would not store, before they are tried again.
SETTLE_RETRY = 5.0


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def meta_payload(config: Config) -> dict[str, Any]:
    """SPEC §4 ``meta``: every device and point with its driver, unit, type, writable, interval."""
    return {
        "agent": config.agent.id,
        "version": __version__,
        "devices": {
            d.name: {
                "driver": d.driver,
                "bus": d.bus,
                "interval": d.interval,
                "points": {
                    p.name: {"type": p.type, "unit": p.unit, "writable": p.writable}
                    for p in d.points
                },
            }
            for d in config.devices
        },
    }


def telemetry_messages(
    agent_id: str, samples: list[Sample], backlog: bool = False
) -> list[tuple[list[Sample], bytes]]:
    """SPEC §4 telemetry batches, each at most MAX_PAYLOAD bytes (one sample may exceed it),
    with the samples each carries. ``backlog`` marks samples sent late, from the disk.

    Each sample is encoded once and the messages are joined from those pieces: a batch that is
    too large is split without encoding anything twice.
    """
    head = b'{"agent":' + _json(agent_id) + b',"samples":['
    tail = b'],"backlog":true}' if backlog else b"]}"
    messages: list[tuple[list[Sample], bytes]] = []
    pieces: list[bytes] = []
    start, size = 0, len(head) + len(tail)
    for index, sample in enumerate(samples):
        piece = _json(sample.to_json())
        if pieces and size + len(piece) + 1 > MAX_PAYLOAD:
            messages.append((samples[start:index], head + b",".join(pieces) + tail))
            start, pieces, size = index, [], len(head) + len(tail)
        pieces.append(piece)
        size += len(piece) + 1
    if pieces:
        messages.append((samples[start:], head + b",".join(pieces) + tail))
    return messages


class Uplink:
    """Sends the buffer's samples to the broker, oldest first, one acknowledged batch at a time."""

    def __init__(
        self,
        config: Config,
        buffer: Buffer,
        clock: Clock | None = None,
        guard: ClockGuard | None = None,
        on_command: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.config = config
        #: Receives each message on ``cmd`` (topic, payload); None: ``cmd`` is not subscribed.
        self.on_command = on_command
        self.mqtt: MqttSection = config.mqtt
        self.buffer = buffer
        self.clock = clock or Clock()
        self.guard = guard or ClockGuard(self.clock)
        self.topic = f"{self.mqtt.topic_prefix}/{config.agent.id}"
        self.connected = False
        self._client_online: aiomqtt.Client | None = None
        self.connects = 0  # successful connections; more than one means reconnects
        self.sent = 0  # samples the broker acknowledged (or took, at QoS 0)
        self.last_error = ""  # why the link last failed, for `edge-agent status`
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._started = self.clock.wall_ms()

    def wake(self) -> None:
        """New samples are in the buffer."""
        self._wake.set()

    async def run(self) -> None:
        """Connect, send, and reconnect with backoff until ``stop``."""
        backoff = Backoff(initial=1.0, maximum=self.mqtt.reconnect_max)
        # Why connecting failed, each said once until the link is up again: a broker that refuses
        # us is refused again at every retry, and the same line every minute buries the log.
        reported: set[str] = set()
        while not self._stopping.is_set():
            accepted = False  # the broker took our CONNECT: what fails next is not connecting
            try:
                async with self._client() as client:
                    accepted = True
                    await self._online(client)
                    backoff.reset()  # only now: a broker that drops us at once is retried slowly
                    receiver = asyncio.create_task(self._receive(client), name="mqtt receive")
                    try:
                        await self._send_until_stopped(client)
                        await self._offline(client)
                    finally:
                        await cancel_and_wait(receiver)
                    return
            except aiomqtt.MqttError as exc:
                self._client_online = None
                self.buffer.release()
                self.last_error = str(exc)
                if self.connected:
                    log.warning("mqtt %s: link lost: %s", self.mqtt.url, exc)
                    reported.clear()
                else:
                    level, reason = (
                        (logging.ERROR, f"{NOT_ONLINE} ({exc}): {ACL_HINT} {self.topic}/#")
                        if accepted
                        else connect_failure(self.mqtt, exc, self._library_errors.last)
                    )
                    if reason not in reported:
                        reported.add(reason)
                        log.log(level, "mqtt %s: %s", self.mqtt.url, reason)
                    log.debug("mqtt %s: connect failed: %r", self.mqtt.url, exc)
                self.connected = False
                await wait_event(self._stopping, backoff.next_delay())

    async def stop(self) -> None:
        """Ask ``run`` to send what is due, publish ``offline`` and disconnect cleanly."""
        self._stopping.set()
        self._wake.set()

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(f"{self.topic}/status", _json({"state": "offline"}), qos=1, retain=True)
        library_log, self._library_errors = library_logger(self.mqtt.client_id)
        self._library_errors.last = None  # what this attempt, not an earlier one, ran into
        return aiomqtt.Client(
            self.mqtt.host,
            self.mqtt.port,
            identifier=self.mqtt.client_id,
            username=self.mqtt.username,
            password=self.mqtt.password,
            logger=library_log,
            will=will,
            # MQTT counts keepalive in whole seconds, and 0 would turn it off.
            keepalive=max(1, round(self.mqtt.keepalive)),
            timeout=PUBLISH_TIMEOUT,
            max_inflight_messages=self.mqtt.max_inflight,
            tls_context=tls_context(self.mqtt),
        )

    async def _online(self, client: aiomqtt.Client) -> None:
        status = {"state": "online", "version": __version__, "started": self._started}
        await self._publish(client, "status", _json(status), qos=1, retain=True)
        if self.on_command is not None:
            await client.subscribe(f"{self.topic}/cmd", qos=1)
        await self._publish(client, "meta", _json(meta_payload(self.config)), qos=1, retain=True)
        log.info("mqtt %s: connected as %s", self.mqtt.url, self.mqtt.client_id)
        self.connects += 1
        self.connected = True
        self._client_online = client

    async def _offline(self, client: aiomqtt.Client) -> None:
        self._client_online = None
        await self._publish(client, "status", _json({"state": "offline"}), qos=1, retain=True)
        self.connected = False

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Hand each message on ``cmd`` to ``on_command``, until the link goes."""
        try:
            async for message in client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                if self.on_command is not None:
                    self.on_command(str(message.topic), data)
        except aiomqtt.MqttError:  # the link is gone: the sending side notices and reconnects
            return

    async def publish_reply(self, reply: dict[str, Any]) -> bool:
        """Answer a command on ``cmd/reply`` (QoS 1); False when the link is down."""
        client = self._client_online
        if client is None or not self.connected:
            return False
        try:
            await self._publish(client, "cmd/reply", _json(reply), qos=1)
        except aiomqtt.MqttError:
            return False
        return True

    async def reconfigure(self, config: Config) -> None:
        """Devices and points changed (a reload): ``meta`` says so now if the link is up, else
        at the next connection. The MQTT settings themselves are the ones started with."""
        self.config = replace(config, mqtt=self.mqtt)
        client = self._client_online
        if client is None:
            return
        try:
            await self._publish(
                client, "meta", _json(meta_payload(self.config)), qos=1, retain=True
            )
        except aiomqtt.MqttError as exc:  # the link's own loop notices and reconnects
            log.debug("mqtt: meta not republished: %s", exc)

    async def publish_health(self, payload: dict[str, Any]) -> bool:
        """Publish ``health`` (QoS 0: a report that is stale by the next one is not buffered);
        False while the link is down."""
        client = self._client_online
        if client is None or not self.connected:
            return False
        try:
            await self._publish(client, "health", _json(payload), qos=0)
        except aiomqtt.MqttError:
            return False
        return True

    async def _send_until_stopped(self, client: aiomqtt.Client) -> None:
        """Send live samples as they arrive and drain the backlog beside them, oldest first.

        Rounds alternate a live batch and a backlog batch, so current readings go out at once
        after an outage and the backlog never starves them. While live, at most one batch per
        ``batch_interval`` (but soon enough to be acknowledged before the buffer commits it).
        """
        loop = asyncio.get_running_loop()
        last_sent = 0.0
        pace = min(self.mqtt.batch_interval, self.buffer.commit_age / 3)
        while True:
            self._wake.clear()  # before taking: a sample added while we publish wakes a round
            live = self.buffer.take_live(self.mqtt.batch_max)
            if live:
                await self._send(client, live, backlog=False)
                last_sent = loop.time()
            backlog = self.buffer.take_backlog(self.mqtt.batch_max)
            if backlog and not await self._send(client, backlog, backlog=True):
                # the disk would not store the form they must be sent in: not in a busy loop
                await wait_event(self._stopping, SETTLE_RETRY)
            if live or backlog:
                continue
            if self._stopping.is_set():
                return
            await self._wake.wait()
            pause = last_sent + pace - loop.time()
            if pause > 0:
                await wait_event(self._stopping, pause)

    async def _send(self, client: aiomqtt.Client, samples: list[Sample], backlog: bool) -> bool:
        """Publish a batch (in messages of at most MAX_PAYLOAD bytes), acknowledging each."""
        stamped = self._final_forms(samples)
        for sent, payload in telemetry_messages(self.config.agent.id, stamped, backlog):
            await self._publish(client, "telemetry", payload, self.mqtt.qos)
            self.buffer.acknowledge(sent)
            self.sent += len(sent)
        return bool(stamped)

    def _final_forms(self, samples: list[Sample]) -> list[Sample]:
        """The samples as they are sent, now and whenever they are sent again: one taken before
        the clock could be trusted is re-stamped if that can be known now, and otherwise goes
        out marked unsynced for good (a copy the broker may already have must not differ from
        a later one). The buffer stores the form before it leaves."""
        final: list[Sample] = []
        settled: list[Sample] = []
        for sample in samples:
            if sample.mono is None or sample.boot is None:
                final.append(sample)
                continue
            restamped = self.guard.restamp(sample)
            settled.append(restamped if restamped is not sample else replace(sample, boot=None))
            final.append(settled[-1])
        if not settled:
            return final
        refused = self.buffer.settle(settled)  # a form the disk would not take is not sent yet
        return [s for s in final if s.id not in refused]

    async def _publish(
        self, client: aiomqtt.Client, subtopic: str, payload: bytes, qos: int, retain: bool = False
    ) -> None:
        await client.publish(f"{self.topic}/{subtopic}", payload, qos=qos, retain=retain)
