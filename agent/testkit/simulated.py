"""Any driver's simulated bus for a test: the devices a site's configuration puts on one bus,
served by their driver's own simulation (its ``Simulates`` ability, the one ``edge-agent
simulate`` serves): SDI-12 sensors, DL/T 645 and IEC 62056-21 meters on a pseudo-terminal,
Modbus slaves on a free loopback port. Each device's handle is the driver's own emulated device
(a DL/T 645 ``SimulatedMeter``, an IEC 62056-21 meter, an SDI-12 sensor, a Modbus
``SimulatedSlave``), on which a test sets values and faults as the driver documents them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent import registry
from agent.api import SimulateAt, Simulates, Simulation, Value
from agent.config import Config, load_config

from .aio import KitLoop
from .net import free_port


class SimulatedBus:
    """The devices of bus ``bus_name`` of ``config`` (a file, or a loaded ``Config``), served
    while started: point the agent's bus at ``address``; ``device(name)`` is a device's handle.

    ``values`` holds what each device reads (``{device: {point: value}}``); without it, the
    driver's simulation picks plausible values (Modbus ones move over time).
    """

    def __init__(
        self,
        kit: KitLoop,
        config: Config | Path | str,
        bus_name: str,
        values: Mapping[str, Mapping[str, Value]] | None = None,
    ) -> None:
        self.kit = kit
        loaded = config if isinstance(config, Config) else load_config(Path(config))[0]
        bus = loaded.bus(bus_name)
        name = registry.bus_driver(bus, loaded.devices)
        driver = registry.load_driver(name) if name else None
        if not isinstance(driver, Simulates):
            raise ValueError(f"bus {bus_name}: its driver ({name or 'none'}) does not simulate")
        held = None if values is None else {d: dict(v) for d, v in values.items()}
        at = (
            SimulateAt(pty=True, values=held)
            if bus.serial
            else SimulateAt(host="127.0.0.1", port=free_port(), values=held)
        )
        self.simulation: Simulation = driver.simulation(bus, at)
        self.handles: dict[str, Any] = {
            device.name: self.simulation.add(device) for device in loaded.devices_on(bus_name)
        }
        self._started: bool = False

    @property
    def address(self) -> str:
        """What the agent's bus points at: a pseudo-terminal's path, or ``HOST:PORT``."""
        served = self.simulation.served.bus
        return served.serial_port if served.serial_port else f"{served.host}:{served.port}"

    def device(self, name: str) -> Any:
        """The driver's own emulated device ``name``, to set its values and faults."""
        try:
            return self.handles[name]
        except KeyError:
            known = ", ".join(self.handles) or "none"
            raise KeyError(f"the bus serves no device {name!r} (devices: {known})") from None

    def start(self) -> SimulatedBus:
        if not self._started:
            self.kit.call(self._enter())
            self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.kit.call(self.simulation.__aexit__(None, None, None))

    async def _enter(self) -> None:
        await self.simulation.__aenter__()
