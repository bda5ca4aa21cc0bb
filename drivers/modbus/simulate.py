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
from dataclasses import replace

from agent.api import BusConfig, BusError, DeviceConfig, SimulateAt, Simulated
from agent.api.pty import PtyLink

from .simulator import ModbusSimulator, SimulatedSlave, slaves_for_bus


@contextlib.asynccontextmanager
async def simulate_bus(
    bus: BusConfig, devices: Sequence[DeviceConfig], at: SimulateAt
) -> AsyncIterator[Simulated]:
    """Serve ``devices`` while entered; yields where to point the agent."""
    if bus.serial and at.host is None and not at.pty:
        raise ValueError(
            f"bus {bus.name} is a modbus-rtu bus on the real serial port {bus.serial_port}: "
            "simulate it on a pseudo-terminal with --pty, or with --tcp HOST:PORT"
        )
    server = ModbusSimulator(
        _slaves(devices, at),
        bus.host if at.host is None else at.host,
        bus.port if at.port is None else at.port,
        animate=at.values is None,
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
            path = link.paths[0]
            served = replace(bus, type="modbus-rtu", serial_port=path, host="")
            yield Simulated(served, f"point a modbus-rtu bus at {path}")
            return
        await _start(stack, bus, server)
        kind = "modbus-tcp" if bus.type == "modbus-tcp" else "modbus-rtu-over-tcp"
        served = replace(bus, type=kind, host=server.host, port=server.port, serial_port="")
        yield Simulated(served, f"point a {kind} bus at {server.address}")


def _slaves(devices: Sequence[DeviceConfig], at: SimulateAt) -> list[SimulatedSlave]:
    """A slave per device, holding ``at.values`` where given (the rest at the animation's
    start)."""
    slaves = slaves_for_bus(devices)
    for device, slave in zip(devices, slaves, strict=True):
        for point, value in (at.values or {}).get(device.name, {}).items():
            slave.set_value(point, value)
    return slaves


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
