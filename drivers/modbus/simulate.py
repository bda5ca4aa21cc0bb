"""``edge-agent simulate`` for Modbus buses: one simulated slave per device (its unit id, its
points, values that move over time), served

* at the bus's own address: a ``modbus-tcp`` bus as Modbus TCP on its host and port, a
  ``modbus-rtu-over-tcp`` bus with RTU frames there. A ``modbus-rtu`` bus's port is the real
  serial port the agent uses, so such a bus needs a TCP address or a pseudo-terminal;
* at a TCP address (a laptop with no hardware); RTU buses get RTU frames over TCP;
* on a fresh pseudo-terminal, with RTU frames, for a ``modbus-rtu`` bus pointed at the printed
  path; it lives while the simulation does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from agent.api import BusConfig, BusError, DeviceConfig, SimulateAt

from .simulator import ModbusSimulator, PtyLink, slaves_for_bus


@contextlib.asynccontextmanager
async def simulate_bus(
    bus: BusConfig, devices: Sequence[DeviceConfig], at: SimulateAt
) -> AsyncIterator[str]:
    """Serve ``devices`` while entered; yields where to point the agent."""
    if bus.serial and at.host is None and not at.pty:
        raise ValueError(
            f"bus {bus.name} is a modbus-rtu bus on the real serial port {bus.serial_port}: "
            "simulate it on a pseudo-terminal with --pty, or with --tcp HOST:PORT"
        )
    host = bus.host if at.host is None else at.host
    port = bus.port if at.port is None else at.port
    server = ModbusSimulator(
        slaves_for_bus(devices),
        host,
        port,
        animate=True,
        rtu=at.pty or bus.type != "modbus-tcp",
        baudrate=bus.baudrate,
        parity=bus.parity,
        stopbits=bus.stopbits,
        bytesize=bus.bytesize,
    )
    async with contextlib.AsyncExitStack() as stack:
        if at.pty:
            link = await stack.enter_async_context(PtyLink())
            server.serial_port = link.paths[1]
            await _start(stack, bus, server)
            yield f"point a modbus-rtu bus at {link.paths[0]}"
            return
        await _start(stack, bus, server)
        kind = "modbus-tcp" if bus.type == "modbus-tcp" else "modbus-rtu-over-tcp"
        yield f"point a {kind} bus at {server.address}"


async def _start(stack: contextlib.AsyncExitStack, bus: BusConfig, server: ModbusSimulator) -> None:
    try:
        await stack.enter_async_context(server)
    except OSError as exc:
        reason = exc.__cause__ or exc
        if server.serial_port:
            raise BusError(
                f"bus {bus.name}: cannot serve on {server.serial_port} ({reason})"
            ) from None
        raise BusError(
            f"cannot listen on {server.host}:{server.port} ({reason}); "
            "is another simulator running? pick another with --tcp HOST:PORT"
        ) from None
