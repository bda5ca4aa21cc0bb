"""``edge-agent simulate``: serve the configured Modbus devices as simulated slaves.

Each ``modbus-tcp`` bus is served on its own host and port, with one slave per device (its unit id,
its points, values that move over time). ``--tcp HOST:PORT`` serves them on a laptop with no
hardware instead: the first bus on PORT, the next on PORT+1, and so on (two buses may both have a
unit 1, so they cannot share a port).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from drivers.modbus.simulator import ModbusSimulator, slaves_for_bus

from .config import Config, DeviceConfig
from .errors import AgentError

log = logging.getLogger(__name__)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port); ``ValueError`` says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'"{text}" is not HOST:PORT, e.g. 127.0.0.1:5020')
    return host.strip("[]"), int(port)


def plan(config: Config, tcp: str | None) -> list[tuple[str, int, list[DeviceConfig]]]:
    """Which devices to serve on which address."""
    addresses = [(bus.host, bus.port) for bus in config.buses]
    if tcp:
        host, port = parse_address(tcp)
        addresses = [(host, port + i) for i in range(len(config.buses))]
    return [
        (host, port, [d for d in config.devices if d.bus == bus.name])
        for bus, (host, port) in zip(config.buses, addresses, strict=True)
    ]


async def serve(
    config: Config, tcp: str | None, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    """Serve until ``stop`` is set; ``ready`` is set once every simulator listens."""
    try:
        servers = [
            ModbusSimulator(slaves_for_bus(devices), host, port, animate=True)
            for host, port, devices in plan(config, tcp)
        ]
    except ValueError as exc:
        raise AgentError(f"simulate: {exc}") from None
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:
            try:
                await stack.enter_async_context(server)
            except OSError as exc:
                reason = exc.__cause__ or exc
                raise AgentError(
                    f"simulate: cannot listen on {server.host}:{server.port} ({reason}); "
                    "is another simulator running? pick another with --tcp HOST:PORT"
                ) from None
            units = ", ".join(f"{s.unit}" for s in server.slaves.values())
            print(f"simulating unit(s) {units} on {server.host}:{server.port}", flush=True)
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
        await serve(config, tcp, stop)

    asyncio.run(main())
    return 0
