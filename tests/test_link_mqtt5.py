"""The link at MQTT 5 against a real Mosquitto that refuses: an ACL on the telemetry topic, a
message size limit below a batch, a Maximum Packet Size, a Receive Maximum of one; a session that
keeps commands through a short cut; a stop while the broker goes. Every id is accounted for."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.service.logs import BURST
from agent.testkit.broker import Broker
from agent.testkit.faults import account, drained
from agent.testkit.link import SlowLink
from agent.testkit.modbus import ModbusBus
from agent.testkit.runner import AgentRunner
from drivers.modbus.schema import ModbusPoint

LEVEL = ModbusPoint("level", table="holding", address=0, type="uint16")
SITE = """
[agent]
id = "gw5"
[buffer]
flush_interval = "400ms"
[mqtt]
topic_prefix = "m5"
batch_interval = "100ms"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
timeout = "300ms"
[[device]]
name = "tank"
bus = "plc"
interval = "100ms"
  [[device.point]]
  name = "level"
  address = 0
  writable = true
"""
TELEMETRY = "m5/gw5/telemetry"
REFUSED_LINE = r"the broker refused our message on m5/gw5/telemetry: Not authorized \(0x87\)"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.1)  # another process's state: asked, not awaited


def status_of(runner: AgentRunner) -> dict[str, Any]:
    try:
        return runner.status()
    except Exception:  # not answering yet
        return {}


def depth(runner: AgentRunner) -> int:
    return int(status_of(runner).get("buffer", {}).get("depth", 0))


def link(runner: AgentRunner) -> dict[str, Any]:
    return dict(status_of(runner).get("link", {}))


def accounted(runner: AgentRunner) -> None:
    assert runner.term() == 0, runner.log
    reconciled = account(runner)
    assert reconciled.ok, reconciled
    assert "Traceback" not in runner.log, runner.log
    assert "never retrieved" not in runner.log, runner.log


def publish(broker: Broker, topic: str, payload: dict[str, Any]) -> None:
    """One QoS 1 message from a client of the test's own, acknowledged before this returns."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def retained(broker: Broker, topic: str, timeout: float = 10.0) -> dict[str, Any]:
    """The message the broker retains on ``topic``."""
    got: list[bytes | bytearray] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda _c, _u, message: got.append(message.payload)
    client.connect(broker.host, broker.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        wait_until(lambda: bool(got), timeout, f"a retained message on {topic}")
    finally:
        client.disconnect()
        client.loop_stop()
    return dict(json.loads(got[0]))


def command(ident: str, value: int) -> dict[str, Any]:
    return {
        "id": ident,
        "ts": int(time.time() * 1000),
        "device": "tank",
        "point": "level",
        "value": value,
    }


def tank(modbus_bus: Callable[..., ModbusBus]) -> ModbusBus:
    bus = modbus_bus("tcp")
    bus.add(1, points=[LEVEL])
    return bus


def test_telemetry_the_broker_refuses_stays_buffered_said_once_and_counted(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], mosquitto: Broker
) -> None:
    mosquitto.deny = [TELEMETRY]
    mosquitto.restart()
    edge_agent.start(SITE, buses={"plc": tank(modbus_bus)})
    edge_agent.wait_log(REFUSED_LINE + r": the broker's access rules \(ACL\)")
    wait_until(lambda: link(edge_agent).get("refused", 0) >= 2, 40, "a second refusal")
    assert depth(edge_agent) > 20  # kept, not deleted as delivered
    assert edge_agent.samples() == []
    assert len(re.findall(REFUSED_LINE, edge_agent.log)) == 1
    mosquitto.deny = []
    mosquitto.restart()  # the operator fixed the ACL
    edge_agent.wait_log(r"the broker takes our messages on m5/gw5/telemetry again", timeout=30)
    assert drained(edge_agent, timeout=60)
    accounted(edge_agent)
    assert len(re.findall(REFUSED_LINE, edge_agent.log)) == 1


def test_at_mqtt_3_1_1_a_denied_publish_looks_delivered_the_documented_limitation(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], mosquitto: Broker
) -> None:
    """Mosquitto acknowledges a publish its ACL denies at 3.1.1: nothing tells the agent."""
    mosquitto.deny = [TELEMETRY]
    mosquitto.restart()
    edge_agent.start(
        SITE, buses={"plc": tank(modbus_bus)}, overrides={"mqtt": {"protocol": "3.1.1"}}
    )
    wait_until(lambda: link(edge_agent).get("sent", 0) >= 10, 20, "samples taken as sent")
    assert link(edge_agent)["refused"] == 0
    assert edge_agent.samples() == []
    assert "connected as gw5 (MQTT 3.1.1)" in edge_agent.log
    assert edge_agent.term() == 0


def test_a_backlog_larger_than_the_brokers_message_size_limit_shrinks_to_fit(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], mosquitto: Broker
) -> None:
    edge_agent.start(SITE, buses={"plc": tank(modbus_bus)})
    edge_agent.telemetry.wait_samples(3, "tank", timeout=20)
    mosquitto.settings = {"message_size_limit": 2000}
    mosquitto.stop()
    wait_until(lambda: depth(edge_agent) >= 60, 30, "a backlog of 60 samples")  # ~4 kB
    mosquitto.start()
    assert drained(edge_agent, timeout=60), edge_agent.log
    found = re.findall(r"taken for a message size limit", edge_agent.log)
    assert len(found) == 1, edge_agent.log  # one line says so
    accounted(edge_agent)


