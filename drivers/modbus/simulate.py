"""Modbus buses simulated (``edge-agent simulate``, golden cases, the test kit): a simulated
slave per device (its unit id, its points), served

* at the bus's own address: a ``modbus-tcp`` bus as Modbus TCP on its host and port, a
  ``modbus-rtu-over-tcp`` bus with RTU frames there. A ``modbus-rtu`` bus's port is the real
  serial port the agent uses, so such a bus needs a TCP address or a pseudo-terminal;
* at a TCP address (a laptop with no hardware); RTU buses get RTU frames over TCP;
* on a fresh pseudo-terminal, with RTU frames, for a ``modbus-rtu`` bus pointed at its path;
* on a serial port whose other end the caller holds (the test kit's fault proxy).

Values move over time (the simulator's animation), or are held as ``SimulateAt.values`` says.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from agent.api import BusConfig, BusError, DeviceConfig, ServedSimulation, SimulateAt, Simulated
from agent.api.pty import PtyLink

from .schema import modbus_points
from .simulator import ModbusSimulator, SimulatedSlave, animate_slave
from .sunspec_points import simulated_map, sunspec_points


class ModbusSimulation(ServedSimulation):
    """The slaves of one bus (``simulator.slaves``, by unit id), served while entered."""

    def __init__(self, bus: BusConfig, at: SimulateAt) -> None:
        if bus.serial and at.host is None and not (at.pty or at.serial_port):
            raise ValueError(
                f"bus {bus.name} is a modbus-rtu bus on the real serial port {bus.serial_port}: "
                "simulate it on a pseudo-terminal with --pty, or with --tcp HOST:PORT"
            )
        super().__init__(bus)
        self.at = at
        self.simulator = ModbusSimulator(
            [],
            bus.host if at.host is None else at.host,
            bus.port if at.port is None else at.port,
            animate=at.values is None,
            rtu=at.pty or bool(at.serial_port) or bus.type != "modbus-tcp",
            serial_port=at.serial_port or "",
            baudrate=bus.baudrate,
            parity=bus.parity,
            stopbits=bus.stopbits,
            bytesize=bus.bytesize,
        )

    def add(self, device: DeviceConfig) -> SimulatedSlave:
        """The device's slave: its values at the animation's start, or held as ``at.values``
        says (the rest at zero). The server looks slaves up in the dict it is added to: one
        added while serving answers at once."""
        slave = _slave(device)
        if self.at.values is None:
            animate_slave(slave, 0.0, include_writable=True)
        for point, value in self.at.values.get(device.name, {}).items() if self.at.values else ():
            slave.set_value(point, value)
        if slave.unit in self.simulator.slaves:
            raise ValueError(f"two simulated slaves have unit id {slave.unit}")
        self.simulator.slaves[slave.unit] = slave
        return slave

    async def serve(self, stack: contextlib.AsyncExitStack) -> Simulated:
        bus, server = self.bus, self.simulator
        if self.at.pty:
            link = await stack.enter_async_context(PtyLink())
            server.serial_port = link.paths[1]
            await self._start(stack)
            path = link.paths[0]
            served = replace(bus, type="modbus-rtu", serial_port=path, host="")
            return Simulated(served, f"point a modbus-rtu bus at {path}")
        await self._start(stack)
        if server.serial_port:
            served = replace(bus, type="modbus-rtu", serial_port=server.serial_port, host="")
            return Simulated(served, f"serving on {server.serial_port}")
        kind = "modbus-tcp" if bus.type == "modbus-tcp" else "modbus-rtu-over-tcp"
        served = replace(bus, type=kind, host=server.host, port=server.port, serial_port="")
        return Simulated(served, f"point a {kind} bus at {server.address}")

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        server = self.simulator
        try:
            await stack.enter_async_context(server)
        except OSError as exc:
            reason = exc.__cause__ or exc
            if server.serial_port:
                raise BusError(
                    f"bus {self.bus.name}: cannot serve on {server.serial_port} ({reason})"
                ) from None
            raise BusError(
                f"cannot listen on {server.host}:{server.port} ({reason}); "
                "is another simulator running? pick another with --tcp HOST:PORT"
            ) from None


def _slave(device: DeviceConfig) -> SimulatedSlave:
    """The device's slave: its points at their addresses, or for a SunSpec device a whole
    SunSpec map (see ``simulated_map``) with its points placed on it."""
    if not sunspec_points(device.points):
        return SimulatedSlave(device.unit, modbus_points(device.points))
    served = simulated_map(device)
    fixed = [point for point, _ in served.fixed.values()]
    slave = SimulatedSlave(device.unit, [*fixed, *served.points])
    for point, raw in served.fixed.values():
        slave.set_registers("holding", point.address, raw)
    slave.held = frozenset(served.fixed)
    return slave
