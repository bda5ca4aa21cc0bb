"""A fault campaign against the real agent: every fault a slave can have, each on a bus of its own
beside a healthy slave, for a bounded run of ``edge-agent run``.

What must hold for each: the healthy slave on the bus keeps delivering and never fails, the
faulty one shows "failing" and recovers when the fault is cleared, and the log keeps its promise
(docs/service.md, "Logs": a line when a failure starts and one when it clears, at most ``BURST`` alike per device
or bus per window, then a summary): no reconnect loop, no traceback, no library chatter.

One agent per kind of bus polls all its faulty buses at once (each bus has a poll loop of its
own), so that the campaign takes seconds rather than a minute. Modbus TCP runs twice: one
request at a time, and pipelined (``pipeline = 2``: both devices of a bus asked at once).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from agent.service.logs import BURST
from agent.testkit.modbus import BusKind, ModbusBus, SimSlave
from agent.testkit.runner import AgentRunner
from drivers.modbus.schema import ModbusPoint

LEVEL = ModbusPoint("level", table="holding", address=0, type="uint16")
INTERVAL = "250ms"
#: Seconds. A fault "beyond the timeout" must last longer than this; a healthy slave must answer
#: within it while three suites share two cores (CI), so it is not cut fine.
TIMEOUT = 0.5
#: Samples the healthy slave of every bus must deliver while the faults last.
HEALTHY_SAMPLES = 8
#: Lines a faulty bus may write from the fault's start to the agent's exit: at most a burst of
#: alike ones, plus the transitions (the failure, the backoff, the recovery, the one-time overrun
#: notes of both devices) and a summary.
BUDGET = BURST + 6

HEAD = """
[agent]
id = "campaign"
[mqtt]
topic_prefix = "c"
batch_interval = "100ms"
"""
#: A log line of the agent's own: timestamp, level, an ``agent.*`` logger.
AGENT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ agent[.\w]*: ")

#: How each fault is set on a slave, and cleared.
FAULTS: dict[str, Callable[[SimSlave, bool], None]] = {
    "dead": lambda slave, on: setattr(slave, "dead", on),
    # Late by a quarter of the timeout more than it: on an RTU line (no transaction ids) a late
    # answer would be taken by the next request to its unit, which starts at the next slot, a
    # quarter past (at INTERVAL = TIMEOUT / 2); so it comes between the two.
    "slow": lambda slave, on: setattr(slave, "slow_ms", 1.25 * TIMEOUT * 1000 if on else 0),
    "exception": lambda slave, on: setattr(slave, "exception", 4 if on else None),
    "wrong_tid": lambda slave, on: setattr(slave, "wrong_tid", on),
    "garbage": lambda slave, on: setattr(slave, "garbage", on),
    "noise": lambda slave, on: setattr(slave, "noise", on),
    # a quarter of the timeout a byte: a 7-byte RTU answer (11 bytes on TCP) takes 1.5 of it
    "drip": lambda slave, on: setattr(slave, "drip_ms", TIMEOUT * 1000 / 4 if on else 0),
    "crc": lambda slave, on: setattr(slave, "corrupt", "crc" if on else None),
    "unit": lambda slave, on: setattr(slave, "corrupt", "unit" if on else None),
    "truncate": lambda slave, on: setattr(slave, "corrupt", "truncate" if on else None),
    "drop": lambda slave, on: setattr(slave, "corrupt", "drop" if on else None),
}
EVERY_KIND = ("dead", "slow", "exception", "garbage", "noise", "drip")


@dataclass(frozen=True)
class Campaign:
    """The faults tried on one kind of bus, with its own keys on every bus."""

    kind: BusKind
    faults: tuple[str, ...]
    bus_keys: str = ""


CAMPAIGNS = {
    "tcp": Campaign("tcp", (*EVERY_KIND, "wrong_tid")),
    # A server writes each answer whole: bytes of two answers never interleave on one stream,
    # as the simulator's drip would make them with a pipeline (a broken stream, not a slow
    # answer). One at a time, the next request is sent only after the drip's timeout.
    "tcp-pipelined": Campaign(
        "tcp", (*(k for k in EVERY_KIND if k != "drip"), "wrong_tid"), "pipeline = 2\n"
    ),
    "rtu": Campaign("rtu", (*EVERY_KIND, "crc", "unit", "truncate", "drop")),
    "rtu-over-tcp": Campaign("rtu-over-tcp", EVERY_KIND),
}
BUS_TYPES: dict[BusKind, str] = {
    "tcp": "modbus-tcp",
    "rtu": "modbus-rtu",
    "rtu-over-tcp": "modbus-rtu-over-tcp",
}


@dataclass
class FaultyBus:
    """One bus of the campaign: ``fault`` on the slave of device ``bad``, ``good`` beside it."""

    fault: str
    bus: ModbusBus
    good: SimSlave
    bad: SimSlave

    @property
    def name(self) -> str:
        return self.fault.replace("_", "-")

    @property
    def devices(self) -> tuple[str, str]:
        return f"{self.name}-good", f"{self.name}-bad"

    def inject(self, on: bool) -> None:
        FAULTS[self.fault](self.bad, on)

    def lines_about(self, log: str) -> list[str]:
        """The log lines that name this bus or one of its devices."""
        good, bad = self.devices
        about = re.compile(rf"\b(?:bus|device) (?:{self.name}|{good}|{bad})\b")
        return [line for line in log.splitlines() if about.search(line)]

    def toml(self, kind: BusKind, bus_keys: str = "") -> str:
        where = 'host = "192.0.2.1"\n' if kind != "rtu" else ""
        text = f"""
