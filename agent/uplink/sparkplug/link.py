"""The link as a Sparkplug B edge node (``[sparkplug] enabled``), in place of the JSON topics.

The connection, its probing, backoff and reconnection are the JSON link's (``Uplink``); what
goes over it is Sparkplug's:

- CONNECT with a clean session and NDEATH (this connection's ``bdSeq``) as the will, QoS 1;
- NBIRTH and every device's DBIRTH (QoS 0, as the specification requires), then each buffered
  reading as DDATA (QoS 0) by alias, with its own time; readings taken before this session's
  birth go as historical metrics, in order, never taken for the current value by a host;
- with ``primary_host_id``: nothing is published until that host's STATE says online; when it
  says offline during a session, the node publishes NDEATH, disconnects and connects again to
  wait for the host (readings stay buffered), born again when it is back. A STATE older than
  the last one taken (a host's will delivered after its next birth) is ignored;
- NCMD ``Node Control/Rebirth`` births everything again; DCMD writes a point through the
  commands' checks and answers with a DDATA of the value read back;
- a device whose polls read nothing gets a DDEATH, and a DBIRTH when it answers again (one
  of which only some points fail stays born).

QoS 0 gives no acknowledgement. A reading leaves the buffer only once a later round trip with
the broker (an UNSUBACK) proves the broker took the packets before it: TCP keeps order and a
broker reads one client's packets in order. What a link that drops swallowed is therefore sent
again (historical) after the next birth. What remains: a broker that took a DDATA and then
failed to hand it to a host that was online (its own crash) loses it, as QoS 0 allows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiomqtt

from ...clock import Clock, ClockGuard
from ...config import Config
from ...config.types import SparkplugSection
from ...model import Sample, Value
from ...store.buffer import Buffer
from ..link import Client
from ..telemetry import Uplink
from .codec import (
    INTEGERS,
    DataType,
    Metric,
    Payload,
    SparkplugError,
    decode,
    integer_from_wire,
)
from .node import NAMESPACE, REBIRTH, BdSeq, EdgeNode, topic

log = logging.getLogger(__name__)

#: An NCMD or DCMD larger than this is refused unread (a host's command holds a few metrics).
MAX_COMMAND_BYTES = 16 * 1024
#: The most metrics (writes) one DCMD may hold, and the most writes carried out at once.
MAX_DCMD_METRICS = 32
MAX_WRITES_PENDING = 64

#: The longest a device that stopped answering stays born for its readings not yet sent.
MAX_DDEATH_DELAY = 600.0
#: A device's latest readings, and when the last of them was read (ms; None: never).
Latest = tuple[Mapping[str, Value], int | None]

#: A write asked by DCMD: (device, point, value, when it was sent or None) → the command reply.
Write = Callable[[str, str, Value, int | None], Awaitable[dict[str, Any]]]


class SparkplugUplink(Uplink):
    """``Uplink`` speaking Sparkplug B: see the module's docstring."""

    #: After an outage, the backlog goes before what is live: history oldest first (the
    #: DBIRTH already carries each point's current value).
    live_first = False

    def __init__(
        self,
        config: Config,
        buffer: Buffer,
        clock: Clock | None = None,
        guard: ClockGuard | None = None,
        current: Callable[[str], Latest] = lambda device: ({}, None),
        unreachable: Callable[[], set[str]] = set,
        write: Write | None = None,
    ) -> None:
        super().__init__(config, buffer, clock, guard, on_command=self._arrived)
        #: A device's latest readings and when they were read (its DBIRTH carries them).
        self._current = current
        #: Per device, the time of the newest reading of it sent in this run: a device that
        #: stops answering is killed (DDEATH) once what it read before is sent.
        self._sent_until: dict[str, int] = {}
        #: Devices unreachable and still born, since when (monotonic): their DDEATH waits for
        #: their readings, MAX_DDEATH_DELAY at the most.
        self._dying_since: dict[str, float] = {}
        #: The devices whose last poll read nothing (they get a DDEATH); one of which only
        #: some points fail keeps its session.
        self._unreachable = unreachable
        self._write = write
        self._node: EdgeNode | None = None
        self._bdseq = BdSeq(config.agent.data_dir)
        self._born_at = 0
        self._rebirth = False
        self._host_online = config.sparkplug.primary_host_id is None
        #: The timestamp of the last STATE taken: an older one (the will of a host session
        #: that has since been replaced) says nothing of the host now.
        self._state_at: float | None = None
        #: NBIRTH was published on this connection: the primary host going offline ends it.
        self._in_session = False
        #: Writes a DCMD asked for, owned here: cancelled at stop.
        self._writes: set[asyncio.Task[None]] = set()
        #: Devices no longer configured whose buffered readings were dropped: said once.
        self._gone_said: set[str] = set()
        #: Command topics a retained message came on: said once.
        self._retained_said: set[str] = set()

    @property
    def spb(self) -> SparkplugSection:
        return self.config.sparkplug

    def _topic(self, kind: str, device: str | None = None) -> str:
        return topic(self.spb.group_id, kind, self.spb.edge_node_id, device)

    # --- the connection

    def _will(self) -> aiomqtt.Will:
        # A new connection, a new bdSeq: its NBIRTH and this will carry the same.
        self._node = EdgeNode(
            self.spb.group_id,
            self.spb.edge_node_id,
            self.config.devices,
            self._bdseq.next(),
        )
        death = self._node.death(self.clock.wall_ms())
        return aiomqtt.Will(self._topic("NDEATH"), death, qos=1, retain=False)

    def _session_expiry(self) -> float:
        return 0.0  # Sparkplug: a clean session at every connection

    def subscriptions(self, config: Config | None = None) -> list[str]:
        spb = (config or self.config).sparkplug
        topics = [
            topic(spb.group_id, "NCMD", spb.edge_node_id),
            topic(spb.group_id, "DCMD", spb.edge_node_id, "+"),
        ]
        if spb.primary_host_id is not None:
            topics.append(f"{NAMESPACE}/STATE/{spb.primary_host_id}")
        return topics

    async def _online(self, client: Client) -> None:
        self._host_online = self.spb.primary_host_id is None
        self._in_session = False
        granted = await client.subscribe([(t, 1) for t in self.subscriptions()])
        log.debug("sparkplug: subscribed: %s", granted)
        if self._host_online:
            await self._births(client)
        else:  # born once the primary host says it is online
            self._rebirth = True
        log.info(
            "mqtt %s: connected as Sparkplug edge node %s/%s (bdSeq %d)",
            self.mqtt.url,
            self.spb.group_id,
            self.spb.edge_node_id,
            self._node.bdseq if self._node else -1,
        )
        self.connects += 1
        self.connected = True
        self._client_online = client

    async def _births(self, client: Client) -> None:
        """NBIRTH, then a DBIRTH for every device that answers (QoS 0); the devices and
        aliases of the configuration now, the bdSeq of this connection. A device a reload
        removed gets its DDEATH first, in the session that knew it."""
        assert self._node is not None
        old = self._node
        configured = {d.name for d in self.config.devices}
        for name in sorted(old.born_devices() - configured):
            death = old.device_death(name, self.clock.wall_ms())
            await client.publish(self._topic("DDEATH", name), death, qos=0)
        self._node = EdgeNode(
            self.spb.group_id, self.spb.edge_node_id, self.config.devices, old.bdseq
        )
        now = self.clock.wall_ms()
        self._born_at = now
        self._rebirth = False
        self._in_session = True
        await client.publish(self._topic("NBIRTH"), self._node.birth(now), qos=0)
        unreachable = self._unreachable()
        for device in self.config.devices:
            if device.name not in unreachable:
                await self._device_birth(client, device.name)
        self.published.set()

    async def _device_birth(self, client: Client, device: str) -> None:
        assert self._node is not None
        values, read_at = self._current(device)
        now = self.clock.wall_ms()
        payload = self._node.device_birth(device, values, now, read_at)
        await client.publish(self._topic("DBIRTH", device), payload, qos=0)

    async def _offline(self, client: Client) -> None:
        """A clean goodbye: NDEATH with this connection's bdSeq (the will is not sent then)."""
        self._client_online = None
        if self._node is not None:
            death = self._node.death(self.clock.wall_ms())
            await client.publish(self._topic("NDEATH"), death, qos=1)
        self.connected = False

    async def _goodbye(self) -> None:
        """Stopped while the link was down: the broker has sent our will already."""

    # --- sending

    async def _between_rounds(self, client: Client) -> None:
        """A rebirth asked for, devices that became unreachable, a host's STATE."""
        node = self._node
        if node is None or not self._host_online:
            return
        if self._rebirth:
            await self._births(client)
            return
        unreachable = self._unreachable()
        for name in set(self._dying_since) - unreachable:
            del self._dying_since[name]
        for device in self.config.devices:
            if device.name in unreachable and node.born(device.name):
                if self._readings_unsent(device.name):
                    continue  # born for them (a DBIRTH of its last values): they go first
                self._dying_since.pop(device.name, None)
                payload = node.device_death(device.name, self.clock.wall_ms())
                await client.publish(self._topic("DDEATH", device.name), payload, qos=0)

    def _readings_unsent(self, device: str) -> bool:
        """The device's newest reading has not been sent yet, and its DDEATH has not waited
        MAX_DDEATH_DELAY for it already."""
        read_at = self._current(device)[1]
        if read_at is None or self._sent_until.get(device, -1) >= read_at:
            return False
        now = self.clock.monotonic()
        return now - self._dying_since.setdefault(device, now) < MAX_DDEATH_DELAY

    async def _send(self, client: Client, samples: list[Sample], backlog: bool) -> bool:
        """Each reading as DDATA; acknowledged once the broker has taken the packets. A
        rebirth asked for meanwhile stops the DDATA at once (the rest goes after the births)."""
        node = self._node
        if node is None or not self._host_online:  # held: STATE says the host is away
            self.buffer.release()
            await self._wake.wait()
            return True
        if self._rebirth:  # asked for since this round began: births first
            await self._births(client)
            node = self._node
            assert node is not None
        stamped = self._final_forms(samples)
        sent: list[Sample] = []
        unplaced: list[Sample] = []
        for sample in stamped:
            if self._rebirth:
                break
            if not node.knows(sample.device):
                unplaced.append(sample)
                continue
            if not node.born(sample.device):  # it answers again, or its history is sent
                await self._device_birth(client, sample.device)
            payload = self._data_of(node, sample)
            await client.publish(self._topic("DDATA", sample.device), payload, qos=0)
            sent.append(sample)
        # The barrier: an UNSUBACK comes after the broker read everything sent before it.
        await client.unsubscribe(self._topic("BARRIER"))
        self.buffer.acknowledge(sent)
        for sample in sent:  # only now: a link that dropped before the barrier sends them again
            self._sent_until[sample.device] = max(
                sample.ts, self._sent_until.get(sample.device, sample.ts)
            )
        self.sent += len(sent)
        self._refused_wait.reset()  # what was held back went: the next hold waits afresh
        if unplaced:
            self._drop_unplaced(unplaced)
        if len(sent) + len(unplaced) < len(stamped):  # stopped for a rebirth: the rest again
            self.buffer.release()
            return True
        return len(stamped) == len(samples)

    def _data_of(self, node: EdgeNode, sample: Sample) -> bytes:
        """The DDATA of one reading of a born device, historical if taken before this
        session's birth."""
        # Taken before this session's birth: history, never a host's current value.
        historical = sample.ts < self._born_at
        try:
            return node.device_data(sample.device, sample.ts, sample.values, historical)
        except SparkplugError as exc:  # never expected: each value is made to fit first
            log.error("sparkplug: a reading of %s sent as nulls: %s", sample.device, exc)
            nulls = dict.fromkeys(sample.values)
            return node.device_data(sample.device, sample.ts, nulls, historical)

    def _drop_unplaced(self, samples: list[Sample]) -> None:
        """Readings no birth can place (their device is no longer configured): they leave
        the buffer, counted as dropped, said once per device."""
        self.buffer.discard(samples)
        for device in sorted({s.device for s in samples} - self._gone_said):
            self._gone_said.add(device)
            log.warning(
                "sparkplug: device %s is not in the configuration any more: its readings "
                "still buffered are dropped (no birth can place them; counted in dropped)",
                device,
            )

    # --- what the host sends

    def _accepts(self, topic: str, retained: bool) -> bool:
        """A retained NCMD or DCMD (a host must never retain one) would be carried out again
        at every new connection: dropped, said once per topic. A retained STATE is the rule."""
        if not retained or _is_state(topic):
            return True
        if topic not in self._retained_said:
            self._retained_said.add(topic)
            log.warning(
                "sparkplug: %s: a retained command, ignored (a host publishes NCMD and DCMD "
                "unretained; clear it with an empty retained message)",
                topic,
            )
        return False

    def _arrived(self, topic: str, data: bytes) -> None:
        """A message on NCMD, DCMD or STATE; malformed ones are one line and ignored."""
        parts = topic.split("/")
        try:
            if _is_state(topic):
                self._state(data)
            elif len(parts) >= 4 and parts[2] in ("NCMD", "DCMD"):
                if len(data) > MAX_COMMAND_BYTES:  # refused unread: a host sends a few metrics
                    raise ValueError(f"{len(data)} bytes, more than {MAX_COMMAND_BYTES}")
                if parts[2] == "NCMD":
                    self._node_command(decode(data))
                elif len(parts) == 5 and self._write is not None:
                    self._device_command(parts[4], decode(data))
        except (SparkplugError, ValueError) as exc:
            log.warning("sparkplug: %s: ignored: %s", topic, exc)

    def _state(self, data: bytes) -> None:
        """The primary host's STATE (Sparkplug 3.0, 5.4 and 5.5): births when it is online,
        NDEATH and a new connection when it goes offline during a session."""
        online, at = parse_state(data)
        if self._state_at is not None and at < self._state_at:
            log.info(
                "sparkplug: a STATE of primary host %s older than the last one (%s < %s): "
                "ignored, it is of a session the host has since replaced",
                self.spb.primary_host_id,
                at,
                self._state_at,
            )
            return
        self._state_at = at
        if online:
            if not self._host_online:
                log.info("sparkplug: primary host %s is online: births", self.spb.primary_host_id)
                self._rebirth = True
        elif self._in_session:
            log.warning(
                "sparkplug: primary host %s went offline: NDEATH, and a new connection that "
                "waits for it; readings are held until it is back",
                self.spb.primary_host_id,
            )
            self._in_session = False
            self._leave("as the primary host went offline", spread=True)
        elif self._host_online:
            log.warning(
                "sparkplug: primary host %s is offline: readings are held until it is back",
                self.spb.primary_host_id,
            )
        self._host_online = online
        self._wake.set()

    def _node_command(self, payload: Payload) -> None:
        for metric in payload.metrics:
            if metric.name == REBIRTH and metric.value is True:
                log.info("sparkplug: rebirth asked for by the host")
                self._rebirth = True
                self._wake.set()
                return
        raise ValueError("NCMD names no metric this node takes (Node Control/Rebirth)")

    def _device_command(self, device: str, payload: Payload) -> None:
        """Each metric of a DCMD is a write, checked against its birth: its datatype, if the
        host gives one, must be the birth's, and an integer is read as the birth's datatype."""
        node = self._node
        if node is None or not node.knows(device):
            raise ValueError(f"DCMD for {device}: no such device on this node")
        if not self._in_session or not node.born(device):
            raise ValueError(f"DCMD for {device}: it is not born in a session now")
        if len(payload.metrics) > MAX_DCMD_METRICS:
            raise ValueError(
                f"DCMD for {device}: {len(payload.metrics)} metrics, more than "
                f"{MAX_DCMD_METRICS} in one command"
            )
        writes = [
            self._write_of(node, device, metric, payload.timestamp) for metric in payload.metrics
        ]
        if len(self._writes) + len(writes) > MAX_WRITES_PENDING:
            raise ValueError(
                f"DCMD for {device}: {len(self._writes)} writes are still being "
                "carried out; send it again once they are answered"
            )
        for name, value, sent in writes:
            self._spawn_write(device, name, value, sent)

    def _write_of(
        self, node: EdgeNode, device: str, metric: Metric, sent: int | None
    ) -> tuple[str, Value, int | None]:
        names = node.names_of(device)
        name = metric.name or names.get(metric.alias or 0)
        if name is None:
            raise ValueError(f"DCMD for {device}: metric alias {metric.alias} is unknown")
        datatype = node.datatype(device, name)
        if datatype is None:
            raise ValueError(f"DCMD for {device}: it has no metric {name}")
        if metric.datatype is not None and metric.datatype != datatype:
            raise ValueError(
                f"DCMD for {device}.{name}: datatype {metric.datatype}, but its birth says "
                f"{int(datatype)} ({datatype.name})"
            )
        value = metric.value
        if value is None or isinstance(value, bytes) or not _holds(datatype, value):
            raise ValueError(
                f"DCMD for {device}.{name}: {value!r} is not a value of its datatype "
                f"{datatype.name}"
            )
        if metric.datatype is None and datatype in INTEGERS:
            value = integer_from_wire(int(value), datatype)  # sent without its datatype
        return name, value, metric.timestamp or sent

    def _spawn_write(self, device: str, point: str, value: Value, sent: int | None) -> None:
        task = asyncio.get_running_loop().create_task(self._carry_out(device, point, value, sent))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _carry_out(self, device: str, point: str, value: Value, sent: int | None) -> None:
        assert self._write is not None
        reply = await self._write(device, point, value, sent)
        node, client = self._node, self._client_online
        if not reply.get("ok") or node is None or client is None or not node.born(device):
            return  # refused or failed: logged by the commands; the host keeps its value
        if self._rebirth:
            return  # the births about to go carry the value read back
        payload = node.device_data(device, self.clock.wall_ms(), {point: reply["value"]})
        try:
            await client.publish(self._topic("DDATA", device), payload, qos=0)
        except aiomqtt.MqttError:
            return

    async def stop(self) -> None:
        for task in list(self._writes):  # a write not begun is withdrawn, one begun ends
            task.cancel()
        await super().stop()

    # --- what the JSON link publishes and this one does not

    async def publish_reply(self, reply: dict[str, Any], subtopic: str = "cmd/reply") -> bool:
        return False

    async def publish_health(self, payload: dict[str, Any]) -> bool:
        return False

    async def _republish_meta(self) -> None:
        """Devices or points changed: a rebirth says so to the host."""
        self._rebirth = True
        self._wake.set()


