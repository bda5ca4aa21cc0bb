"""The agent as a Sparkplug B edge node against a real Mosquitto and a real pymodbus slave, seen
by a Sparkplug host written here from the specification: it decodes with the official protobuf
runtime and checks the rules (bdSeq of birth and death, seq continuity, DBIRTH before DDATA,
QoS 0 for births and data), survives a broker outage with historical metrics and nothing
missing, sends DCMD and NCMD rebirth, and gates on its own STATE."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.aio import cancel_and_wait
from agent.config import load_config
from agent.service.app import Agent
from agent.testkit import run, until
from agent.testkit.broker import Broker
from agent.uplink.sparkplug.link import parse_state
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave
from tests.uplink.test_goodbye_commands import Gate

pytest.importorskip("google.protobuf")
from tests.uplink.test_sparkplug_codec import ReferencePayload

POINTS = (
    ModbusPoint("speed", table="holding", address=0, type="uint16", unit="rpm"),
    ModbusPoint("delta", table="holding", address=1, type="int16"),
    ModbusPoint("count", table="holding", address=2, type="int32"),
    ModbusPoint("total", table="holding", address=4, type="uint32"),
    ModbusPoint("temp", table="holding", address=6, type="float32"),
    ModbusPoint("energy", table="holding", address=8, type="float64"),
    ModbusPoint("flow", table="holding", address=12, type="int16", scale=0.1),
    ModbusPoint(
        "setpoint", table="holding", address=13, type="uint16", writable=True, min=0, max=100
    ),
    ModbusPoint("running", table="coil", address=0, type="bool"),
)
#: The Sparkplug datatype each point goes as (the specification's numbers).
DATATYPES = {
    "speed": 6,
    "delta": 2,
    "count": 3,
    "total": 7,
    "temp": 9,
    "energy": 10,
    "flow": 10,
    "setpoint": 6,
    "running": 11,
}


def site(tmp_path: Path, broker: Broker, port: int, more: str = "") -> Path:
    points = "".join(
        f'  [[device.point]]\n  name = "{p.name}"\n  table = "{p.table}"\n'
        f'  address = {p.address}\n  type = "{p.type}"\n  scale = {p.scale}\n'
        f"  writable = {str(p.writable).lower()}\n"
        + (f'  unit = "{p.unit}"\n' if p.unit else "")
        + (f"  min = {p.min}\n  max = {p.max}\n" if p.min is not None else "")
        for p in POINTS
    )
    path = tmp_path / "site.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [agent]
            id = "gw"
            data_dir = "data"
            [buffer]
            flush_interval = "1s"
            [mqtt]
            url = "{broker.url}"
            batch_interval = "100ms"
            reconnect_max = "1s"
            [sparkplug]
            enabled = true
            group_id = "farm"
            edge_node_id = "gw-17"
            {more}
            [[bus]]
            name = "plc"
            type = "modbus-tcp"
            host = "127.0.0.1"
            port = {port}
            timeout = "300ms"
            [[device]]
            name = "pump"
            bus = "plc"
            unit = 1
            interval = "200ms"
            """
        )
        + points
    )
    return path


@dataclass
class Seen:
    kind: str
    device: str | None
    qos: int
    payload: Any
    #: Seen after a second NBIRTH: sent in a later session.
    seen_after_rebirth: bool = False


