"""The Modbus driver (``drivers.modbus.ModbusDriver``) for TCP, RTU and RTU-over-TCP buses,
registered as driver ``modbus`` and as the driver of those three bus types.

``schema``: its bus types, keys and point type, with the loader's checks of them; ``plan``: a
poll's reads; ``codec``: registers to readings and back; ``writes``: a write's request;
``frames``: frames on the wire (the ring per device, RTU lengths and CRCs); ``ports``: why a
serial port does not open; ``scan``: which unit ids answer; ``simulate`` and ``simulator``:
simulated slaves for ``edge-agent simulate``, golden cases and the test kit (imported on their
own, so that loading the driver does not load the pymodbus server).
"""

from .driver import ModbusDriver

__all__ = ["ModbusDriver"]
