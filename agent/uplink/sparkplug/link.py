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
- a device that starts failing gets a DDEATH, one that answers again a DBIRTH.

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
import math
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
from .codec import Payload, SparkplugError, decode
from .node import NAMESPACE, REBIRTH, EdgeNode, next_bdseq, topic

log = logging.getLogger(__name__)

#: A write asked by DCMD: (device, point, value, when it was sent or None) → the command reply.
Write = Callable[[str, str, Value, int | None], Awaitable[dict[str, Any]]]


class SparkplugUplink(Uplink):
    """``Uplink`` speaking Sparkplug B: see the module's docstring."""

    def __init__(
        self,
        config: Config,
        buffer: Buffer,
        clock: Clock | None = None,
        guard: ClockGuard | None = None,
        current: Callable[[str], Mapping[str, Value]] = lambda device: {},
        failing: Callable[[], set[str]] = set,
        write: Write | None = None,
    ) -> None:
        super().__init__(config, buffer, clock, guard, on_command=self._arrived)
        #: A device's latest readings (its DBIRTH carries them).
        self._current = current
        #: The devices failing now (they get a DDEATH).
        self._failing = failing
        self._write = write
        self._node: EdgeNode | None = None
        self._born_at = 0
        self._rebirth = False
        self._host_online = config.sparkplug.primary_host_id is None
        #: The timestamp of the last STATE taken: an older one (the will of a host session
        #: that has since been replaced) says nothing of the host now.
        self._state_at: int | None = None
        #: NBIRTH was published on this connection: the primary host going offline ends it.
        self._in_session = False
        #: Writes a DCMD asked for, owned here: cancelled at stop.
        self._writes: set[asyncio.Task[None]] = set()

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
            next_bdseq(self.config.agent.data_dir),
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
        """NBIRTH, then a DBIRTH for every device that is not failing (QoS 0); the devices and
        aliases of the configuration now, the bdSeq of this connection."""
        assert self._node is not None
        self._node = EdgeNode(
            self.spb.group_id, self.spb.edge_node_id, self.config.devices, self._node.bdseq
        )
        now = self.clock.wall_ms()
        self._born_at = now
        self._rebirth = False
        self._in_session = True
        await client.publish(self._topic("NBIRTH"), self._node.birth(now), qos=0)
        failing = self._failing()
        for device in self.config.devices:
            if device.name not in failing:
                await self._device_birth(client, device.name)
        self.published.set()

    async def _device_birth(self, client: Client, device: str) -> None:
        assert self._node is not None
        payload = self._node.device_birth(device, self._current(device), self.clock.wall_ms())
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
        """A rebirth asked for, devices that started or stopped failing, a host's STATE."""
        node = self._node
        if node is None or not self._host_online:
            return
        if self._rebirth:
            await self._births(client)
            return
        failing = self._failing()
        for device in self.config.devices:
            if device.name in failing and node.born(device.name):
                payload = node.device_death(device.name, self.clock.wall_ms())
                await client.publish(self._topic("DDEATH", device.name), payload, qos=0)

    async def _send(self, client: Client, samples: list[Sample], backlog: bool) -> bool:
        """Each reading as DDATA; acknowledged once the broker has taken the packets."""
        node = self._node
        if node is None or not self._host_online:  # held: STATE says the host is away
            self.buffer.release()
            await self._wake.wait()
            return True
        if self._rebirth:  # the host came (back) since this round began: births first
            await self._births(client)
            node = self._node
            assert node is not None
        stamped = self._final_forms(samples)
        for sample in stamped:
            if sample.device not in {d.name for d in self.config.devices}:
                continue  # a device a reload removed: no birth to place it
            if not node.born(sample.device):
                await self._device_birth(client, sample.device)
            # Taken before this session's birth: history, never a host's current value.
            historical = sample.ts < self._born_at
            payload = node.device_data(sample.device, sample.ts, sample.values, historical)
            await client.publish(self._topic("DDATA", sample.device), payload, qos=0)
        # The barrier: an UNSUBACK comes after the broker read everything sent before it.
        await client.unsubscribe(self._topic("BARRIER"))
        self.buffer.acknowledge(stamped)
        self.sent += len(stamped)
        return len(stamped) == len(samples)

    # --- what the host sends

    def _arrived(self, topic: str, data: bytes) -> None:
        """A message on NCMD, DCMD or STATE; malformed ones are one line and ignored."""
        parts = topic.split("/")
        try:
            if len(parts) == 3 and parts[1] == "STATE":
                self._state(data)
            elif len(parts) >= 4 and parts[2] == "NCMD":
                self._node_command(decode(data))
            elif len(parts) == 5 and parts[2] == "DCMD" and self._write is not None:
                self._device_command(parts[4], decode(data))
        except (SparkplugError, ValueError) as exc:
            log.warning("sparkplug: %s: ignored: %s", topic, exc)

    def _state(self, data: bytes) -> None:
        """The primary host's STATE (Sparkplug 3.0, 5.4 and 5.5): births when it is online,
        NDEATH and a new connection when it goes offline during a session."""
        online, at = parse_state(data)
        if self._state_at is not None and at < self._state_at:
            log.info(
                "sparkplug: a STATE of primary host %s older than the last one (%d < %d): "
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
            self._leave("as the primary host went offline")
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
        names = self._node.names_of(device) if self._node is not None else {}
        for metric in payload.metrics:
            name = metric.name or names.get(metric.alias or 0)
            if name is None:
                raise ValueError(f"DCMD for {device}: metric alias {metric.alias} is unknown")
            if metric.value is None or isinstance(metric.value, bytes):
                raise ValueError(f"DCMD for {device}.{name}: no value a point takes")
            sent = metric.timestamp or payload.timestamp
            self._spawn_write(device, name, metric.value, sent)

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


def parse_state(data: bytes) -> tuple[bool, int]:
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
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise ValueError('STATE has no "timestamp" (milliseconds since the epoch)')
    return online, int(at)