@pytest.mark.parametrize(
    "limit",
    [{"max_packet_size": 1500}, {"message_size_limit": 1500}],
    ids=["announced in CONNACK", "found by the link going"],
)
def test_a_size_limit_splits_batches_and_drops_only_a_sample_that_cannot_fit(
    edge_agent: AgentRunner,
    modbus_bus: Callable[..., ModbusBus],
    mosquitto: Broker,
    limit: dict[str, object],
) -> None:
    wide = [
        ModbusPoint(f"p{i:02d}_of_a_rather_long_name", table="holding", address=i, type="uint16")
        for i in range(60)
    ]
    bus = modbus_bus("tcp")
    bus.add(1, points=[LEVEL])
    bus.add(2, points=wide)
    points = "".join(
        f'  [[device.point]]\n  name = "{p.name}"\n  address = {p.address}\n' for p in wide
    )
    site = SITE + f'[[device]]\nname = "wide"\nbus = "plc"\nunit = 2\ninterval = "1s"\n{points}'
    edge_agent.start(site, buses={"plc": bus})
    edge_agent.telemetry.wait_samples(3, "tank", timeout=20)
    mosquitto.settings = dict(limit)
    mosquitto.stop()
    before = max(s["id"] for s in edge_agent.samples())
    wait_until(lambda: depth(edge_agent) >= 60, 30, "a backlog")
    mosquitto.start()
    edge_agent.wait_log(r"sample \d+ of device wide is \d+ bytes as a message, more than", 30)
    edge_agent.wait_log(r"our meta message is \d+ bytes, more than the broker takes")
    edge_agent.telemetry.wait_samples(80, "tank", timeout=30)
    assert link(edge_agent)["too_large"] >= 1
    if "max_packet_size" in limit:
        assert link(edge_agent)["broker_limits"]["maximum_packet_size"] == 1500
        assert edge_agent.log.count("link lost") == 1  # the stop; never dropped for a size
    assert len(re.findall(r"our meta message is \d+ bytes", edge_agent.log)) == 1
    assert edge_agent.log.count("of device wide is") <= BURST  # each named, within the limit
    accounted(edge_agent)
    assert not [s for s in edge_agent.samples("wide") if s["id"] > before]


def test_a_receive_maximum_of_one_is_honoured_while_commands_and_telemetry_share_it(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], mosquitto: Broker
) -> None:
    mosquitto.settings = {"max_inflight_messages": 1}
    mosquitto.restart()
    edge_agent.start(SITE, buses={"plc": tank(modbus_bus)})
    edge_agent.telemetry.wait_samples(5, "tank", timeout=20)
    assert link(edge_agent)["broker_limits"]["receive_maximum"] == 1
    for n in range(10):
        publish(mosquitto, "m5/gw5/cmd", command(f"c{n}", n))
    wait_until(lambda: len(edge_agent.telemetry.payloads("cmd/reply")) >= 10, 30, "10 replies")
    assert "link lost" not in edge_agent.log
    accounted(edge_agent)


def test_a_command_sent_while_the_link_is_cut_arrives_through_the_kept_session(
    edge_agent: AgentRunner,
    modbus_bus: Callable[..., ModbusBus],
    mosquitto: Broker,
    kit_loop: Any,
) -> None:
    cut = SlowLink(kit_loop, mosquitto.host, mosquitto.port).start()
    try:
        edge_agent.start(
            SITE, buses={"plc": tank(modbus_bus)}, overrides={"mqtt": {"url": cut.url}}
        )
        edge_agent.telemetry.wait_samples(3, "tank", timeout=20)
        cut.stalled = True
        cut.cut()
        wait_until(lambda: link(edge_agent).get("state") == "disconnected", 20, "link down")
        wait_until(lambda: "Client gw5 closed" in mosquitto.log_text(), 20, "the broker saw it go")
        publish(mosquitto, "m5/gw5/cmd", command("queued", 7))
        cut.stalled = False
        wait_until(
            lambda: any(
                r.get("id") == "queued" for r in edge_agent.telemetry.payloads("cmd/reply")
            ),
            30,
            "the reply to the command queued by the broker",
        )
        accounted(edge_agent)
    finally:
        cut.stop()


def test_a_stop_as_the_broker_goes_still_publishes_offline_once_it_is_back(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], mosquitto: Broker
) -> None:
    edge_agent.start(SITE, buses={"plc": tank(modbus_bus)})
    edge_agent.telemetry.wait_samples(3, "tank", timeout=20)
    mosquitto.stop()
    edge_agent.wait_log(r"link lost")
    edge_agent.signal(signal.SIGTERM)
    mosquitto.start()  # back within the stop's grace
    assert edge_agent.wait(timeout=30) == 0, edge_agent.log
    edge_agent.wait_log(r"offline published as we stopped")
    assert retained(mosquitto, "m5/gw5/status")["state"] == "offline"
    assert "never retrieved" not in edge_agent.log
    assert "Traceback" not in edge_agent.log


@pytest.mark.parametrize("outage", [1.0, 4.0])
def test_after_a_broker_restart_the_first_reading_is_back_within_seconds(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], mosquitto: Broker, outage: float
) -> None:
    """Loosely: the tight figure is measured by ``bench.reconnect``."""
    edge_agent.start(SITE, buses={"plc": tank(modbus_bus)})
    edge_agent.telemetry.wait_samples(3, "tank", timeout=20)
    mosquitto.stop()
    edge_agent.wait_log(r"link lost")
    time.sleep(outage)  # the outage itself: a length, not a synchronisation
    before = max(s["id"] for s in edge_agent.samples())
    mosquitto.start()
    back = time.monotonic()
    wait_until(lambda: max(s["id"] for s in edge_agent.samples()) > before, 15, "a new reading")
    assert time.monotonic() - back < 4.0
    accounted(edge_agent)
