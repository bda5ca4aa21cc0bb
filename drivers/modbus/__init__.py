"""The Modbus TCP driver (``drivers.modbus.ModbusDriver``), registered as driver ``modbus``.

``drivers.modbus.codec`` converts registers to readings and back; ``drivers.modbus.simulator``
serves simulated devices for ``edge-agent simulate``, demos and tests (imported on its own, so
that loading the driver does not load the pymodbus server).
"""

from .driver import ModbusDriver

__all__ = ["ModbusDriver"]
