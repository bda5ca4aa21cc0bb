"""The Modbus driver (``drivers.modbus.ModbusDriver``) for TCP, RTU and RTU-over-TCP buses,
registered as driver ``modbus``.

``drivers.modbus.codec`` converts registers to readings and back; ``drivers.modbus.simulator``
serves simulated devices for ``edge-agent simulate``, demos and tests (imported on its own, so
that loading the driver does not load the pymodbus server).
"""

from .driver import ModbusDriver

__all__ = ["ModbusDriver"]
