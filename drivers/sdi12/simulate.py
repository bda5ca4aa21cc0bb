"""SDI-12 buses simulated (``edge-agent simulate``, golden cases): one emulated sensor per device
(its address, its measurements) on a pseudo-terminal the agent's bus is pointed at."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace

from agent.api import BusConfig, DeviceConfig, ServedSimulation, SimulateAt, Simulated, Value
from agent.api.pty import PtyLink

from .emulator import Sdi12Bus, SimulatedSensor


class Sdi12Simulation(ServedSimulation):
    """The sensors of one bus, served while entered (``emulated.sensors``)."""

    def __init__(self, bus: BusConfig, at: SimulateAt) -> None:
        if not (at.pty or at.serial_port):
            raise ValueError(
                f"bus {bus.name} is an SDI-12 bus on a serial port: simulate it on a "
                "pseudo-terminal with --pty"
            )
        super().__init__(bus)
        self.at = at
        self.sensors: list[SimulatedSensor] = []
        self._uart = True

    def add(self, device: DeviceConfig) -> SimulatedSensor:
        held = (self.at.values or {}).get(device.name, {})
        sensor = sensor_for(device, held)
        self.sensors.append(sensor)
        self._uart = self._uart and device.options.get("adapter", "uart") == "uart"
        return sensor

    async def serve(self, stack: contextlib.AsyncExitStack) -> Simulated:
        if self.at.serial_port:
            far = path = self.at.serial_port
        else:
            link = await stack.enter_async_context(PtyLink())
            far, path = link.paths[1], link.paths[0]
        emulated = Sdi12Bus(far, self.sensors, echo=self._uart)
        emulated.sensors = self.sensors  # one list: a sensor added while serving answers too
        await stack.enter_async_context(emulated)
        return Simulated(replace(self.bus, serial_port=path), f"point a serial bus at {path}")


def sensor_for(device: DeviceConfig, held: Mapping[str, Value]) -> SimulatedSensor:
    """The device's sensor: each point's measurement answers, at the point's index, the value
    ``held`` gives it (un-scaled to what the sensor says), else the index itself."""
    measurements: dict[str, list[float]] = {}
    for point in device.points:
        name = str(point.options.get("measurement", "M")).replace("C", "")
        index = int(point.options.get("index", 1))
        values = measurements.setdefault(name, [])
        values.extend([0.0] * (index - len(values)))
        reading = held.get(point.name, index)
        values[index - 1] = (float(reading) - point.offset) / point.scale
    return SimulatedSensor(str(device.options.get("address", "0")), measurements)
