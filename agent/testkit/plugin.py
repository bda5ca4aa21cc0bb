"""edge-agent's pytest plugin: the test kit's fixtures (see README.md, "Testing your site").

Registered through the ``pytest11`` entry point ``edge_agent``: with edge-agent installed, every
pytest session can use these fixtures, and nothing of the kit runs (nor is anything heavy
imported) unless a test asks for one. ``-p no:edge_agent`` turns the plugin off.

Fixtures (all function-scoped; everything they start is stopped after the test):

* ``mosquitto``: a ``Broker``, a Mosquitto of the test's own on a free loopback port;
  ``stop()``/``start()``/``restart()`` keep its port and its sessions (outage tests).
* ``telemetry``: a ``Telemetry`` subscribed to everything on ``mosquitto``, for plain tests:
  ``wait_sample(device, point, value)``, ``wait_samples(n)``, ``wait_health(device, state)``.
* ``modbus_bus``: ``modbus_bus(kind="tcp" | "rtu" | "rtu-over-tcp")`` → a started ``ModbusBus``;
  ``bus.add(unit, template=… | points=…)`` → a ``SimSlave``; ``bus.add_devices(site, "bus")``
  serves a site configuration's devices as ``edge-agent simulate`` does.
* ``modbus_slave``: ``modbus_slave(template=…, unit=1, kind="tcp")`` → a ``SimSlave`` alone on
  a bus of its own (``slave.bus.address``).
* ``serial_sensor``: ``serial_sensor()`` → a started ``SerialSensor`` on a pseudo-terminal.
* ``simulated_bus``: ``simulated_bus(site, "meters")`` → a started ``SimulatedBus``: the
  devices of one bus of a site's configuration served by their driver's own simulation (SDI-12,
  DL/T 645, IEC 62056-21, Modbus); ``bus.device(name)`` is the driver's emulated device.
* ``edge_agent``: an ``AgentRunner``: ``edge_agent.start(config, buses={...})`` runs
  ``edge-agent run`` against ``mosquitto``.
* ``kit_loop``: the background event loop the simulators live on (a ``KitLoop``).

Async test bodies run with ``agent.testkit.run(coro, timeout)``; pytest-asyncio is not needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from agent.api import PointConfig, Value
    from agent.config import Config

    from .aio import KitLoop
    from .broker import Broker
    from .modbus import BusKind, ModbusBus, SimSlave
    from .runner import AgentRunner
    from .sensor import SerialSensor
    from .simulated import SimulatedBus
    from .telemetry import Telemetry


def _directory(tmp_path: Path, name: str) -> Path:
    """A fresh directory ``name`` (then ``name-2``, …) under the test's ``tmp_path``."""
    candidate, n = tmp_path / name, 1
    while candidate.exists():
        n += 1
        candidate = tmp_path / f"{name}-{n}"
    candidate.mkdir(parents=True)
    return candidate


