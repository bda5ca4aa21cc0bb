"""``edge-agent simulate``: serve the configured Modbus devices as simulated slaves.

Each bus is served with one slave per device (its unit id, its points, values that move over time),
and one line per bus says where to point the agent:

* by default on the bus's own address: a ``modbus-tcp`` bus as Modbus TCP on its host and port, a
  ``modbus-rtu-over-tcp`` bus with RTU frames there. A ``modbus-rtu`` bus's port is the real serial
  port the agent uses, so such a bus needs ``--pty`` or ``--tcp``;
* ``--tcp HOST:PORT`` serves them on a laptop with no hardware: the first bus on PORT, the next on
  PORT+1, and so on (two buses may both have a unit 1, so they cannot share a port); RTU buses get
  RTU frames over TCP;
* ``--pty`` serves each bus with RTU frames on a fresh pseudo-terminal, for a ``modbus-rtu`` bus
  pointed at the printed path; it lives until the simulator stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from drivers.modbus.simulator import ModbusSimulator, PtyLink, slaves_for_bus

from .config import BusConfig, Config, DeviceConfig
from .driver import BUS_DRIVERS
from .errors import AgentError
from .tools import UsageError

log = logging.getLogger(__name__)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port); ``ValueError`` says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'"{text}" is not HOST:PORT, e.g. 127.0.0.1:5020')
    return host.strip("[]"), int(port)


def modbus_buses(config: Config) -> list[BusConfig]:
    """The buses there is something to simulate on: the Modbus ones."""
    return [bus for bus in config.buses if BUS_DRIVERS.get(bus.type) == "modbus"]


def plan(config: Config, tcp: str | None) -> list[tuple[str, int, list[DeviceConfig]]]:
    """Which devices to serve on which address."""
    buses = modbus_buses(config)
    addresses = [(bus.host, bus.port) for bus in buses]
    if tcp:
        host, port = parse_address(tcp)
        addresses = [(host, port + i) for i in range(len(buses))]
    return [
        (host, port, config.devices_on(bus.name))
        for bus, (host, port) in zip(buses, addresses, strict=True)
    ]


async def serve(
    config: Config,
    tcp: str | None,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    *,
    pty: bool = False,
) -> None:
    """Serve until ``stop`` is set; ``ready`` is set once every simulator listens."""
    _refuse_real_serial_ports(config, tcp, pty)
    try:
        servers = [
            (bus, _simulator(bus, devices, host, port, pty))
            for bus, (host, port, devices) in zip(
                modbus_buses(config), plan(config, tcp), strict=True
            )
        ]
    except ValueError as exc:
        raise AgentError(f"simulate: {exc}") from None
    async with contextlib.AsyncExitStack() as stack:
        for bus, server in servers:
            kind, where = await _serve_bus(stack, bus, server, pty)
            print(f"bus {bus.name}: point a {kind} bus at {where}", flush=True)
        if ready:
            ready.set()
        await stop.wait()


def _refuse_real_serial_ports(config: Config, tcp: str | None, pty: bool) -> None:
    """A modbus-rtu bus's port is the agent's real serial port: never serve on it."""
    for bus in modbus_buses(config):
        if bus.serial and not (tcp or pty):
            raise UsageError(
                f"bus {bus.name} is a modbus-rtu bus on the real serial port {bus.serial_port}: "
                "simulate it on a pseudo-terminal with --pty, or with --tcp HOST:PORT"
            )


def _simulator(
    bus: BusConfig, devices: list[DeviceConfig], host: str, port: int, pty: bool
) -> ModbusSimulator:
    return ModbusSimulator(
        slaves_for_bus(devices),
        host,
        port,
        animate=True,
        rtu=pty or bus.type != "modbus-tcp",
        baudrate=bus.baudrate,
        parity=bus.parity,
        stopbits=bus.stopbits,
        bytesize=bus.bytesize,
    )


async def _serve_bus(
    stack: contextlib.AsyncExitStack, bus: BusConfig, server: ModbusSimulator, pty: bool
) -> tuple[str, str]:
    """Start serving one bus: the bus type and the address the agent should use."""
    if not pty:
        await _start(stack, bus, server)
        kind = "modbus-tcp" if bus.type == "modbus-tcp" else "modbus-rtu-over-tcp"
        return kind, server.address
    link = await stack.enter_async_context(PtyLink())
    server.serial_port = link.paths[1]
    await _start(stack, bus, server)
    return "modbus-rtu", link.paths[0]


async def _start(stack: contextlib.AsyncExitStack, bus: BusConfig, server: ModbusSimulator) -> None:
    try:
        await stack.enter_async_context(server)
    except OSError as exc:
        reason = exc.__cause__ or exc
        if server.serial_port:
            raise AgentError(
                f"simulate: bus {bus.name}: cannot serve on {server.serial_port} ({reason})"
            ) from None
        raise AgentError(
            f"simulate: cannot listen on {server.host}:{server.port} ({reason}); "
            "is another simulator running? pick another with --tcp HOST:PORT"
        ) from None


def serve_simulation(config: Config, tcp: str | None, pty: bool = False) -> int:
    """Run the simulators until SIGTERM or Ctrl-C."""
    _refuse_real_serial_ports(config, tcp, pty)  # before anything starts

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, tcp, stop, pty=pty)

    asyncio.run(main())
    return 0
