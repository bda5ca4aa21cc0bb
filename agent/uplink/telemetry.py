"""The MQTT link: telemetry batches out of the buffer, ``status`` and ``meta`` retained.

One owner task runs ``Uplink.run``. With QoS 1 a batch leaves the buffer only after a PUBACK
that is an acknowledgement: at MQTT 5 the broker's refusals (an ACL, a quota) come as reason
codes, and refused samples stay. When the link goes, the broker is *probed* (a TCP handshake,
every ``PROBE_EVERY``) and connected to a random moment within ``reconnect_window`` after it
answers: back within a second of the broker, and a fleet spread over the window. A broker that
answers and refuses us (credentials, busy) is retried with exponential backoff instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from .. import __version__
from ..aio import cancel_and_wait, wait_event
from ..backoff import Backoff
from ..clock import Clock, ClockGuard
from ..config import Config, MqttSection
from ..config.push import config_hash
from ..model import Sample
from ..store.buffer import Buffer
from .link import (
    ACL_HINT,
    FIRST_REFUSAL,
    NOT_ONLINE,
    PACKET_TOO_LARGE,
    PROTOCOL_ERROR,
    PUBLISH_TIMEOUT,
    Client,
    ClosedBeforeConnack,
    LinkDropped,
    Refused,
    broker_away,
    busy_refusal,
    connect_failure,
    connect_properties,
    library_logger,
    publish_properties,
    reachable,
    tls_context,
)
from .wire import MAX_PAYLOAD, Message, TelemetryEncoder, to_json_bytes

log = logging.getLogger(__name__)

#: While the broker is away it is probed this often (drawn from half to one and a half times
#: it); after ``FAST_PROBING`` seconds of an outage only every ``SLOW_PROBE_EVERY``: a long
#: outage costs a few bytes a second, not a hundred.
PROBE_EVERY = 0.5
SLOW_PROBE_EVERY = 5.0
FAST_PROBING = 120.0
#: How long a stop waits for a broker that went away just then, to publish ``offline``.
GOODBYE_WITHIN = 5.0
#: A session shorter than this does not prove the broker well: a broker that takes us and drops
#: us again is retried with backoff, not at once.
STABLE_SESSION = 30.0
#: After the broker refused telemetry, the first wait before trying again (doubling up to
#: ``reconnect_max``): refused samples are neither deleted nor spun on.
REFUSED_RETRY = 5.0
#: A PUBLISH's bytes beside its payload, at most: fixed header, topic length, packet id and our
#: properties (topic alias, payload format, content type); the topic and content type are added.
PUBLISH_OVERHEAD = 24
#: The smallest message size limit learnt from a broker that drops the link at large messages.
MIN_LEARNT_LIMIT = 512
#: What to do about a refused publish, by reason code.
REFUSAL_HINTS = {
    0x87: "the broker's access rules (ACL) do not let this client publish there: allow it",
    0x97: "the broker's quota for this client is used up: raise it, or send less often",
    0x90: "the broker does not take this topic name: check [mqtt] topic_prefix",
    0x99: 'the broker does not take the payload format: try [mqtt] compression = "none"',
    PACKET_TOO_LARGE: "the broker's message size limit: lower [mqtt] batch_max",
}


def meta_payload(
    config: Config, missing: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """``meta`` (docs/mqtt.md): every device and point with its driver, unit, type, writable,
    interval; ``missing``: per device, the points its unit lacks (as its polls found)."""
    devices: dict[str, dict[str, Any]] = {}
    for d in config.devices:
        devices[d.name] = {
            "driver": d.driver,
            "bus": d.bus,
            "interval": d.interval,
            "points": {
                p.name: {"type": p.value_type, "unit": p.unit, "writable": p.writable}
                for p in d.points
            },
        }
        if missing and missing.get(d.name):
            devices[d.name]["missing"] = list(missing[d.name])
    return {
        "agent": config.agent.id,
        "version": __version__,
        "config_hash": config_hash(config.files),
        "devices": devices,
    }


class Uplink:
    """Sends the buffer's samples to the broker, oldest first, one acknowledged batch at a time."""

    #: After an outage, live batches alternate with the backlog's: current readings go out at
    #: once. False: the backlog goes first, everything in the order it was read.
    live_first = True

    def __init__(
        self,
        config: Config,
        buffer: Buffer,
        clock: Clock | None = None,
        guard: ClockGuard | None = None,
        on_command: Callable[[str, bytes], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        #: Per device, the points its unit lacks, for ``meta`` (see ``points_missing``).
        self.missing: dict[str, tuple[str, ...]] = {}
        #: Receives each message on ``cmd`` (topic, payload); None: ``cmd`` is not subscribed.
        self.on_command = on_command
        self.buffer = buffer
        self.clock = clock or Clock()
        self.guard = guard or ClockGuard(self.clock)
        self._rng = rng or random.Random()
        self._use(config.mqtt)
        self.connected = False
        self._client_online: Client | None = None
        self.connects = 0  # successful connections; more than one means reconnects
        self.sent = 0  # samples the broker acknowledged (or took, at QoS 0)
        self.refused = 0  # publishes the broker refused (MQTT 5 reason codes)
        self.too_large = 0  # samples dropped: larger than the broker takes
        self.last_error = ""  # why the link last failed, for `edge-agent status`
        #: What the broker said in its last CONNACK that we honour (for `status`).
        self.broker_limits: dict[str, int] = {}
        self._refusals: dict[str, str] = {}  # subtopic: the refusal said once, until accepted
        self._packet_limit: int | None = None  # the broker's Maximum Packet Size (CONNACK)
        self._learnt_limit: int | None = None  # the size at which the broker drops us
        self._refit = False  # the link went at a message too large: back at once, smaller
        self._suspect: int | None = None  # a lone sample the link went at, once
        self._lone_limit: int | None = None  # a lone sample this large: the link went, twice
        self._dropped_at: dict[str, int] = {}  # subtopic: the size the link went at
        self._alias = False  # the broker takes a topic alias for telemetry on this connection
        self._alias_set = False  # ... and it has been set up on this connection
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        #: Set by ``stop`` and by new [mqtt] settings: ends every wait between connections.
        self._interrupted = asyncio.Event()
        #: [mqtt] settings a reload brought, taken at the next connection (None: none new).
        self._new_settings: MqttSection | None = None
        #: Set to end the current connection cleanly and open the next one at once (new
        #: [mqtt] settings, or a mode's own reason); ``_leaving_for`` says why, for the log.
        self._leaving = asyncio.Event()
        self._leaving_for = ""
        self._leaving_spread = False
        #: Set once ``meta`` of the current configuration is published: the broker has the
        #: agent back with it (a pushed configuration is confirmed so).
        self.published = asyncio.Event()
        self._started = self.clock.wall_ms()

    def _use(self, mqtt: MqttSection) -> None:
        """Take these [mqtt] settings, and what is derived from them (between connections)."""
        self.mqtt = mqtt
        self.topic = f"{mqtt.topic_prefix}/{self.config.agent.id}"
        self.encoder = TelemetryEncoder(self.config.agent.id, mqtt.compression)
        self.v5 = mqtt.protocol == "5"
        self._client_id = mqtt.client_id
        self._backoff = Backoff(initial=1.0, maximum=mqtt.reconnect_max, rng=self._rng)
        # never a quick retry of what was just refused: at least half the current wait
        self._refused_wait = Backoff(REFUSED_RETRY, mqtt.reconnect_max, rng=self._rng, least=0.5)

    def wake(self) -> None:
        """New samples are in the buffer."""
        self._wake.set()

    def counts(self) -> dict[str, int]:
        """For ``health`` and ``status``: reconnections, refused publishes, samples too large."""
        return {
            "reconnects": max(0, self.connects - 1),
            "refused": self.refused,
            "too_large": self.too_large,
        }

    # --- the connection

    async def run(self) -> None:
        """Connect, send, and reconnect until ``stop``; after ``stop``, try a last time to say
        ``offline`` if the link went just then."""
        # Why connecting failed, each said once until the link is up again: a broker that refuses
        # us is refused again at every retry, and the same line every minute buries the log.
        reported: set[str] = set()
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            self._take_new_settings()
            began = loop.time()
            failure = await self._session(reported)
            if failure is None:
                return
            if self._stopping.is_set():
                break
            if failure == "left" or self._leaving.is_set():
                reported.clear()  # new settings, new reasons
                await self._spread_if_asked()
                continue
            stable = failure == "lost" and loop.time() - began >= STABLE_SESSION
            if stable:
                self._backoff.reset()  # only now: a broker that drops us at once is not well
            if failure == "lost" and not self._refit:
                self._forget_size_limits()  # the broker that comes back may take more
            if self._refit:  # not the broker's trouble: ours, mended
                self._refit = False
            elif failure == "away" or stable:
                await self._until_reachable(self._interrupted)
            elif failure == "closed" and not await reachable(self.mqtt.host, self.mqtt.port):
                await self._until_reachable(self._interrupted)  # the broker went under CONNECT
            else:  # refused, busy, dropped at once: the broker needs time, or a person
                await wait_event(self._interrupted, self._backoff.next_delay())
            if not self._interrupted.is_set():
                window = self._rng.uniform(0, self.mqtt.reconnect_window)
                await wait_event(self._interrupted, window)
        if self.connects:  # stopped while the link was down: its retained status says online
            await self._goodbye()

    async def _spread_if_asked(self) -> None:
        """After a leave every agent of a fleet made at the same moment: a random wait within
        ``reconnect_window``, so that they do not all connect again at once."""
        if self._leaving_spread:  # a stop or new [mqtt] settings end the wait
            await wait_event(self._interrupted, self._rng.uniform(0, self.mqtt.reconnect_window))

    def _take_new_settings(self) -> None:
        """Between connections: the [mqtt] settings a reload brought, if any."""
        if not self._stopping.is_set():
            self._interrupted.clear()
        self._leaving.clear()
        self._leaving_spread = False
        if self._new_settings is not None:
            self._use(self._new_settings)
            self._new_settings = None
            self._forget_size_limits()

    async def _session(self, reported: set[str]) -> str | None:
        """One connection, until it fails or the agent stops: None after a clean stop, else how
        it ended: "left" (cleanly, see ``_leave``), "away" (nothing answered),
        "closed" (the connection went before CONNACK), "lost" (after going online), "refused"."""
        accepted = False  # the broker took our CONNECT: what fails next is not connecting
        try:
            async with self._client() as client:
                accepted = True
                self._adopt(client)
                await self._online(client)
                await self._until_stopped_or_lost(client)
                await self._offline(client)
                if not self._stopping.is_set():
                    log.info("mqtt %s: leaving %s", self.mqtt.url, self._leaving_for)
                    return "left"
                return None
        except aiomqtt.MqttError as exc:
            return self._failed(exc, accepted, reported)
        except (UnicodeError, ValueError) as exc:  # paho's refusal of a name it cannot encode
            return self._failed(aiomqtt.MqttError(f"cannot connect: {exc}"), accepted, reported)

    async def _until_stopped_or_lost(self, client: Client) -> None:
        """Send until the agent stops. The receiving side sees a lost link first when nothing
        is being sent (an idle gateway): that ends the session too, not only a failed send."""
        receiver = asyncio.create_task(self._receive(client), name="mqtt receive")
        sender = asyncio.create_task(self._send_until_stopped(client), name="mqtt send")
        moved = asyncio.create_task(self._leaving.wait(), name="mqtt leaving")
        try:
            await asyncio.wait([receiver, sender, moved], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sender.done():
                await cancel_and_wait(sender)
            await cancel_and_wait(receiver, moved)
        if sender.done() and not sender.cancelled():
            sender.result()  # its failure is the session's
        elif self._leaving.is_set():
            self.buffer.release()  # what was in flight goes out again on the new link
        else:
            raise aiomqtt.MqttError(client.lost_reason())

    def _failed(self, exc: aiomqtt.MqttError, accepted: bool, reported: set[str]) -> str:
        self._client_online = None
        self.buffer.release()
        self.last_error = str(exc)
        if self.connected:
            self.connected = False
            # at a message too large, the line that says so is enough
            log.log(
                logging.INFO if self._refit else logging.WARNING,
                "mqtt %s: link lost: %s",
                self.mqtt.url,
                exc,
            )
            reported.clear()
            return "lost"
        if busy := busy_refusal(exc):
            level, reason = logging.WARNING, f"the broker refused us for now ({busy}); retrying"
        elif accepted and self._refit:  # a message too large, said by its own line
            return "refused"
        elif accepted:
            level, reason = logging.ERROR, f"{NOT_ONLINE} ({exc}): {ACL_HINT} {self.topic}/#"
        else:
            level, reason = connect_failure(self.mqtt, exc, self._library_errors.last)
        if reason not in reported:
            reported.add(reason)
            log.log(level, "mqtt %s: %s", self.mqtt.url, reason)
        log.debug("mqtt %s: connect failed: %r", self.mqtt.url, exc)
        if accepted:
            return "refused"
        if isinstance(exc, ClosedBeforeConnack):  # a broker stopping, or a proxy without one
            return "closed"
        return "away" if broker_away(exc) else "refused"

    async def _goodbye(self) -> None:
        """The agent stops while the link is down: one more connection, if the broker answers
        within ``GOODBYE_WITHIN``, to publish ``offline`` (a broker that went away published
        no will for us)."""
        try:
            await asyncio.wait_for(self._say_offline(), GOODBYE_WITHIN)
        except (aiomqtt.MqttError, asyncio.TimeoutError) as exc:
            log.warning(
                "mqtt %s: could not publish offline as we stopped (%s): the broker's retained "
                "status says online until the agent is back",
                self.mqtt.url,
                str(exc) or "the broker did not come back in time",
            )

    async def _say_offline(self) -> None:
        await self._until_reachable(asyncio.Event())  # bounded by the caller's timeout
        client = self._client()
        # The kept session may hand us commands queued meanwhile: not acknowledged here, so
        # that the broker keeps them for the agent's next run.
        client.keep_unacknowledged()
        async with client:
            await self._offline(client)
        log.info("mqtt %s: offline published as we stopped", self.mqtt.url)

    async def _until_reachable(self, unless: asyncio.Event) -> None:
        """Probe the broker's port until it answers, or ``unless`` is set."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        while not unless.is_set():
            if await reachable(self.mqtt.host, self.mqtt.port):
                return
            every = PROBE_EVERY if loop.time() - since < FAST_PROBING else SLOW_PROBE_EVERY
            await wait_event(unless, self._rng.uniform(every / 2, every * 1.5))

    async def stop(self) -> None:
        """Ask ``run`` to send what is due, publish ``offline`` and disconnect cleanly."""
        self._stopping.set()
        self._interrupted.set()
        self._wake.set()

    def _client(self) -> Client:
        will = self._will()
        library_log, self._library_errors = library_logger(self.mqtt.client_id)
        self._library_errors.last = None  # what this attempt, not an earlier one, ran into
        v5: dict[str, Any] = {}
        if self.v5:
            connect = connect_properties()
            expiry = self._session_expiry()
            connect.SessionExpiryInterval = round(expiry)
            # A session kept by the broker holds our `cmd` subscription and what came for us
            # while we were away; none kept (expiry 0): a new one each time.
            clean = expiry == 0
            v5 = {"properties": connect, "clean_start": clean}
        return Client(
            self.mqtt.host,
            self.mqtt.port,
            identifier=self._client_id,
            username=self.mqtt.username,
            password=self.mqtt.password,
            logger=library_log,
            will=will,
            # MQTT counts keepalive in whole seconds, and 0 would turn it off.
            keepalive=max(1, round(self.mqtt.keepalive)),
            timeout=PUBLISH_TIMEOUT,
            max_inflight_messages=self.mqtt.max_inflight,
            tls_context=tls_context(self.mqtt),
            protocol=aiomqtt.ProtocolVersion.V5 if self.v5 else aiomqtt.ProtocolVersion.V311,
            **v5,
        )

    def _will(self) -> aiomqtt.Will:
        """What the broker publishes for us when the link goes without a goodbye."""
        return aiomqtt.Will(
            f"{self.topic}/status", to_json_bytes({"state": "offline"}), qos=1, retain=True
        )

    def _session_expiry(self) -> float:
        return self.mqtt.session_expiry

    def _adopt(self, client: Client) -> None:
        """Honour what the broker said in CONNACK: its in-flight window, its largest packet,
        topic aliases, the client id it assigned. (paho itself honours Server Keep Alive.)"""
        said = client.connack
        window = getattr(said, "ReceiveMaximum", None)  # the client applied it
        self._packet_limit = getattr(said, "MaximumPacketSize", None)
        self._alias = bool(getattr(said, "TopicAliasMaximum", 0))
        self._alias_set = False
        assigned = getattr(said, "AssignedClientIdentifier", None)
        if assigned and assigned != self._client_id:
            log.info("mqtt %s: the broker assigned us the client id %s", self.mqtt.url, assigned)
            self._client_id = assigned  # so that the session is ours again next time
        limits = {
            "receive_maximum": window,
            "maximum_packet_size": self._packet_limit,
            "server_keepalive": getattr(said, "ServerKeepAlive", None),
        }
        self.broker_limits = {k: v for k, v in limits.items() if v is not None}

    async def _online(self, client: Client) -> None:
        status = {"state": "online", "version": __version__, "started": self._started}
        # Together, not one round trip after another: on a cellular link each costs a second
        # before the first reading goes out.
        waits = [
            self._publish_other(client, "status", to_json_bytes(status), qos=1, retain=True),
            self._publish_other(
                client,
                "meta",
                to_json_bytes(meta_payload(self.config, self.missing)),
                qos=1,
                retain=True,
            ),
        ]
        if self.on_command is not None:
            waits.append(self._subscribe(client))
        _, meta_published, *_ = await asyncio.gather(*waits)
        log.info(
            "mqtt %s: connected as %s (MQTT %s)",
            self.mqtt.url,
            self._client_id,
            self.mqtt.protocol,
        )
        self.connects += 1
        self.connected = True
        self._client_online = client
        if meta_published:
            self.published.set()

    def subscriptions(self, config: Config | None = None) -> list[str]:
        """The subtopics messages come to the agent on: ``cmd``, and what ``[remote]`` turns
        on (``config/set``, ``config/get``, ``diag/NAME``)."""
        remote = (config or self.config).remote
        topics = ["cmd"] if self.on_command is not None else []
        if self.on_command is not None and remote.config:
            topics += ["config/set", "config/get"]
        if self.on_command is not None:
            topics += [f"diag/{name}" for name in remote.diagnostics]
        return topics

    async def _subscribe(self, client: Client) -> bool:
        topics = [f"{self.topic}/{subtopic}" for subtopic in self.subscriptions()]
        granted = await client.subscribe([(t, 1) for t in topics])
        codes = [getattr(code, "value", code) for code in granted or ()]
        refused = [
            f"{topic} ({code})"
            for topic, code, value in zip(topics, granted or (), codes, strict=False)
            if isinstance(value, int) and value >= FIRST_REFUSAL
        ]
        if refused:
            said = f"subscription refused: {refused}"
            if self._refusals.get("cmd") != said:
                self._refusals["cmd"] = said
                log.error(
                    "mqtt %s: the broker refused our subscription to %s: nothing sent there "
                    "can reach this gateway; check that its access rules let this client read it",
                    self.mqtt.url,
                    ", ".join(refused),
                )
            return False
        self._refusals.pop("cmd", None)
        return True

    async def _offline(self, client: Client) -> None:
        self._client_online = None
        await self._publish_other(
            client, "status", to_json_bytes({"state": "offline"}), qos=1, retain=True
        )
        self.connected = False

    async def _receive(self, client: Client) -> None:
        """Hand each message on ``cmd`` to ``on_command`` (those ``_accepts``), until the link
        goes."""
        try:
            async for message in client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                if not self._accepts(str(message.topic), bool(message.retain)):
                    continue
                if self.on_command is not None:
                    self.on_command(str(message.topic), data)
        except aiomqtt.MqttError:  # the link is gone: the sending side notices and reconnects
            return

    def _accepts(self, topic: str, retained: bool) -> bool:
        """Whether a message that came is handed on (a mode may refuse retained ones)."""
        return True

    # --- messages other than telemetry

    async def _publish_other(
        self, client: Client, subtopic: str, payload: bytes, qos: int, retain: bool = False
    ) -> bool:
        """Publish a message that is not telemetry; False (said once, counted) when the broker
        refused it: the link goes on."""
        topic = f"{self.topic}/{subtopic}"
        properties = self._json_properties() if self.v5 else None
        if self._packet_limit is not None and (
            len(payload) + PUBLISH_OVERHEAD + len(topic) > self._packet_limit
        ):
            self._say_too_large(
                subtopic, len(payload), f"its Maximum Packet Size is {self._packet_limit}"
            )
            return False
        if len(payload) >= self._dropped_at.get(subtopic, len(payload) + 1):
            self._say_too_large(subtopic, len(payload), "it dropped the link at it")
            return False
        try:
            await client.publish_acked(topic, payload, qos, retain, properties)
        except Refused as refusal:
            self._say_refused(subtopic, refusal, "")
            return False
        except LinkDropped as dropped:
            if _size_trouble(dropped, len(payload)):  # not again, or we never get online
                self._dropped_at[subtopic] = len(payload)
                self._refit = True
            raise
        self._say_accepted(subtopic)
        return True

    def _json_properties(self) -> Properties:
        properties = publish_properties()
        properties.PayloadFormatIndicator = 1  # UTF-8: JSON
        return properties

    async def publish_reply(self, reply: dict[str, Any], subtopic: str = "cmd/reply") -> bool:
        """Answer a command on ``cmd/reply`` (or another reply topic; QoS 1); False when the
        link is down or the broker refused it (which the link says itself)."""
        client = self._client_online
        if client is None or not self.connected:
            return False
        try:
            return await self._publish_other(client, subtopic, to_json_bytes(reply), qos=1)
        except aiomqtt.MqttError:
            return False

    async def reconfigure(self, config: Config) -> None:
        """A reload: ``meta`` says what changed now if the link is up, else at the next
        connection. New [mqtt] settings (or subscriptions) take a new connection: the current
        one ends cleanly (``offline`` said) and the next uses them."""
        # Against the settings the next connection would use: new ones a reload brought and
        # the link has not taken yet are replaced (or cancelled) by these, never kept.
        pending = self._new_settings if self._new_settings is not None else self.mqtt
        relink = config.mqtt != pending or self.subscriptions(config) != self.subscriptions()
        self.config = config
        self.published.clear()
        if relink:
            self._new_settings = config.mqtt
            self._interrupted.set()  # and the waits between connections end
            self._leave("for the new [mqtt] settings")
            return
        await self._republish_meta()

    def _leave(self, why: str, spread: bool = False) -> None:
        """End the current connection cleanly (its goodbye said) and open the next at once;
        ``spread``: after a random wait within ``reconnect_window``, for a reason every agent
        of a fleet sees at the same moment."""
        self._leaving_for = why
        self._leaving_spread = spread
        self._leaving.set()

    async def points_missing(self, missing: Mapping[str, tuple[str, ...]]) -> None:
        """The points each device's unit lacks, as its polls found them: ``meta`` says so, now
        if they changed and the link is up, else at the next connection."""
        if dict(missing) == self.missing:
            return
        self.missing = dict(missing)
        await self._republish_meta()

    async def _republish_meta(self) -> None:
        client = self._client_online
        if client is None or self._leaving.is_set():
            return  # the link is leaving for new settings: ``meta`` is said on the new one
        try:
            meta = to_json_bytes(meta_payload(self.config, self.missing))
            if await self._publish_other(client, "meta", meta, qos=1, retain=True):
                self.published.set()
        except aiomqtt.MqttError as exc:  # the link's own loop notices and reconnects
            log.debug("mqtt: meta not republished: %s", exc)

    async def publish_health(self, payload: dict[str, Any]) -> bool:
        """Publish ``health`` (QoS 0: a report that is stale by the next one is not buffered);
        False while the link is down."""
        client = self._client_online
        if client is None or not self.connected:
            return False
        try:
            await self._publish_other(client, "health", to_json_bytes(payload), qos=0)
        except aiomqtt.MqttError:
            return False
        return True

    def _say_refused(self, subtopic: str, refusal: Refused, consequence: str) -> None:
        """One line per refusal (topic and reason), until that topic is accepted again."""
        self.refused += 1
        self.last_error = f"{refusal.topic}: refused: {refusal}"
        said = str(refusal)
        if self._refusals.get(subtopic) == said:
            return
        self._refusals[subtopic] = said
        hint = REFUSAL_HINTS.get(refusal.reason.value, "the broker's log says why")
        log.error(
            "mqtt %s: the broker refused our message on %s: %s: %s%s",
            self.mqtt.url,
            refusal.topic,
            said,
            hint,
            consequence,
        )

    def _say_too_large(self, subtopic: str, size: int, why: str) -> None:
        said = f"too large: {size}"
        if self._refusals.get(subtopic) != said:
            self._refusals[subtopic] = said
            log.error(
                "mqtt %s: our %s message is %d bytes, more than the broker takes (%s): not "
                "sent; raise the broker's max_packet_size (or message_size_limit)",
                self.mqtt.url,
                subtopic,
                size,
                why,
            )

    def _say_accepted(self, subtopic: str) -> None:
        if self._refusals.pop(subtopic, None) is not None:
            log.info(
                "mqtt %s: the broker takes our messages on %s/%s again",
                self.mqtt.url,
                self.topic,
                subtopic,
            )

    # --- telemetry

    async def _send_until_stopped(self, client: Client) -> None:
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
            await self._between_rounds(client)
            first = await self._oldest_first(client)
            if first is None:
                return
            if first:
                continue
            live = self.buffer.take_live(self.mqtt.batch_max)
            if live:
                if not await self._send(client, live, backlog=False):
                    if await self._held_back():
                        continue
                    return
                last_sent = loop.time()
            backlog = self._backlog_beside_live()
            if backlog and not await self._send(client, backlog, backlog=True):
                if await self._held_back():
                    continue
                return
            if live or backlog:
                continue
            if self._stopping.is_set():
                return
            await self._wake.wait()
            pause = last_sent + pace - loop.time()
            if pause > 0:
                await wait_event(self._stopping, pause)

    def _backlog_beside_live(self) -> list[Sample]:
        """The backlog batch of a round, after its live one; none with ``live_first`` off (the
        round began with it: sent, or held back, not taken twice)."""
        return self.buffer.take_backlog(self.mqtt.batch_max) if self.live_first else []

    async def _oldest_first(self, client: Client) -> bool | None:
        """With ``live_first`` off, a backlog batch before anything live: True when one was
        sent; False when there is none, or it was held back (what is live then still goes,
        never starved behind it); None when the agent stops."""
        if self.live_first:
            return False
        backlog = self.buffer.take_backlog(self.mqtt.batch_max)
        if not backlog:
            return False
        if await self._send(client, backlog, backlog=True):
            return True
        return False if await self._held_back() else None

    async def _between_rounds(self, client: Client) -> None:
        """Before each round of sending (a mode's own messages go here)."""

    async def _held_back(self) -> bool:
        """Samples were held back (refused, or their form not stored): they are tried again
        after a wait, not in a busy loop. False when the agent stops: they stay buffered."""
        self.buffer.release()
        if self._stopping.is_set():
            return False
        await wait_event(self._stopping, self._refused_wait.next_delay())
        return True

    async def _send(self, client: Client, samples: list[Sample], backlog: bool) -> bool:
        """Publish a batch in messages the broker takes, acknowledging each; False when samples
        were held back (the broker refused them, or the disk would not store their form)."""
        stamped = self._final_forms(samples)
        for message in self.encoder.messages(stamped, backlog, self._message_limit()):
            if self._undeliverable(message):
                continue
            try:
                await self._publish_telemetry(client, message.payload)
            except Refused as refusal:
                self._say_refused(
                    "telemetry",
                    refusal,
                    f"; {len(samples)} sample(s) stay in the buffer, tried again later",
                )
                return False
            except LinkDropped as dropped:
                self._learn_limit(message, dropped)
                raise
            self._say_accepted("telemetry")
            self._refused_wait.reset()
            self.buffer.acknowledge(message.samples)
            self.sent += len(message.samples)
        return len(stamped) == len(samples)

    def _message_limit(self) -> int:
        """The largest telemetry payload the broker takes, as far as we know."""
        limit = MAX_PAYLOAD
        if self._packet_limit is not None:
            limit = min(limit, self._packet_limit - self._publish_overhead())
        if self._learnt_limit is not None:
            limit = min(limit, self._learnt_limit)
        return max(1, limit)

    def _publish_overhead(self) -> int:
        content_type = self.encoder.content_type or ""
        return PUBLISH_OVERHEAD + len(f"{self.topic}/telemetry".encode()) + len(content_type)

    def _undeliverable(self, message: Message) -> bool:
        """A lone sample larger than the broker's Maximum Packet Size can never be sent: it is
        dropped, counted and named, not tried at every round."""
        if len(message.samples) != 1:
            return False
        if self._lone_limit is not None and len(message.payload) >= self._lone_limit:
            self._drop_too_large(message, f"the broker dropped the link at {self._lone_limit}")
            return True
        if self._packet_limit is None:
            return False
        if len(message.payload) + self._publish_overhead() <= self._packet_limit:
            return False
        self._drop_too_large(message, f"its Maximum Packet Size is {self._packet_limit}")
        return True

    def _drop_too_large(self, message: Message, why: str) -> None:
        [sample] = message.samples
        self.buffer.discard(message.samples)
        self.too_large += 1
        log.error(
            "mqtt %s: sample %d of device %s is %d bytes as a message, more than the broker "
            "takes (%s): dropped (counted as dropped); fewer points per device would fit",
            self.mqtt.url,
            sample.id,
            sample.device,
            len(message.payload),
            why,
        )

    def _forget_size_limits(self) -> None:
        self._learnt_limit, self._lone_limit, self._suspect = None, None, None
        self._dropped_at.clear()

    def _learn_limit(self, message: Message, dropped: LinkDropped) -> None:
        """The broker dropped the link at this message as too large (Mosquitto's answer to a
        message above its ``message_size_limit``, which paho calls a protocol error): smaller
        messages from now on, and a lone sample that still does not fit is dropped."""
        size = len(message.payload)
        if not _size_trouble(dropped, size):
            return
        self._refit = True
        if len(message.samples) == 1:
            # A lone sample cannot be made smaller. Dropped only when the link goes at it a
            # second time: once could be some other message's trouble. Then any as large is
            # dropped without trying: no reconnection per sample of a device too wide.
            if self._suspect == message.samples[0].id:
                self._drop_too_large(message, "the broker dropped the link at it, twice")
                self._lone_limit = min(size, self._lone_limit or size)
            self._suspect = message.samples[0].id
            return
        first = self._learnt_limit is None
        self._learnt_limit = max(MIN_LEARNT_LIMIT, size // 2)
        # One line says so; the halvings after it only when debugging.
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "mqtt %s: the broker dropped the link at a %d-byte telemetry message (%s): taken "
            "for a message size limit (mosquitto's message_size_limit?); telemetry messages "
            "are halved until it takes them (at most %d bytes now); nothing is lost",
            self.mqtt.url,
            size,
            dropped,
            self._learnt_limit,
        )

    async def _publish_telemetry(self, client: Client, payload: bytes) -> None:
        topic = f"{self.topic}/telemetry"
        properties = None
        if self.v5:
            properties = publish_properties()
            properties.PayloadFormatIndicator = 1 if self.encoder.utf8 else 0
            if self.encoder.content_type is not None:
                properties.ContentType = self.encoder.content_type
            if self._alias:
                properties.TopicAlias = 1
                topic, self._alias_set = ("" if self._alias_set else topic), True
        await client.publish_acked(topic, payload, self.mqtt.qos, properties=properties)

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


def _size_trouble(dropped: LinkDropped, size: int) -> bool:
    """Whether the link went at a message of ``size`` bytes for being too large: the broker
    said so (0x95), or paho called its answer a protocol error (Mosquitto's PUBACK 0x95). No
    broker refuses a few hundred bytes as too large: a small message's drop is other trouble."""
    sized = dropped.reason in (PACKET_TOO_LARGE, PROTOCOL_ERROR, mqtt.MQTT_ERR_PROTOCOL)
    return sized and size > MIN_LEARNT_LIMIT