@pytest.fixture
def kit_loop() -> Iterator[KitLoop]:
    """The event loop (in a thread of its own) the kit's simulators and subscribers run on."""
    from .aio import KitLoop

    loop = KitLoop().start()
    yield loop
    loop.close()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto broker of the test's own on a free loopback port (``url``, ``host``,
    ``port``). ``stop()``, ``start()`` and ``restart()`` keep the port and the persistent
    sessions, as a production broker's restart does. Needs ``mosquitto`` installed."""
    from .broker import Broker

    broker = Broker(_directory(tmp_path, "mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def telemetry(kit_loop: KitLoop, mosquitto: Broker) -> Iterator[Telemetry]:
    """Everything published on ``mosquitto`` (subscribed to ``#`` with a persistent session that
    reconnects after an outage): ``samples()``, ``wait_sample(device, point, value, timeout=)``,
    ``wait_samples(count)``, ``health()``, ``wait_health(device, state)``."""
    from .telemetry import Telemetry

    subscriber = Telemetry(kit_loop, mosquitto.host, mosquitto.port).start()
    yield subscriber
    subscriber.stop()


@pytest.fixture
def modbus_bus(kit_loop: KitLoop, tmp_path: Path) -> Iterator[Callable[..., ModbusBus]]:
    """``modbus_bus(kind="tcp", name="ttyRS485")``: a started simulated Modbus bus.

    ``kind`` is ``"tcp"`` (Modbus TCP on a free loopback port), ``"rtu-over-tcp"`` or ``"rtu"``
    (RTU frames on a pseudo-terminal pair through a proxy that can spoil answers; the agent's
    bus ``port`` is ``bus.address``, a link named ``name`` in the test's directory). Add slaves
    with ``bus.add(unit, template="eastron-sdm120")`` or ``bus.add(unit, points=[...])``, or a
    site's own with ``bus.add_devices("site.toml", "rs485")``. Slave faults are ``SimSlave``
    attributes (see ``modbus_slave``). Wire faults (RTU): ``bus.corrupt("crc" | "unit" |
    "truncate" | "drop", count)`` spoils the next ``count`` answers of any slave,
    ``slave.corrupt = "crc"`` every answer of one (``None`` to stop).
    """
    from .modbus import ModbusBus

    buses: list[ModbusBus] = []

    def make(kind: BusKind = "tcp", name: str = "ttyRS485") -> ModbusBus:
        bus = ModbusBus(kit_loop, _directory(tmp_path, "modbus"), kind, name)
        buses.append(bus)
        return bus.start()

    yield make
    for bus in reversed(buses):
        bus.stop()


@pytest.fixture
def modbus_slave(modbus_bus: Callable[..., ModbusBus]) -> Callable[..., SimSlave]:
    """``modbus_slave(template=None, points=(), unit=1, kind="tcp")``: one simulated slave on a
    bus of its own (``slave.bus.address``). ``slave.set(point, value)``, ``slave.get(point)``;
    faults (set them back to ``False``/``0``/``None`` to clear): ``slave.dead = True`` (no
    answer), ``slave.slow_ms = 800`` (answers late), ``slave.exception = 2`` (a Modbus exception),
    ``slave.wrong_tid = True`` (``kind="tcp"`` only: the previous request's transaction id),
    ``slave.garbage = True`` (a well-framed answer that does not parse), ``slave.noise = True``
    (random bytes), ``slave.drip_ms = 50`` (a byte at a time, 50 ms apart), with the random bytes
    from ``slave.random`` (assign a ``random.Random(seed)``); on RTU ``slave.corrupt = "crc" |
    "unit" | "truncate" | "drop"`` (every answer) or ``slave.bus.corrupt("crc", count)`` (the
    next few of any slave). ``slave.requests`` counts the requests it answered."""

    def make(
        template: str | None = None,
        points: Sequence[PointConfig] = (),
        unit: int = 1,
        kind: BusKind = "tcp",
    ) -> SimSlave:
        return modbus_bus(kind).add(unit, template, points)

    return make


@pytest.fixture
def serial_sensor(kit_loop: KitLoop, tmp_path: Path) -> Iterator[Callable[..., SerialSensor]]:
    """``serial_sensor(name="ttySENSOR", terminator="\\r\\n")``: a started scripted sensor on
    a pseudo-terminal (the agent's serial bus ``port`` is ``sensor.path``).
    ``sensor.answer("R\\r", "T=21.5 H=40")``, ``sensor.every(1.0, "line", …)``,
    ``sensor.print("line")``, ``sensor.silent = True``; ``sensor.commands`` counts commands."""
    from .sensor import SerialSensor

    sensors: list[SerialSensor] = []

    def make(name: str = "ttySENSOR", terminator: str = "\r\n") -> SerialSensor:
        sensor = SerialSensor(kit_loop, _directory(tmp_path, "serial"), name, terminator)
        sensors.append(sensor)
        return sensor.start()

    yield make
    for sensor in reversed(sensors):
        sensor.stop()


@pytest.fixture
def simulated_bus(kit_loop: KitLoop, tmp_path: Path) -> Iterator[Callable[..., SimulatedBus]]:
    """``simulated_bus(config, "meters", values=None)``: the devices a site's configuration
    (TOML text, a file or a loaded ``Config``) puts on one bus, started and served by their
    driver's own simulation, as ``edge-agent simulate`` serves them: SDI-12 sensors, DL/T 645
    and IEC 62056-21 meters on a pseudo-terminal, Modbus slaves on a loopback port. Point the
    agent at ``bus.address`` (``edge_agent.start(…, buses={"meters": bus})``);
    ``bus.device(name)`` is the driver's emulated device, for its values and faults."""
    from .simulated import SimulatedBus

    buses: list[SimulatedBus] = []

    def make(
        config: Config | Path | str,
        bus_name: str,
        values: Mapping[str, Mapping[str, Value]] | None = None,
    ) -> SimulatedBus:
        if isinstance(config, str) and "\n" in config:  # TOML text, not a path
            path = _directory(tmp_path, "simulated") / f"{bus_name}.toml"
            path.write_text(config, encoding="utf-8")
            config = path
        bus = SimulatedBus(kit_loop, config, bus_name, values)
        buses.append(bus)
        return bus.start()

    yield make
    for bus in reversed(buses):
        bus.stop()


@pytest.fixture
def edge_agent(kit_loop: KitLoop, mosquitto: Broker, tmp_path: Path) -> Iterator[AgentRunner]:
    """Runs ``edge-agent run`` against ``mosquitto``:
    ``edge_agent.start(config, buses={"rs485": bus, "wx": sensor}, overrides=…, env=…)`` with
    ``config`` as TOML text, a file or a dict; each bus named in ``buses`` is pointed at its
    simulation, the data dir is the test's own. Then ``hup()``, ``term()``, ``kill()``, ``log``,
    ``wait_log(regex)``, ``status()``, ``wait_sample(device, point, value)``,
    ``wait_health(device, "failing")``, ``telemetry``. The agent is stopped after the test."""
    from .runner import AgentRunner

    runner = AgentRunner(kit_loop, _directory(tmp_path, "agent"), mosquitto)
    yield runner
    runner.stop()
