"""``edge-agent simulate --pty`` for SDI-12 buses: one emulated sensor per device (its address,
its measurements), on a fresh pseudo-terminal the agent's bus is pointed at."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace

from agent.api import BusConfig, DeviceConfig, SimulateAt, Simulated, Value
from agent.api.pty import PtyLink

from .emulator import Sdi12Bus, SimulatedSensor


@contextlib.asynccontextmanager
async def simulate_bus(
    bus: BusConfig, devices: Sequence[DeviceConfig], at: SimulateAt
) -> AsyncIterator[Simulated]:
    """Serve ``devices`` as sensors while entered; yields where to point the agent."""
    if not at.pty:
        raise ValueError(
            f"bus {bus.name} is an SDI-12 bus on a serial port: simulate it on a "
            "pseudo-terminal with --pty"
        )
    sensors = [sensor_for(d, (at.values or {}).get(d.name, {})) for d in devices]
    uart = all(d.options.get("adapter", "uart") == "uart" for d in devices)
    async with PtyLink() as link, Sdi12Bus(link.paths[1], sensors, echo=uart):
        path = link.paths[0]
        yield Simulated(replace(bus, serial_port=path), f"point a serial bus at {path}")


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
