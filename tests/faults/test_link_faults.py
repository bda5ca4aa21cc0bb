"""The link's faults against the real agent at its default ``[mqtt]`` settings: the broker
restarted after outages of a few lengths, restarted to lift an ACL that refused the agent's
telemetry, and restarted behind a TCP proxy (a load balancer that takes the connection while its
broker is down). Each time the first reading must reach a subscriber within seconds of the
broker's return (loosely: ``python -m bench.reconnect`` measures it), and every id is accounted
for at the end.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable

import pytest

from agent.testkit.aio import KitLoop
from agent.testkit.broker import Broker
from agent.testkit.campaign import first_reading
from agent.testkit.faults import account, drained
from agent.testkit.link import SlowLink
from agent.testkit.modbus import SimSlave
from agent.testkit.runner import AgentRunner
from drivers.modbus.schema import ModbusPoint

TOPIC = "lf/gw"
SITE = """
[agent]
id = "gw"
[mqtt]
topic_prefix = "lf"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
[[device]]
name = "tank"
bus = "plc"
unit = 1
interval = "200ms"
  [[device.point]]
  name = "level"
  address = 0
"""
#: The loose bound: the agent probes a broker that went away every 0.25-0.75 s and connects
#: within ``reconnect_window`` (0.5 s) of its answer; the machine may be busy.
FIRST_READING_WITHIN = 12.0
#: Behind the proxy: tries every 2 s at most (``reconnect_max``), each failing at once. Waiting
#: out the CONNECT timeout instead took 9-10 s.
THROUGH_PROXY_WITHIN = 7.0
#: After a broker that stopped under the agent's CONNECT: probed for (every 0.25-0.75 s), not
#: met with the backoff its failures have grown (up to 32 s after five).
AFTER_FLAPS_WITHIN = 5.0
#: How long a subscriber waits for that reading before the test fails.
FIRST_READING_TIMEOUT = 30.0


def back_and_first_reading(kit_loop: KitLoop, broker: Broker) -> float:
    """Start the stopped broker; seconds from its listening to the first reading published
    after it at a new subscriber."""
    broker.start()  # returns once it listens
    back = time.monotonic()
    reading = first_reading(broker.host, broker.port, f"{TOPIC}/telemetry", FIRST_READING_TIMEOUT)
    arrival = kit_loop.call(reading, FIRST_READING_TIMEOUT + 5)
    assert arrival is not None, f"no reading within {FIRST_READING_TIMEOUT:g}s of the return"
    return arrival - back


def start(edge_agent: AgentRunner, slave: SimSlave, **mqtt: object) -> None:
    slave.set("level", 7)
    edge_agent.start(SITE, buses={"plc": slave.bus}, overrides={"mqtt": mqtt})
    edge_agent.wait_sample("tank", "level", 7)


def every_id_accounted(edge_agent: AgentRunner) -> None:
    assert drained(edge_agent), "the backlog did not drain"
    assert edge_agent.term() == 0
    result = account(edge_agent)
    assert result.ok, result
    assert result.dropped == 0, result
    assert result.lost == 0, result
    assert result.delivered == result.generated > 0, result
    assert "Traceback" not in edge_agent.log


@pytest.fixture
def slave(modbus_slave: Callable[..., SimSlave]) -> SimSlave:
    return modbus_slave(points=[ModbusPoint("level", table="holding", address=0, type="uint16")])


def test_the_first_reading_follows_a_broker_restart_within_seconds(
    kit_loop: KitLoop, mosquitto: Broker, edge_agent: AgentRunner, slave: SimSlave
) -> None:
    start(edge_agent, slave)
    took = {}
    for outage in (1.0, 6.0):
        mosquitto.stop()
        time.sleep(outage)  # the outage itself
        took[outage] = back_and_first_reading(kit_loop, mosquitto)
    assert all(t < FIRST_READING_WITHIN for t in took.values()), took
    every_id_accounted(edge_agent)


def test_a_restart_that_lifts_a_refusal_is_noticed_at_once(
    kit_loop: KitLoop, mosquitto: Broker, edge_agent: AgentRunner, slave: SimSlave
) -> None:
    """MQTT 5: the broker's ACL refuses the agent's telemetry (a PUBACK reason code), the
    samples wait; a restart without the ACL must not wait out the agent's retry (seconds,
    doubling up to ``reconnect_max``)."""
    start(edge_agent, slave)
    # the agent's own telemetry (its client id is its agent id); subscribers still read it
    mosquitto.deny_patterns = ["lf/%c/telemetry"]
    mosquitto.restart()
    refused_twice(edge_agent)  # the agent now waits 5-10 s before its next try
    mosquitto.deny_patterns = []
    mosquitto.stop()
    took = back_and_first_reading(kit_loop, mosquitto)
    assert took < FIRST_READING_WITHIN, f"{took:.1f}s after the restart that lifted the ACL"
    # The subscriber can have the reading before the agent has the broker's PUBACK for it,
    # which is what the line waits for.
    edge_agent.wait_log(re.escape(f"the broker takes our messages on {TOPIC}/telemetry again"))
    log = edge_agent.log
    assert log.count(f"the broker refused our message on {TOPIC}/telemetry") == 1, log
    assert log.count(f"the broker takes our messages on {TOPIC}/telemetry again") == 1, log
    every_id_accounted(edge_agent)


def refused_twice(edge_agent: AgentRunner, timeout: float = 30.0) -> None:
    """Wait until the agent counted two refused publishes (its status socket: asked, as no
    event says so)."""
    deadline = time.monotonic() + timeout
    while edge_agent.status()["link"].get("refused", 0) < 2:
        assert time.monotonic() < deadline, f"not refused twice within {timeout:g}s"
        time.sleep(0.1)


def test_a_broker_behind_a_proxy_is_met_within_seconds_of_its_return(
    kit_loop: KitLoop, mosquitto: Broker, edge_agent: AgentRunner, slave: SimSlave
) -> None:
    """A TCP proxy (a load balancer) takes the connection while its broker is down and closes
    it: the probe cannot tell, so the agent backs off (``reconnect_max``); each attempt must
    fail at once, not wait out the CONNECT timeout (10 s)."""
    link = SlowLink(kit_loop, mosquitto.host, mosquitto.port).start()
    try:
        start(edge_agent, slave, url=link.url, reconnect_max="2s")
        mosquitto.stop()
        time.sleep(3.0)  # the outage: the agent tries, through the proxy, meanwhile
        took = back_and_first_reading(kit_loop, mosquitto)
        assert took < THROUGH_PROXY_WITHIN, f"{took:.1f}s after the broker behind the proxy"
        every_id_accounted(edge_agent)
    finally:
        link.stop()


def test_a_broker_that_stops_under_the_connect_is_probed_for_not_backed_off(
    kit_loop: KitLoop, mosquitto: Broker, edge_agent: AgentRunner, slave: SimSlave
) -> None:
    """A flapping broker: five times the agent's CONNECT meets a connection that closes before
    CONNACK, the last time because the broker stopped listening. The agent must then probe for
    its return, not wait out a backoff grown by the five."""
    start(edge_agent, slave)
    mosquitto.stop()
    flaps = ClosingPort(mosquitto.host, mosquitto.port, closes=5)
    assert flaps.finished.wait(60), f"the agent sent {flaps.closed} CONNECTs in 60 s, not 5"
    took = back_and_first_reading(kit_loop, mosquitto)
    assert took < AFTER_FLAPS_WITHIN, f"{took:.1f}s after the flapping broker came back"
    closes = edge_agent.log.count("closed the connection before answering")
    assert closes == 1, edge_agent.log  # five times the same trouble: one line
    every_id_accounted(edge_agent)


class ClosingPort:
    """Listens on ``port`` and closes each connection that sends anything (an MQTT CONNECT)
    unanswered; at the ``closes``-th it stops listening first, as a broker that stops does.
    The agent's probes (a connect and a close) are let go."""

    def __init__(self, host: str, port: int, closes: int) -> None:
        self.closed = 0
        self.finished = threading.Event()
        self._server = socket.create_server((host, port))
        self._server.settimeout(60)
        self._closes = closes
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self._server:
            while self.closed < self._closes:
                try:
                    connection, _ = self._server.accept()
                except OSError:  # nothing came within a minute: the test says so
                    return
                with connection:
                    connection.settimeout(5)
                    try:
                        sent = connection.recv(1)
                    except OSError:
                        sent = b""
                    if sent:
                        self.closed += 1
                        if self.closed == self._closes:
                            self._server.close()  # gone before the connection is
        self.finished.set()