class Host:
    """A Sparkplug host: everything on ``spBv1.0/#`` decoded by the official runtime."""

    def __init__(self, broker: Broker) -> None:
        self.client = aiomqtt.Client(broker.host, broker.port, identifier="host")
        self.seen: list[Seen] = []
        self._arrived = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Host:
        await self.client.__aenter__()
        await self.client.subscribe("spBv1.0/#", qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            await cancel_and_wait(self._reader)
        await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for message in self.client.messages:
            parts = str(message.topic).split("/")
            if parts[1] == "STATE" or parts[2] in ("NCMD", "DCMD"):
                continue  # the host's own messages
            payload = message.payload
            assert isinstance(payload, bytes)
            device = parts[4] if len(parts) > 4 else None
            decoded = ReferencePayload.FromString(payload)
            later = len(self.of("NBIRTH")) >= 2 or (parts[2] == "NBIRTH" and self.of("NBIRTH"))
            self.seen.append(Seen(parts[2], device, message.qos, decoded, bool(later)))
            self._arrived.set()

    async def wait_for(self, condition: Any, timeout: float = 20) -> None:
        async def until() -> None:
            while not condition():
                self._arrived.clear()
                await self._arrived.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            kinds = [(s.kind, s.device) for s in self.seen][-20:]
            raise TimeoutError(f"not within {timeout}s; last seen: {kinds}") from None

    def of(self, kind: str) -> list[Seen]:
        return [s for s in self.seen if s.kind == kind]

    def values(self, historical: bool | None = None) -> dict[int, dict[str, Any]]:
        """Per DDATA timestamp, the values by point name (through the births' aliases)."""
        names: dict[int, str] = {}
        found: dict[int, dict[str, Any]] = {}
        for s in self.seen:
            for m in s.payload.metrics:
                if s.kind == "DBIRTH":
                    names[m.alias] = m.name
                elif s.kind == "DDATA" and (historical is None or m.is_historical == historical):
                    field = m.WhichOneof("value")
                    value = None if m.is_null else getattr(m, field)
                    found.setdefault(m.timestamp, {})[names[m.alias]] = value
        return found

    def sequence(self) -> list[tuple[str, int | None]]:
        return [(s.kind, s.payload.seq if s.payload.HasField("seq") else None) for s in self.seen]

    def check_rules(self) -> None:
        """The specification's session rules, over everything seen."""
        bdseq: int | None = None
        seq: int | None = None
        born: set[str] = set()
        for s in self.seen:
            if s.kind == "NDEATH":
                [metric] = s.payload.metrics
                assert (metric.name, metric.long_value) == ("bdSeq", bdseq), s
                seq = None
                continue
            assert s.qos == 0, f"{s.kind} must be QoS 0"
            if s.kind == "NBIRTH":
                assert s.payload.seq == 0
                names = {m.name: m for m in s.payload.metrics}
                bdseq = names["bdSeq"].long_value
                assert names["Node Control/Rebirth"].boolean_value is False
                seq, born = 0, set()
                continue
            assert seq is not None, f"{s.kind} before NBIRTH: {self.sequence()}"
            assert s.payload.seq == (seq + 1) % 256, (s.kind, s.payload.seq, seq)
            seq = s.payload.seq
            if s.kind == "DBIRTH":
                born.add(str(s.device))
            elif s.kind == "DDEATH":
                born.discard(str(s.device))
            elif s.kind == "DDATA":
                assert s.device in born, "DDATA before its DBIRTH"


async def with_agent(
    tmp_path: Path,
    broker: Broker,
    slave: SimulatedSlave,
    more: str,
    body: Any,
    url: str | None = None,
    edit: str | None = None,
) -> Agent:
    async with ModbusSimulator([slave]) as sim:
        path = site(tmp_path, broker, sim.port, more)
        if url is not None:
            path.write_text(path.read_text().replace(broker.url, url))
        if edit is not None:  # in place of the batch settings
            path.write_text(path.read_text().replace('batch_interval = "100ms"', edit))
        config, _ = load_config(path, environ={})
        agent = Agent(config)
        stop = asyncio.Event()
        async with Host(broker) as host:
            task = asyncio.create_task(agent.run(stop))
            try:
                await body(host, agent)
            finally:
                stop.set()
                await asyncio.wait_for(task, 20)
                await cancel_and_wait(task)
            await host.wait_for(lambda: host.of("NDEATH"))  # a clean stop says so
            host.check_rules()
    return agent


def record_readings(agent: Agent, taken: list[int]) -> None:
    """Append to ``taken`` the time of every reading that becomes a sample from now on."""
    add = agent.buffer.add

    def recorded(device: str, ts: int, *args: Any, **kwargs: Any) -> None:
        taken.append(ts)
        add(device, ts, *args, **kwargs)

    agent.buffer.add = recorded  # type: ignore[method-assign]


def slave_with_values() -> SimulatedSlave:
    slave = SimulatedSlave(1, POINTS)
    for name, value in {
        "speed": 1450,
        "delta": -12,
        "count": -70000,
        "total": 4_000_000_000,
        "temp": 21.5,
        "energy": 12345.678,
        "flow": -3.2,
        "setpoint": 40,
        "running": True,
    }.items():
        slave.set_value(name, value)
    return slave


def gate_url(gate: Gate) -> str:
    return f"mqtt://127.0.0.1:{gate.port}"


async def behind_gate(
    tmp_path: Path,
    broker: Broker,
    slave: SimulatedSlave,
    body: Any,
    edit: str | None = None,
) -> None:
    """``with_agent`` with the agent's link through a gate: ``body(host, agent, gate)``."""
    gate = Gate((broker.host, broker.port))

    async def gated(host: Host, agent: Agent) -> None:
        await body(host, agent, gate)

    await gate.open()
    try:
        await with_agent(tmp_path, broker, slave, "", gated, url=gate_url(gate), edit=edit)
    finally:
        await gate.close()


async def cut(host: Host, gate: Gate, taken: list[int], readings: int) -> None:
    """Cut the agent's link, see its will, and let ``readings`` more readings be taken."""
    await gate.close()
    await host.wait_for(lambda: host.of("NDEATH"), 30)
    away = len(taken)
    await until(lambda: len(taken) >= away + readings, 20, "readings while the link is down")


def test_births_and_data_follow_the_rules_and_every_datatype_decodes(
    tmp_path: Path, broker: Broker
) -> None:
    async def body(host: Host, agent: Agent) -> None:
        await host.wait_for(lambda: len(host.of("DDATA")) >= 3)
        [birth] = host.of("DBIRTH")
        metrics = {m.name: m for m in birth.payload.metrics}
        assert {n: m.datatype for n, m in metrics.items()} == DATATYPES
        assert metrics["speed"].properties.keys == ["engUnit"]
        values = next(iter(host.values(historical=False).values()))
        assert values == {
            "speed": 1450,
            "delta": 2**32 - 12,  # the wire's form: 32-bit two's complement
            "count": 2**32 - 70000,
            "total": 4_000_000_000,
            "temp": 21.5,
            "energy": 12345.678,
            "flow": pytest.approx(-3.2),
            "setpoint": 40,
            "running": True,
        }

    run(with_agent(tmp_path, broker, slave_with_values(), "", body), timeout=60)


def test_a_link_outage_loses_nothing_and_sends_it_as_historical_after_the_rebirth(
    tmp_path: Path, broker: Broker
) -> None:
    """The agent's link is cut (the host stays on the broker): the broker publishes the will
    (NDEATH, that session's bdSeq); back, the agent is born again with the next bdSeq and
    every reading taken meanwhile arrives, as historical metrics; none is missing."""
    slave = SimulatedSlave(1, POINTS)
    taken: list[int] = []

    async def body(host: Host, agent: Agent, gate: Gate) -> None:
        record_readings(agent, taken)
        await host.wait_for(lambda: len(host.of("DDATA")) >= 2)
        await cut(host, gate, taken, 5)  # the will: the broker saw it go
        await gate.open()
        await host.wait_for(lambda: len(host.of("NBIRTH")) == 2, 30)
        mark = len(taken)
        await host.wait_for(lambda: set(taken[:mark]) <= set(host.values()), 30)
        births = [s.payload for s in host.of("NBIRTH")]
        bdseqs = [next(m.long_value for m in b.metrics if m.name == "bdSeq") for b in births]
        assert bdseqs[1] != bdseqs[0]  # a new connection, a new bdSeq (its will matched it)
        # History is exactly what was read before the session's birth
        born = births[1].timestamp
        later = [m for s in host.of("DDATA") if s.seen_after_rebirth for m in s.payload.metrics]
        assert any(m.is_historical for m in later)
        for m in later:
            assert m.is_historical == (m.timestamp < born), (m.timestamp, born)

    run(behind_gate(tmp_path, broker, slave, body), timeout=120)


def test_dcmd_writes_through_the_commands_checks_and_answers_with_ddata(
    tmp_path: Path, broker: Broker
) -> None:
    slave = slave_with_values()

    async def body(host: Host, agent: Agent) -> None:
        await host.wait_for(lambda: host.of("DBIRTH"))
        aliases = {m.name: m.alias for m in host.of("DBIRTH")[0].payload.metrics}
        command = ReferencePayload(timestamp=int(time.time() * 1000))
        command.metrics.add(alias=aliases["setpoint"], datatype=6, int_value=75)
        await host.client.publish("spBv1.0/farm/DCMD/gw-17/pump", command.SerializeToString())
        await host.wait_for(lambda: slave.value("setpoint") == 75)
        await host.wait_for(
            lambda: any(
                m.alias == aliases["setpoint"] and m.int_value == 75
                for s in host.of("DDATA")
                for m in s.payload.metrics
            )
        )
        too_high = ReferencePayload(timestamp=int(time.time() * 1000))
        too_high.metrics.add(name="setpoint", datatype=6, int_value=500)
        await host.client.publish("spBv1.0/farm/DCMD/gw-17/pump", too_high.SerializeToString())
        read_only = ReferencePayload()
        read_only.metrics.add(name="speed", datatype=6, int_value=1)
        await host.client.publish("spBv1.0/farm/DCMD/gw-17/pump", read_only.SerializeToString())
        await host.client.publish("spBv1.0/farm/DCMD/gw-17/pump", b"\xff\xff not protobuf")
        rebirth = ReferencePayload()
        rebirth.metrics.add(name="Node Control/Rebirth", datatype=11, boolean_value=True)
        await host.client.publish("spBv1.0/farm/NCMD/gw-17", rebirth.SerializeToString())
        await host.wait_for(lambda: len(host.of("NBIRTH")) == 2)
        await host.wait_for(lambda: len(host.of("DBIRTH")) == 2)
        assert slave.value("setpoint") == 75
        assert slave.value("speed") == 1450

    run(with_agent(tmp_path, broker, slave, "", body), timeout=60)


STATE = "spBv1.0/STATE/scada"
DCMD = "spBv1.0/farm/DCMD/gw-17/pump"


def state(online: bool, at: int) -> bytes:
    return json.dumps({"online": online, "timestamp": at}).encode()


def test_the_primary_hosts_state_gates_the_session_and_its_going_offline_ends_it(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Sparkplug 3.0 with a primary host: no birth until its STATE says online (a malformed
    STATE or an older one is ignored); its offline during a session brings NDEATH and a new
    connection that waits; its return a birth with the next bdSeq, and the readings taken
    meanwhile follow as historical metrics, none missing."""
    caplog.set_level(logging.INFO, logger="agent.uplink.sparkplug")
    slave = SimulatedSlave(1, POINTS)
    taken: list[int] = []

    def said(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records)

    async def body(host: Host, agent: Agent) -> None:
        record_readings(agent, taken)
        await until(lambda: agent.uplink.connected, 20, "the agent on the broker")
        began = int(time.time() * 1000)
        await host.client.publish(STATE, b"not json", qos=1)
        await host.client.publish(STATE, b'{"online": true}', qos=1)  # no timestamp
        await until(lambda: said("ignored") >= 2, 10, "both malformed STATEs ignored")
        await until(lambda: len(taken) >= 2, 10, "readings taken while the host is away")
        assert host.seen == []  # the agent read them and waited: nothing was born

        await host.client.publish(STATE, state(True, began), qos=1, retain=True)
        await host.wait_for(lambda: host.of("DDATA"))
        # A replaced host session's will, delivered late: older than the online, ignored.
        await host.client.publish(STATE, state(False, began - 1000), qos=1)
        await until(lambda: said("older than the last one"), 10, "the late will ignored")
        count = len(host.of("DDATA"))
        await host.wait_for(lambda: len(host.of("DDATA")) > count)  # still publishing
        assert not host.of("NDEATH")

        # The host goes: NDEATH at once, and a new connection that waits for it.
        await host.client.publish(STATE, state(False, began + 1), qos=1, retain=True)
        await host.wait_for(lambda: host.of("NDEATH"))
        await until(lambda: agent.uplink.connects == 2, 20, "the agent connected again")
        await host.client.publish(STATE, state(True, began), qos=1)  # older than the offline
        await until(lambda: said("older than the last one") >= 2, 10, "the old online ignored")
        away = len(taken)
        await until(lambda: len(taken) >= away + 3, 10, "readings while the host is away")
        assert len(host.of("NBIRTH")) == 1

        await host.client.publish(STATE, state(True, began + 2), qos=1, retain=True)
        await host.wait_for(lambda: len(host.of("NBIRTH")) == 2)
        mark = len(taken)
        await host.wait_for(lambda: set(taken[:mark]) <= set(host.values()), 30)
        births = [s.payload for s in host.of("NBIRTH")]
        bdseqs = [next(m.long_value for m in b.metrics if m.name == "bdSeq") for b in births]
        assert bdseqs[1] == (bdseqs[0] + 1) % 256  # one new CONNECT, one more
        born = births[1].timestamp
        later = [m for s in host.of("DDATA") if s.seen_after_rebirth for m in s.payload.metrics]
        assert any(m.is_historical for m in later)
        for m in later:
            assert m.is_historical == (m.timestamp < born), (m.timestamp, born)

    run(with_agent(tmp_path, broker, slave, 'primary_host_id = "scada"', body), timeout=90)


def test_a_device_that_starts_failing_gets_ddeath_and_dbirth_when_it_answers_again(
    tmp_path: Path, broker: Broker
) -> None:
    slave = SimulatedSlave(1, POINTS)

    async def body(host: Host, agent: Agent) -> None:
        await host.wait_for(lambda: host.of("DDATA"))
        slave.dead = True
        await host.wait_for(lambda: host.of("DDEATH"), 30)
        slave.dead = False
        await host.wait_for(lambda: len(host.of("DBIRTH")) == 2, 30)
        count = len(host.of("DDATA"))
        await host.wait_for(lambda: len(host.of("DDATA")) > count)
        # born again in the same session, on the same connection
        assert (agent.uplink.connects, len(host.of("NBIRTH"))) == (1, 1)

    run(with_agent(tmp_path, broker, slave, "", body), timeout=90)


def test_a_device_of_which_only_some_points_fail_keeps_its_session(
    tmp_path: Path, broker: Broker
) -> None:
    """Its coils refused (illegal function) while its registers read: each poll has values and
    an error. The device is failing for ``status``, but for the host it answers: no DDEATH,
    no DBIRTH again, its DDATA go on."""
    slave = SimulatedSlave(1, POINTS)

    async def body(host: Host, agent: Agent) -> None:
        await host.wait_for(lambda: host.of("DDATA"))
        slave.unsupported = {1}  # read coils: "running" fails, the registers still read
        await until(lambda: agent.pollers[0].health["pump"].failing, 10, "the coils refused")
        count = len(host.of("DDATA"))
        await host.wait_for(lambda: len(host.of("DDATA")) >= count + 10)  # 10 polls later
        assert (len(host.of("DDEATH")), len(host.of("DBIRTH"))) == (0, 1)
        slave.dead = True  # now it reads nothing: the host is told
        await host.wait_for(lambda: host.of("DDEATH"), 30)

    run(with_agent(tmp_path, broker, slave, "", body), timeout=90)


def test_history_after_an_outage_arrives_oldest_first_and_whole(
    tmp_path: Path, broker: Broker
) -> None:
    """Small batches (``batch_max = 3``) after an outage: the backlog on disk and the readings
    still in memory are sent in the order they were read, none missing."""
    slave = SimulatedSlave(1, POINTS)
    taken: list[int] = []

    async def body(host: Host, agent: Agent, gate: Gate) -> None:
        record_readings(agent, taken)
        await host.wait_for(lambda: len(host.of("DDATA")) >= 2)
        await cut(host, gate, taken, 15)  # most of them flushed to disk
        await gate.open()
        await host.wait_for(lambda: len(host.of("NBIRTH")) == 2, 30)
        mark = len(taken)
        await host.wait_for(lambda: set(taken[:mark]) <= set(host.values()), 30)
        later = [
            m.timestamp
            for s in host.of("DDATA")
            if s.seen_after_rebirth
            for m in s.payload.metrics[:1]
        ]
        assert len(later) > 15
        assert later == sorted(later), later

    small = 'batch_interval = "100ms"\nbatch_max = 3'
    run(behind_gate(tmp_path, broker, slave, body, edit=small), timeout=120)


def test_history_of_a_device_that_died_during_the_outage_is_delivered_then_its_ddeath(
    tmp_path: Path, broker: Broker
) -> None:
    """The link goes; the device reads a while, then stops answering; the link comes back
    while it is dead. Its readings go (born for them, historical), then its DDEATH; the link
    stays up."""
    slave = SimulatedSlave(1, POINTS)
    taken: list[int] = []

    async def body(host: Host, agent: Agent, gate: Gate) -> None:
        record_readings(agent, taken)
        await host.wait_for(lambda: len(host.of("DDATA")) >= 2)
        await cut(host, gate, taken, 5)
        slave.dead = True
        await until(lambda: agent.pollers[0].health["pump"].unreachable, 10, "the slave dead")
        await gate.open()
        await host.wait_for(lambda: set(taken) <= set(host.values()), 30)
        await host.wait_for(lambda: host.of("DDEATH"), 30)
        assert agent.uplink.connects == 2  # one reconnection, none for the dead device
        last_data = max(i for i, s in enumerate(host.seen) if s.kind == "DDATA")
        assert host.seen[-1].kind == "DDEATH"
        assert last_data < len(host.seen) - 1

    run(behind_gate(tmp_path, broker, slave, body), timeout=120)


def test_a_retained_dcmd_is_not_carried_out_again_at_the_next_connection(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """A DCMD published retained (a host must not): carried out as it comes, then handed over
    again by the broker at every new connection. There it is ignored, said once."""
    caplog.set_level(logging.WARNING, logger="agent.uplink.sparkplug")
    slave = slave_with_values()

    async def body(host: Host, agent: Agent, gate: Gate) -> None:
        await host.wait_for(lambda: host.of("DBIRTH"))
        command = ReferencePayload()
        command.metrics.add(name="setpoint", datatype=6, int_value=75)
        await host.client.publish(DCMD, command.SerializeToString(), qos=1, retain=True)
        await until(lambda: slave.value("setpoint") == 75, 10, "the DCMD written")
        slave.set_value("setpoint", 10)  # set at the panel since
        await gate.close()
        await host.wait_for(lambda: host.of("NDEATH"), 30)
        await gate.open()
        await until(
            lambda: any("a retained command" in r.getMessage() for r in caplog.records),
            30,
            "the retained DCMD handed over again, and ignored",
        )
        await host.wait_for(lambda: len(host.of("NBIRTH")) == 2, 30)
        assert slave.value("setpoint") == 10

    run(behind_gate(tmp_path, broker, slave, body), timeout=120)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"ONLINE",  # Sparkplug 2.2's plain-text STATE
        b"[true, 1]",
        b'{"online": "true", "timestamp": 1}',
        b'{"online": 1, "timestamp": 1}',
        b'{"online": true, "timestamp": "1700000000000"}',
        b'{"online": true, "timestamp": true}',
        b'{"online": true, "timestamp": NaN}',
        b'{"online": false, "timestamp": Infinity}',
        b'{"online": true, "timestamp": 1' + b"0" * 400 + b"}",  # beyond a uint64 (and a float)
        b'{"online": true, "timestamp": -1}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_a_state_that_is_not_the_specifications_json_is_refused_with_a_reason(
    payload: bytes,
) -> None:
    with pytest.raises(ValueError, match="STATE"):
        parse_state(payload)


def test_a_state_gives_whether_the_host_is_online_and_when() -> None:
    assert parse_state(state(True, 1_700_000_000_000)) == (True, 1_700_000_000_000)
    assert parse_state(b'{"online": false, "timestamp": 1.5e12, "bdSeq": 3}') == (
        False,
        1_500_000_000_000,
    )
    # compared as sent: an offline half a millisecond older is older
    _, online = parse_state(b'{"online": true, "timestamp": 1700000000000.9}')
    _, offline = parse_state(b'{"online": false, "timestamp": 1700000000000.4}')
    assert offline < online