[[bus]]
name = "{self.name}"
type = "{BUS_TYPES[kind]}"
{where}{bus_keys}timeout = "{TIMEOUT * 1000:g}ms"
"""
        for device, slave in zip(self.devices, (self.good, self.bad), strict=True):
            text += f"""
[[device]]
name = "{device}"
bus = "{self.name}"
unit = {slave.unit}
interval = "{INTERVAL}"
  [[device.point]]
  name = "level"
  table = "holding"
  address = 0
"""
        return text


def failures_of(device: str, lines: list[str]) -> list[str]:
    """The lines that say ``device`` failed: all of its own but the one-time note that the bus
    is busier than its interval allows (a faulty neighbour's timeouts do that)."""
    return [
        line
        for line in lines
        if f"device {device}:" in line and "could not start before the next was due" not in line
    ]


def campaign(
    kind: BusKind, faults: tuple[str, ...], modbus_bus: Callable[..., ModbusBus]
) -> list[FaultyBus]:
    buses = []
    for fault in faults:
        bus = modbus_bus(kind, name=f"tty-{fault}")
        buses.append(FaultyBus(fault, bus, bus.add(1, points=[LEVEL]), bus.add(2, points=[LEVEL])))
    for seed, faulty in enumerate(buses):
        faulty.bad.random = random.Random(seed)  # the same garbage at every run
    return buses


@pytest.mark.parametrize("name", list(CAMPAIGNS))
def test_no_slave_fault_stops_the_bus_or_floods_the_log(
    name: str, modbus_bus: Callable[..., ModbusBus], edge_agent: AgentRunner
) -> None:
    kind, bus_keys = CAMPAIGNS[name].kind, CAMPAIGNS[name].bus_keys
    buses = campaign(kind, CAMPAIGNS[name].faults, modbus_bus)
    edge_agent.start(
        HEAD + "".join(b.toml(kind, bus_keys) for b in buses),
        buses={b.name: b.bus for b in buses},
    )
    for faulty in buses:
        for device in faulty.devices:
            edge_agent.wait_sample(device, "level", 0)

    start = len(edge_agent.log)
    delivered = {b.name: len(edge_agent.samples(b.devices[0])) for b in buses}
    for faulty in buses:
        faulty.inject(True)
    for faulty in buses:
        edge_agent.wait_health(faulty.devices[1], "failing", timeout=10)
    for faulty in buses:  # the faults go on meanwhile: the bounded run
        healthy = faulty.devices[0]
        edge_agent.telemetry.wait_samples(
            delivered[faulty.name] + HEALTHY_SAMPLES, device=healthy, timeout=15
        )

    for faulty in buses:
        faulty.inject(False)
    for faulty in buses:  # a device backing off is retried within a few seconds here
        edge_agent.wait_health(faulty.devices[1], "ok", timeout=15)
    assert edge_agent.term() == 0  # its exit summarises what the rate limit held back
    log = edge_agent.log[start:]

    stray = [line for line in log.splitlines() if not AGENT_LINE.match(line)]
    assert not stray, "\n".join(stray)  # no traceback, no asyncio or pymodbus line
    for faulty in buses:
        good, bad = faulty.devices
        lines = faulty.lines_about(log)
        assert len(lines) <= BUDGET, f"{faulty.fault}: {len(lines)} lines:\n" + "\n".join(lines)
        assert not [line for line in lines if f"bus {faulty.name}: lost" in line], lines
        assert f"device {bad}: answering again" in log, f"{faulty.fault}:\n" + "\n".join(lines)
        assert not failures_of(good, lines), f"{faulty.fault}: the healthy slave failed"


#: On and off more often than a burst lets through.
FLAPS = BURST + 3


def test_a_flapping_slave_writes_a_burst_of_each_transition_then_one_summary(
    modbus_bus: Callable[..., ModbusBus], edge_agent: AgentRunner
) -> None:
    """The field report's bus: a slave answering with a stale transaction id, on and off. Past
    the burst, each transition is held back until its window ends (here: the agent's exit),
    however often the agent flushes its summaries meanwhile (every 0.25 s)."""
    bus = modbus_bus("tcp")
    faulty = FaultyBus("wrong_tid", bus, bus.add(1, points=[LEVEL]), bus.add(2, points=[LEVEL]))
    good, bad = faulty.devices
    edge_agent.start(HEAD + faulty.toml("tcp"), buses={faulty.name: bus})
    edge_agent.wait_sample(bad, "level", 0)
    start = len(edge_agent.log)
    for _ in range(FLAPS):
        faulty.inject(True)
        edge_agent.wait_health(bad, "failing", timeout=10)
        faulty.inject(False)
        edge_agent.wait_health(bad, "ok", timeout=10)
    assert edge_agent.term() == 0
    lines = faulty.lines_about(edge_agent.log[start:])
    shown = "\n".join(lines)

    def count(text: str, summary: bool) -> int:
        return sum(text in line and ("suppressed" in line) == summary for line in lines)

    failed, recovered = "transaction id", f"device {bad}: answering again"
    assert (count(failed, False), count(recovered, False)) == (BURST, BURST), shown
    held_back = f"({FLAPS - BURST} similar messages suppressed in the last"
    assert (count(failed, True), count(recovered, True)) == (1, 1), shown
    assert all(held_back in line for line in lines if "suppressed" in line), shown
    assert not failures_of(good, lines), shown
    assert not [line for line in lines if f"bus {faulty.name}: lost" in line], shown
