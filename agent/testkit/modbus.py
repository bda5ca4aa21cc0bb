"""Simulated Modbus buses for tests: the Modbus driver's simulation (its ``Simulates`` ability,
the one behind ``edge-agent simulate``) served on the kit's loop, with slaves built from a
built-in template, a list of points, or the devices of a site configuration, and faults to
inject.

On every kind of bus a slave can be dead, slow, answer with an exception code, answer garbage
(a well-framed answer that does not parse, or plain noise) or drip its answer a byte at a time;
on Modbus TCP (``kind="tcp"``) it can also answer with a stale transaction id. Over RTU
(``kind="rtu"``) the slaves sit behind a ``SerialProxy`` on a pseudo-terminal pair, which can also
spoil answers on the wire: a corrupt CRC, a truncated frame, a frame from the wrong unit id, a
lost answer (``ModbusBus.corrupt`` for the next answers of any slave, ``SimSlave.corrupt`` for
all of one). Modbus TCP has no CRC, and its unit id is echoed by the server: those faults are
RTU-only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from random import Random
from typing import Literal, Protocol, cast

from agent import registry
from agent.api import BusConfig, DeviceConfig, PointConfig, SimulateAt, Simulates, Simulation
from agent.config import load_config
from agent.config.loader import builtin_templates
from agent.model import Value

from .aio import KitLoop
from .net import free_port
from .serial import FAULTS, Fault, SerialProxy

BusKind = Literal["tcp", "rtu", "rtu-over-tcp"]
#: The driver whose simulation serves the bus.
MODBUS = "modbus"
#: The bus type each kind of bus is simulated as.
BUS_TYPES: dict[str, str] = {
    "tcp": "modbus-tcp",
    "rtu": "modbus-rtu",
    "rtu-over-tcp": "modbus-rtu-over-tcp",
}


class SimulatedSlave(Protocol):
    """What the Modbus simulation's handle of a slave offers (``Simulation.add``'s result)."""

    unit: int
    points: Mapping[str, PointConfig]
    dead: bool
    slow: float
    exception: int | None
    wrong_tid: bool
    garbage: bool
    noise: bool
    drip: float
    random: Random
    requests: int

    def set_value(self, name: str, value: Value) -> None: ...

    def value(self, name: str) -> Value: ...

    def animate(self, t: float) -> None: ...


_RTU_ONLY = (
    "{fault!r} faults are spoilt RTU frames: use a bus of kind 'rtu' "
    "(Modbus TCP has no CRC, and the server echoes the unit id)"
)


def template_points(name: str) -> tuple[PointConfig, ...]:
    """The points of the built-in template ``name`` (``edge-agent templates`` lists them)."""
    templates = {t.name: t for t in builtin_templates()}
    try:
        return templates[name].points
    except KeyError:
        known = ", ".join(sorted(templates))
        raise KeyError(f"no built-in template {name!r}; there are: {known}") from None


class SimSlave:
    """One simulated slave (unit id) on a ``ModbusBus``; its attributes may be set from the test.

    ``set(point, value)`` makes polls of the point read ``value`` (encoded as the point says:
    type, byte order, scale); ``get(point)`` is what a poll reads now. Faults: ``dead = True``
    (no answer at all: the agent times out), ``slow_ms = N`` (answers N ms late),
    ``exception = CODE`` (every request answered with that Modbus exception; ``None`` to stop),
    and the faults of an answer on the wire: ``wrong_tid = True`` (Modbus TCP, kind ``"tcp"``,
    only: the answer carries the previous request's transaction id, as a stale answer does),
    ``garbage = True`` (a well-framed answer whose PDU is random bytes: it does not parse),
    ``noise = True`` (the whole answer random bytes), ``drip_ms = N`` (the answer sent a byte at a
    time, N ms apart: it arrives partly after the agent's timeout, or barely within it). The
    random bytes come from ``random``, a ``random.Random`` seeded by the unit id: assign one of
    the test's own (``slave.random = random.Random(7)``) for other garbage, as reproducible.
    On an RTU line (kind ``"rtu"``) ``corrupt = "crc" | "unit" | "truncate" | "drop"`` spoils
    every answer of this slave on the wire, as ``ModbusBus.corrupt`` does the next few of any
    (``None`` to stop). ``requests`` counts the requests it answered (spoilt answers too).
    """

    def __init__(self, bus: ModbusBus, slave: SimulatedSlave) -> None:
        self.bus = bus
        self.simulated = slave

    def __repr__(self) -> str:
        return f"SimSlave(unit={self.unit}, bus={self.bus.address!r})"

    @property
    def unit(self) -> int:
        return self.simulated.unit

    @property
    def points(self) -> Mapping[str, PointConfig]:
        return self.simulated.points

    def set(self, point: str, value: Value) -> None:
        """Written on the bus's loop, so that no poll reads a value half written; ``ValueError``
        if ``value`` does not fit the point."""
        self.bus.run_soon(self.simulated.set_value, point, value)

    def get(self, point: str) -> Value:
        return self.simulated.value(point)

    @property
    def dead(self) -> bool:
        return self.simulated.dead

    @dead.setter
    def dead(self, dead: bool) -> None:
        self.simulated.dead = dead

    @property
    def slow_ms(self) -> float:
        return self.simulated.slow * 1000

    @slow_ms.setter
    def slow_ms(self, delay: float) -> None:
        self.simulated.slow = delay / 1000

    @property
    def exception(self) -> int | None:
        return self.simulated.exception

    @exception.setter
    def exception(self, code: int | None) -> None:
        self.simulated.exception = code

    @property
    def wrong_tid(self) -> bool:
        return self.simulated.wrong_tid

    @wrong_tid.setter
    def wrong_tid(self, wrong: bool) -> None:
        if wrong and self.bus.kind != "tcp":
            raise NotImplementedError(
                "transaction ids are Modbus TCP's (MBAP): RTU frames, over TCP or not, have none"
            )
        self.simulated.wrong_tid = wrong

    @property
    def garbage(self) -> bool:
        return self.simulated.garbage

    @garbage.setter
    def garbage(self, garbage: bool) -> None:
        self.simulated.garbage = garbage

    @property
    def noise(self) -> bool:
        return self.simulated.noise

    @noise.setter
    def noise(self, noise: bool) -> None:
        self.simulated.noise = noise

    @property
    def drip_ms(self) -> float:
        return self.simulated.drip * 1000

    @drip_ms.setter
    def drip_ms(self, gap: float) -> None:
        self.simulated.drip = gap / 1000

    @property
    def random(self) -> Random:
        return self.simulated.random

    @random.setter
    def random(self, generator: Random) -> None:
        self.simulated.random = generator

    @property
    def corrupt(self) -> Fault | None:
        proxy = self.bus.proxy
        return proxy.unit_faults.get(self.unit) if proxy is not None else None

    @corrupt.setter
    def corrupt(self, fault: Fault | None) -> None:
        proxy = self.bus.proxy
        if fault is None:
            if proxy is not None:
                self.bus.run_soon(proxy.unit_faults.pop, self.unit, None)
            return
        if proxy is None:
            raise NotImplementedError(_RTU_ONLY.format(fault=fault))
        if fault not in FAULTS:
            raise ValueError(f"corrupt must be one of {', '.join(FAULTS)} or None, not {fault!r}")
        self.bus.run_soon(proxy.unit_faults.__setitem__, self.unit, fault)

    @property
    def requests(self) -> int:
        return self.simulated.requests


class ModbusBus:
    """Simulated slaves on one bus, served while the bus is started (the fixtures start it).

    ``address`` is what the agent's ``[[bus]]`` points at: a pseudo-terminal path for ``rtu``
    (its ``port``), ``HOST:PORT`` for the TCP kinds. Slaves may be added before or after the start.
    """

    def __init__(
        self, kit: KitLoop, directory: Path, kind: BusKind = "tcp", name: str = "ttyRS485"
    ) -> None:
        if kind not in ("tcp", "rtu", "rtu-over-tcp"):
            raise ValueError(f"kind must be tcp, rtu or rtu-over-tcp, not {kind!r}")
        self.kit = kit
        self.kind = kind
        self.directory = directory
        self.name = name
        driver = registry.load_driver(MODBUS)
        assert isinstance(driver, Simulates), "the modbus driver simulates"
        #: The slaves' end of an RTU line, behind the proxy (a link to its pseudo-terminal).
        self._slaves_end: Path = directory / f"{name}.slaves"
        self._bus: BusConfig = BusConfig(name, BUS_TYPES[kind], host="127.0.0.1", port=0)
        at = SimulateAt(
            host=None if kind == "rtu" else "127.0.0.1",
            # Below the range outgoing connections take, and the same one after a restart.
            port=0 if kind == "rtu" else free_port(),
            serial_port=str(self._slaves_end) if kind == "rtu" else None,
            values={},  # held: each slave's values start at zero, and move only when set
        )
        self.simulation: Simulation = driver.simulation(self._bus, at)
        self.proxy: SerialProxy | None = None
        self.slaves: dict[int, SimSlave] = {}
        self._stack: AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"ModbusBus({self.kind}, {self.address!r}, units={sorted(self.slaves)})"

    @property
    def address(self) -> str:
        """The RTU port's path (a link in the test's directory), or ``HOST:PORT``."""
        if self._stack is None:
            raise RuntimeError("the bus is not started")
        if self.proxy is not None:
            return str(self.proxy.agent_path)
        served = self.simulation.served.bus
        return f"{served.host}:{served.port}"

    @property
    def host(self) -> str:
        return self._bus.host

    @property
    def port(self) -> int:
        """The TCP port (TCP kinds only)."""
        if self.kind == "rtu":
            raise AttributeError("an RTU bus has no TCP port: use .address (the serial port path)")
        return self.simulation.served.bus.port

    def add(
        self,
        unit: int = 1,
        template: str | None = None,
        points: Sequence[PointConfig] = (),
    ) -> SimSlave:
        """A slave with unit id ``unit`` answering for the points of the built-in ``template``
        and/or ``points``. Its values start at zero (an empty string for strings)."""
        chosen = (*(template_points(template) if template else ()), *points)
        if not chosen:
            raise ValueError("a slave needs a template or points")
        return self._attach(
            DeviceConfig(f"unit-{unit}", self.name, MODBUS, 1.0, unit, None, chosen)
        )

    def add_devices(
        self, config: Path | str, bus: str, environ: Mapping[str, str] | None = None
    ) -> dict[str, SimSlave]:
        """A slave for each device of bus ``bus`` in the site configuration ``config`` (a file),
        with its unit id and points (templates resolved), as ``edge-agent simulate`` serves them:
        ``{device name: slave}``. Values start as the simulator's animation has them at t=0."""
        loaded, _ = load_config(Path(config), {**os.environ, **(environ or {})})
        devices = loaded.devices_on(bus)
        if not devices:
            buses = ", ".join(b.name for b in loaded.buses)
            raise KeyError(f"{config}: no device on a bus {bus!r} (buses: {buses})")
        attached = {d.name: self._attach(d) for d in devices}
        for handle in attached.values():
            handle.simulated.animate(0.0)
        return attached

    def _attach(self, device: DeviceConfig) -> SimSlave:
        if device.unit in self.slaves:
            raise ValueError(f"the bus has a slave with unit id {device.unit} already")
        # Added while serving, a slave answers at once.
        slave = cast(SimulatedSlave, self.simulation.add(device))
        handle = self.slaves[slave.unit] = SimSlave(self, slave)
        return handle

    def run_soon(self, function: Callable[..., object], *args: object) -> None:
        """``function(*args)`` on the loop the bus is served on, waited for."""
        if self._stack is None:
            function(*args)  # not serving: nobody reads meanwhile
        else:
            self.kit.call(_call(function, *args))

    def slave(self, unit: int) -> SimSlave:
        return self.slaves[unit]

    def corrupt(self, fault: Fault, count: int = 1) -> None:
        """Spoil the next ``count`` answers on the wire (RTU only): ``"crc"`` (a bad CRC),
        ``"unit"`` (from the next unit id, good CRC), ``"truncate"``, ``"drop"`` (lost)."""
        if self.proxy is None:
            raise NotImplementedError(_RTU_ONLY.format(fault=fault))
        self.run_soon(self.proxy.corrupt, fault, count)

    @property
    def faults_pending(self) -> int:
        return self.proxy.faults_pending if self.proxy is not None else 0

    def unplug(self) -> None:
        """RTU: the adapter goes (the agent's open port fails, its path disappears)."""
        if self.proxy is None:
            raise NotImplementedError("only an RTU bus has an adapter to unplug")
        self.kit.call(_call(self.proxy.unplug))

    def replug(self) -> None:
        if self.proxy is None:
            raise NotImplementedError("only an RTU bus has an adapter to replug")
        self.kit.call(_call(self.proxy.replug))

    def start(self) -> ModbusBus:
        if self._stack is None:
            self.kit.call(self._start())
        return self

    def stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            self.kit.call(stack.aclose())

    async def _start(self) -> None:
        stack = AsyncExitStack()
        try:
            if self.kind == "rtu":
                proxy = SerialProxy(self.directory, self.name, slaves_link=self._slaves_end)
                self.proxy = await stack.enter_async_context(proxy)
            await stack.enter_async_context(self.simulation)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack


async def _call(function: Callable[..., object], *args: object) -> None:
    function(*args)
