"""The public driver API: the only part of edge-agent a driver imports.

``agent.api`` holds the ``Driver`` protocol, the optional abilities (``Writes``, ``Describes``,
``KeepsRaw``, ``PollsAtOnce``, ``CountsFaults``, ``Scans``, ``Simulates``, ``ShipsTemplates``,
``BuildsPoints``), the ``DriverContext`` a driver is built with, the configuration it sees
(``BusConfig``, ``DeviceConfig``, ``PointConfig``), what a poll returns (``Poll``, ``Value``),
the errors it raises (``BusError``, ``DeviceError``) and the one scaling rule (``scaled``).
Beside it:
``agent.api.keys`` (converters for a driver's own configuration keys) and ``agent.api.serial``
(a serial port read line by line through the event loop, for drivers of ``serial`` buses).

Read ``agent.api.driver`` for what a driver must and may do. A driver registers under the
``edge_agent.drivers`` entry-point group; the built-in ones do so like any other.
"""

from ..clock import Clock
from ..errors import BusError, DeviceError, DriverError
from ..model import Poll, Value
from .config import (
    SERIAL_BUS,
    BusConfig,
    BusType,
    DeviceConfig,
    Link,
    PointConfig,
    TemplateConfig,
    local_bus,
)
from .driver import (
    PLAN_NOTES,
    BuildsPoints,
    CountsFaults,
    Describes,
    Driver,
    DriverContext,
    FramesLine,
    KeepsRaw,
    Keys,
    PollsAtOnce,
    Scans,
    ServedSimulation,
    ShipsTemplates,
    SimulateAt,
    Simulated,
    Simulates,
    Simulation,
    Unconnected,
    Writes,
)
from .scaling import scaled, significant

__all__ = [
    "PLAN_NOTES",
    "SERIAL_BUS",
    "BuildsPoints",
    "BusConfig",
    "BusError",
    "BusType",
    "Clock",
    "CountsFaults",
    "Describes",
    "DeviceConfig",
    "DeviceError",
    "Driver",
    "DriverContext",
    "DriverError",
    "FramesLine",
    "KeepsRaw",
    "Keys",
    "Link",
    "PointConfig",
    "Poll",
    "PollsAtOnce",
    "Scans",
    "ServedSimulation",
    "ShipsTemplates",
    "SimulateAt",
    "Simulated",
    "Simulates",
    "Simulation",
    "TemplateConfig",
    "Unconnected",
    "Value",
    "Writes",
    "local_bus",
    "scaled",
    "significant",
]
