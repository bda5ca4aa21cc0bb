"""IEC 62056-21 buses simulated (``edge-agent simulate``, golden cases): one emulated meter per
device (its address, a data line per OBIS code its points name) on a pseudo-terminal the
agent's bus is pointed at."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace

from agent.api import (
    BusConfig,
    DeviceConfig,
    PointConfig,
    ServedSimulation,
    SimulateAt,
    Simulated,
    Value,
)

from .emulator import MeterBus, SimulatedMeter


class Iec62056Simulation(ServedSimulation):
    """The meters of one bus, served while entered (``emulated.meters``)."""

    def __init__(self, bus: BusConfig, at: SimulateAt) -> None:
        if not (at.pty or at.serial_port):
            raise ValueError(
                f"bus {bus.name} is an IEC 62056-21 bus on a serial port: simulate it on a "
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
        emulated = MeterBus(self.meters, self.at.serial_port, sign_on_baud=self.bus.baudrate)
        emulated.meters = self.meters  # one list: a meter added while serving answers too
        await stack.enter_async_context(emulated)
        return Simulated(
            replace(self.bus, serial_port=emulated.port), f"point a serial bus at {emulated.port}"
        )


def meter_for(device: DeviceConfig, held: Mapping[str, Value]) -> SimulatedMeter:
    """The device's meter: a data line per OBIS code of its points, each point's value at its
    index being what ``held`` gives it (un-scaled to what the meter says), else the point's
    position among the device's points (its name, for a string), in the point's unit."""
    lines: dict[str, list[str]] = {}
    for position, point in enumerate(device.points, start=1):
        values = lines.setdefault(str(point.options.get("obis", "0.0.0")), [])
        index = int(point.options.get("index", 1))
        values.extend(["(0)"] * (index - len(values)))
        values[index - 1] = f"({_said(point, held.get(point.name, position))})"
    if "F.F" not in lines:
        lines["F.F"] = ["(00000000)"]  # the error register most meters send: no error
    return SimulatedMeter(
        address=str(device.options.get("address", "")),
        lines=[obis + "".join(values) for obis, values in lines.items()],
    )


def _said(point: PointConfig, reading: Value) -> str:
    """``reading`` as the meter writes it: the raw value, with the unit after ``*``."""
    if point.options.get("type", "number") == "string" or isinstance(reading, str | bool):
        text = str(reading)
    else:
        raw = (float(reading) - point.offset) / point.scale
        if isinstance(reading, int) and point.scale == 1 and point.offset == 0:
            text = str(reading)
        else:
            text = f"{raw:.10g}"
            text = text if "." in text or "e" in text else f"{text}.0"
    return f"{text}*{point.unit}" if point.unit else text
