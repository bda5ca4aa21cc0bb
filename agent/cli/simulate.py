"""``edge-agent simulate``: serve the configured devices as simulated ones, bus by bus, through
each bus driver's ``Simulates`` ability (Modbus serves a slave per device).

One line per bus says where to point the agent. By default each bus is served on its own
address; ``--tcp HOST:PORT`` serves the first bus on PORT, the next on PORT+1, and so on (two
buses may both have a unit 1, so they cannot share a port); ``--pty`` serves each on a fresh
pseudo-terminal, which lives until the simulator stops. A plain ``serial`` bus (SDI-12 sensors)
is always served on a pseudo-terminal: its devices speak to a local port.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from .. import registry
from ..api import SERIAL_BUS, BusConfig, DeviceConfig, SimulateAt, Simulates
from ..config import Config
from ..errors import AgentError, DriverError
from .tools import UsageError


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port); ``ValueError`` says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'"{text}" is not HOST:PORT, e.g. 127.0.0.1:5020')
    return host.strip("[]"), int(port)


def simulated_buses(config: Config) -> list[tuple[BusConfig, type[Simulates]]]:
    """The buses there is something to simulate on: those whose driver simulates."""
    found: list[tuple[BusConfig, type[Simulates]]] = []
    for bus in config.buses:
        name = registry.bus_driver(bus, config.devices)
        driver = registry.load_driver(name) if name else None
        if isinstance(driver, Simulates):
            found.append((bus, driver))
    return found


def plan(config: Config, tcp: str | None) -> list[tuple[str, int, list[DeviceConfig]]]:
    """Which devices to serve on which TCP address: the buses a network can carry (a plain
    ``serial`` bus's devices speak to a local port: they are served on a pseudo-terminal)."""
    buses = [bus for bus, _ in simulated_buses(config) if bus.type != SERIAL_BUS.name]
    addresses = [(bus.host, bus.port) for bus in buses]
    if tcp:
        host, port = parse_address(tcp)
        addresses = [(host, port + i) for i in range(len(buses))]
    return [
        (host, port, config.devices_on(bus.name))
        for bus, (host, port) in zip(buses, addresses, strict=True)
    ]


def _places(config: Config, tcp: str | None, pty: bool) -> list[SimulateAt]:
    """Where each simulated bus is served: on a pseudo-terminal with ``pty`` (and a plain
    serial bus always), else on its own address or, with ``tcp``, on the next port of it."""
    tcp_addresses = iter(plan(config, tcp)) if tcp else None
    places = []
    for bus, _ in simulated_buses(config):
        if pty or bus.type == SERIAL_BUS.name:
            places.append(SimulateAt(pty=True))
        elif tcp_addresses is not None:
            host, port, _ = next(tcp_addresses)
            places.append(SimulateAt(host, port))
        else:
            places.append(SimulateAt())
    return places


async def serve(
    config: Config,
    tcp: str | None,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    *,
    pty: bool = False,
) -> None:
    """Serve until ``stop`` is set; ``ready`` is set once every simulator listens."""
    try:
        places = _places(config, tcp, pty)
    except ValueError as exc:
        raise AgentError(f"simulate: {exc}") from None
    async with contextlib.AsyncExitStack() as stack:
        for (bus, driver), at in zip(simulated_buses(config), places, strict=True):
            devices = config.devices_on(bus.name)
            try:
                simulation = driver.simulation(bus, at)
                for device in devices:
                    simulation.add(device)
                await stack.enter_async_context(simulation)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            except DriverError as exc:
                raise AgentError(f"simulate: {exc}") from None
            print(f"bus {bus.name}: {simulation.served.line}", flush=True)
        if ready:
            ready.set()
        await stop.wait()


def serve_simulation(config: Config, tcp: str | None, pty: bool = False) -> int:
    """Run the simulators until SIGTERM or Ctrl-C."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, tcp, stop, pty=pty)

    asyncio.run(main())
    return 0
