"""The site in site.toml, tested before anyone drives to the field: simulated RS-485 slaves and a
simulated weather sensor, a real Mosquitto, and the real ``edge-agent run``.

Only the edge-agent test kit's fixtures are used (they come with ``pip install edge-agent``):
``modbus_bus``, ``serial_sensor``, ``edge_agent``, ``mosquitto``.
Run: ``pytest examples/site-test`` (see README.md).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.testkit.broker import Broker
from agent.testkit.modbus import ModbusBus, SimSlave
from agent.testkit.runner import AgentRunner
from agent.testkit.sensor import SerialSensor

SITE = Path(__file__).with_name("site.toml")


@dataclass
class Site:
    rs485: ModbusBus
    meter: SimSlave
    soil: SimSlave
    weather: SerialSensor

    def start(self, agent: AgentRunner, overrides: dict[str, Any] | None = None) -> AgentRunner:
        """Run the agent on site.toml, its buses pointed at the simulated ones."""
        buses = {"rs485": self.rs485, "wx-port": self.weather}
        return agent.start(SITE, buses=buses, overrides=overrides)


@pytest.fixture
def site(modbus_bus: Callable[..., ModbusBus], serial_sensor: Callable[..., SerialSensor]) -> Site:
    rs485 = modbus_bus("rtu")  # RTU frames on a pseudo-terminal
    slaves = rs485.add_devices(SITE, "rs485")  # the site's own devices: unit ids, templates
    weather = serial_sensor()
    weather.answer("R\r", "T=21.5 H=40")
    return Site(rs485, slaves["meter"], slaves["soil"], weather)


def test_values_set_on_the_slaves_arrive_decoded(site: Site, edge_agent: AgentRunner) -> None:
    site.meter.set("voltage", 230.5)
    site.meter.set("frequency", 50.0)
    site.soil.set("moisture", 35.2)  # uint16 x0.1 on the wire: 352
    site.soil.set("temperature", -4.5)  # int16 x0.1: two's complement
    site.start(edge_agent)

    edge_agent.wait_sample("meter", "voltage", 230.5)
    edge_agent.wait_sample("meter", "frequency", 50.0)
    edge_agent.wait_sample("soil", "moisture", pytest.approx(35.2))
    edge_agent.wait_sample("soil", "temperature", pytest.approx(-4.5))
    weather = edge_agent.wait_sample("weather", "temperature", 21.5)
    assert weather["values"]["humidity"] == 40

    site.meter.set("voltage", 241.25)  # a change shows at the next poll
    edge_agent.wait_sample("meter", "voltage", 241.25, timeout=5)
    assert site.meter.requests > 0
    assert site.weather.commands > 0


def test_a_dead_slave_shows_as_failing_in_health(site: Site, edge_agent: AgentRunner) -> None:
    site.start(edge_agent, overrides={"mqtt": {"health_interval": "1s"}})
    edge_agent.wait_sample("soil", "moisture")

    site.soil.dead = True
    failing = edge_agent.telemetry.wait_health("soil", "failing", timeout=20)
    assert failing["faults"]["timeout"] >= 1
    health = edge_agent.telemetry.health() or {}
    assert health["devices"]["meter"]["state"] == "ok"  # the others are not held up

    site.soil.dead = False  # it answers again
    edge_agent.wait_health("soil", "ok", timeout=30)  # asked on `edge-agent status`'s socket


def test_a_broker_outage_loses_nothing(
    site: Site, edge_agent: AgentRunner, mosquitto: Broker
) -> None:
    site.start(edge_agent)
    before = edge_agent.telemetry.wait_samples(6)

    mosquitto.stop()
    time.sleep(3)  # the outage: the agent keeps polling, and buffers
    mosquitto.start()  # same port, same sessions

    newest = max(s["id"] for s in before) + 15  # beyond what was polled during the outage

    def missing() -> set[int]:
        ids = {s["id"] for s in edge_agent.samples()}
        return set(range(1, max(max(ids) + 1, newest))) - ids

    with contextlib.suppress(TimeoutError):  # the backlog drains after the live samples
        edge_agent.telemetry.wait_for(lambda _: not missing(), timeout=30)
    assert not missing(), f"samples lost in the outage: ids {sorted(missing())}"