def parse_state(data: bytes) -> tuple[bool, float]:
    """A STATE payload, ``{"online": true|false, "timestamp": <ms>}``, as (online, timestamp);
    ValueError, saying what is wrong, for anything else."""
    try:
        state = json.loads(data)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested beyond reading
        raise ValueError("STATE is not the specification's JSON") from None
    if not isinstance(state, dict):
        raise ValueError('STATE is not a JSON object with "online" and "timestamp"')
    online, at = state.get("online"), state.get("timestamp")
    if not isinstance(online, bool):
        raise ValueError('STATE has no "online": true or false')
    # A Sparkplug timestamp is a uint64 of ms: NaN, infinities and a 400-digit number are
    # not one (and one far in the future would make every later STATE "older").
    if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at < 2**64:
        raise ValueError('STATE has no "timestamp" (milliseconds since the epoch)')
    return online, at


def _is_state(topic: str) -> bool:
    """``spBv1.0/STATE/{host}``, and no other topic (a node or device may be named STATE)."""
    parts = topic.split("/")
    return len(parts) == 3 and parts[1] == "STATE"


def _holds(datatype: DataType, value: Value) -> bool:
    """``value`` came in the field ``datatype`` is carried in (an Int16 as an integer, not a
    1.5 or a string)."""
    if datatype in INTEGERS:
        return type(value) is int
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        return type(value) is float
    if datatype == DataType.BOOLEAN:
        return type(value) is bool
    return isinstance(value, str)
