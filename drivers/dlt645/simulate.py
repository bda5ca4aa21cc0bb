"""DL/T 645 buses simulated (``edge-agent simulate``, golden cases): one emulated meter per
device (its address, a value for each point's identifier) on a pseudo-terminal the agent's bus
is pointed at."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace

from agent.api import BusConfig, DeviceConfig, ServedSimulation, SimulateAt, Simulated, Value
from agent.api.pty import PtyLink

from . import protocol
from .driver import point_format
from .emulator import Dlt645Bus, SimulatedMeter

#: What a meter reads when nothing is held for a point: a plausible reading per quantity.
#: (The one known quantity without a unit, "", is the power factor.)
TYPICAL = {
    "kWh": 1234.56,
    "V": 230.1,
    "A": 5.123,
    "kW": 1.1782,
    "kvar": 0.2104,
    "kVA": 1.2005,
    "": 0.98,
    "Hz": 50.0,
}


class Dlt645Simulation(ServedSimulation):
    """The meters of one bus, served while entered (``meters``)."""

    def __init__(self, bus: BusConfig, at: SimulateAt) -> None:
        if not (at.pty or at.serial_port):
            raise ValueError(
                f"bus {bus.name} is a DL/T 645 bus on a serial port: simulate it on a "
                "pseudo-terminal with --pty"
            )
        super().__init__(bus)
        self.at = at
        self.meters: list[SimulatedMeter] = []

    def add(self, device: DeviceConfig) -> SimulatedMeter:
        meter = meter_for(device, (self.at.values or {}).get(device.name, {}))
        self.meters.append(meter)
        return meter

    async def serve(self, stack: contextlib.AsyncExitStack) -> Simulated:
        if self.at.serial_port:
            far = path = self.at.serial_port
        else:
            link = await stack.enter_async_context(PtyLink())
            far, path = link.paths[1], link.paths[0]
        emulated = Dlt645Bus(far, self.meters)
        emulated.meters = self.meters  # one list: a meter added while serving answers too
        await stack.enter_async_context(emulated)
        return Simulated(replace(self.bus, serial_port=path), f"point a serial bus at {path}")


def meter_for(device: DeviceConfig, held: Mapping[str, Value]) -> SimulatedMeter:
    """The device's meter: each point's identifier holds the value ``held`` gives the point
    (un-scaled to what the meter says), else a typical reading of its unit."""
    meter = SimulatedMeter(str(device.options.get("address", "000000000001")))
    for point in device.points:
        di = protocol.parse_di(str(point.options.get("di", "00000000")))
        form = point_format(point)
        meter.formats[di] = form
        if point.name in held:
            meter.values[di] = (float(held[point.name]) - point.offset) / point.scale
        else:
            known = protocol.KNOWN.get(di)
            meter.values[di] = TYPICAL.get(known[1], 0.0) if known else 0.0
    return meter
