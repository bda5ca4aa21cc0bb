"""What a Modbus configuration says: its bus types and bus keys, a device's unit id, and a
point's table, address and type, with the checks the loader makes of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, cast

from agent.api import BusConfig, BusType, Keys, PointConfig, keys

Table = Literal["holding", "input", "coil", "discrete"]
PointType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
WordOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]

TABLES: tuple[Table, ...] = ("holding", "input", "coil", "discrete")
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})
READ_ONLY_TABLES: frozenset[str] = frozenset({"input", "discrete"})
ORDERS: tuple[WordOrder, ...] = ("ABCD", "DCBA", "BADC", "CDAB")
#: Registers each fixed-size type occupies; a string's size comes from its ``length``.
TYPE_REGISTERS: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
}
POINT_TYPES: tuple[str, ...] = (*TYPE_REGISTERS, "string")
ADDRESS_SPACE = 65536
#: Most registers one read may carry (FC 3/4), and most bits (FC 1/2): the protocol's limits.
MAX_REGISTERS = 125
MAX_BITS = 2000
#: Unused registers (or bits) a merged read may span between two points, by default.
MERGE_GAP = 8

BUS_TYPES: tuple[BusType, ...] = (
    BusType("modbus-tcp", "network", 502),
    BusType("modbus-rtu", "serial"),
    BusType("modbus-rtu-over-tcp", "network", 502),
)
#: The most requests a ``pipeline`` may keep under way: more than most servers queue.
MAX_PIPELINE = 32
BUS_OPTIONS = {
    #: Largest read the slaves on this bus accept.
    "max_registers": keys.in_range(1, MAX_REGISTERS),
    "max_bits": keys.in_range(1, MAX_BITS),
    "merge_gap": keys.in_range(0, MAX_REGISTERS - 1),
    #: Write every point with FC 15/16 (write multiple coils/registers), even a single coil or
    #: register, for slaves that lack FC 5/6 (write single coil/register).
    "write_multiple": keys.boolean,
    #: Requests under way at once on a Modbus TCP connection (1: one transaction at a time).
    "pipeline": keys.in_range(1, MAX_PIPELINE),
}
DEVICE_OPTIONS = {
    "unit": keys.in_range(0, 255),
    #: Which logical device of a SunSpec unit (from 1: each starts with a common model).
    "sunspec_device": keys.in_range(1, 64),
}
#: The types a ``scale_exponent`` point may have.
EXPONENT_TYPES = ("int16", "uint16", "int32")


@dataclass(frozen=True, slots=True)
class ModbusPoint(PointConfig):
    """A point in one of a slave's four tables."""

    table: Table = "holding"
    address: int = 0
    type: PointType = "uint16"
    order: WordOrder = "ABCD"
    length: int = 0  # characters, for strings only
    bit: int | None = None  # a single bit (0 = least significant) of a register
    #: Raw values that mean "not available" (e.g. 0x7FFF, 0xFFFF, NaN): no reading, not a number.
    not_available: tuple[float, ...] = ()
    #: Another point whose value v scales this one by 10**v (SunSpec's scale factors).
    scale_exponent: str | None = None
    #: A SunSpec point by name (``inverter.W``), placed by discovery: see ``sunspec_points``.
    sunspec: str | None = None

    @property
    def value_type(self) -> str:
        return self.type

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.scale_exponent,) if self.scale_exponent else ()

    @property
    def count(self) -> int:
        """How many registers (or bits, on coil/discrete tables) the point spans."""
        if self.table in BIT_TABLES:
            return 1
        if self.type == "string":
            return (self.length + 1) // 2
        return TYPE_REGISTERS[self.type]


def max_registers(bus: BusConfig | None) -> int:
    return int(bus.options.get("max_registers", MAX_REGISTERS)) if bus else MAX_REGISTERS


def max_bits(bus: BusConfig | None) -> int:
    return int(bus.options.get("max_bits", MAX_BITS)) if bus else MAX_BITS


def merge_gap(bus: BusConfig | None) -> int:
    return int(bus.options.get("merge_gap", MERGE_GAP)) if bus else 0


def pipeline(bus: BusConfig) -> int:
    return int(bus.options.get("pipeline", 1))


def write_multiple(bus: BusConfig) -> bool:
    return bool(bus.options.get("write_multiple", False))


def modbus_bus(name: str, type: str, **settings: Any) -> BusConfig:
    """A Modbus ``BusConfig``: the link's settings, and the Modbus ones as its options (for
    code and tests that build a bus without a configuration file)."""
    own = {k: settings.pop(k) for k in list(settings) if k in BUS_OPTIONS}
    return BusConfig(name, type, **settings, options=own)


def describe_point(point: PointConfig) -> str:
    """Where ``point`` lives and how it is decoded: ``holding     0  float32  V  CDAB``."""
    p = modbus_point(point)
    if p.sunspec is not None:
        return f"sunspec  {p.sunspec}  {p.unit}".rstrip()
    extra: list[str] = []
    if p.type not in ("bool", "int16", "uint16", "string"):
        extra.append(p.order)
    if p.scale != 1 or p.offset:
        extra.append(f"x{p.scale:g}{p.offset:+g}" if p.offset else f"x{p.scale:g}")
    if p.scale_exponent:
        extra.append(f"x10^{p.scale_exponent}")
    if p.bit is not None:
        extra.append(f"bit {p.bit}")
    return f"{p.table:<8} {p.address:>5}  {p.type:<8} {p.unit:<6} {' '.join(extra)}".rstrip()


def show_raw(point: PointConfig, raw: tuple[int, ...]) -> str:
    """Registers in hex (``0x00E6``), bits as 0 and 1."""
    registers = modbus_point(point).table not in BIT_TABLES
    return " ".join(f"0x{r:04X}" if registers else str(r) for r in raw)


def modbus_point(point: PointConfig) -> ModbusPoint:
    """``point`` as the Modbus point the loader built it as."""
    if not isinstance(point, ModbusPoint):
        raise TypeError(f"point {point.name} is not a Modbus point")
    return point


def modbus_points(points: Sequence[PointConfig]) -> list[ModbusPoint]:
    return [modbus_point(p) for p in points]


_COMMON = tuple(f.name for f in fields(PointConfig))


#: What a SunSpec point takes from its model's definition, never from its keys.
SUNSPEC_DEFINED = (
    "table",
    "address",
    "type",
    "order",
    "length",
    "bit",
    "not_available",
    "scale_exponent",
)


def build_point(common: PointConfig, s: Keys) -> ModbusPoint | None:
    """A Modbus point from a point table's keys, or ``None`` after saying what is wrong."""
    if s.has("sunspec"):
        return _sunspec_point(common, s)
    table = s.take("table", keys.one_of(*TABLES), "holding")
    default_type = "bool" if table in BIT_TABLES or s.has("bit") else "uint16"
    point_type = s.take("type", keys.one_of(*POINT_TYPES), default_type)
    address = s.take("address", keys.in_range(0, ADDRESS_SPACE - 1))
    own: dict[str, Any] = {
        "length": s.take("length", keys.in_range(1, 250), 0) or 0,
        "order": s.take("order", keys.one_of(*ORDERS), "ABCD"),
        "bit": s.take("bit", keys.in_range(0, 15), None),
        "not_available": s.take("not_available", _numbers, ()),
        "scale_exponent": s.take("scale_exponent", keys.name, None),
    }
    if None in (table, point_type, address, own["order"], own["not_available"]):
        return None
    point = ModbusPoint(
        **{k: getattr(common, k) for k in _COMMON},
        table=cast(Table, table),
        address=cast(int, address),
        type=cast(PointType, point_type),
        **own,
    )
    return point if _fits(s, point) else None


def _sunspec_point(common: PointConfig, s: Keys) -> ModbusPoint | None:
    from .sunspec_points import config_point

    ref = s.take("sunspec", keys.text)
    problems = [
        (key, "comes from the SunSpec definition of the point: remove it")
        for key in SUNSPEC_DEFINED
        if s.has(key)
    ]
    if common.writable:
        problems.append(("writable", "SunSpec points are read here, not written"))
    for key, message in problems:
        s.take(key, lambda value: value, None)  # said once, as above, not as an unknown key
        s.problem(key, message)
    if ref is None or problems:
        return None
    try:
        return config_point(common, ref)
    except ValueError as exc:
        s.problem("sunspec", str(exc))
        return None


def check_points(
    owner: str, mine: Sequence[PointConfig], points: Sequence[PointConfig]
) -> list[tuple[str, str, str]]:
    """Each of ``mine`` whose ``scale_exponent`` does not name an integer point of ``points``."""
    by_name = {p.name: p for p in points}
    found = []
    for point in modbus_points(mine):
        if point.scale_exponent is None:
            continue
        other = by_name.get(point.scale_exponent)
        if not isinstance(other, ModbusPoint) or other.type not in EXPONENT_TYPES:
            found.append(
                (
                    point.name,
                    "scale_exponent",
                    f'"{point.scale_exponent}" is not an int16, uint16 or int32 point of {owner}'
                    f"{keys.suggest(point.scale_exponent, by_name)}",
                )
            )
    return found


def _numbers(value: Any) -> tuple[float, ...]:
    """A list of raw values; TOML writes them as 0x7FFF, 65535 or nan."""
    if not isinstance(value, list):
        raise TypeError("must be a list of raw values, e.g. [0x7FFF, nan]")
    return tuple(keys.number(v) for v in value)


def _fits(s: Keys, point: ModbusPoint) -> bool:
    """Cross-field checks of one point; the driver sees only points that pass them."""
    problems = [
        *_shape_problems(s, point),
        *_place_problems(point),
        *_use_problems(point),
        *_limit_problems(point),
    ]
    for key, message in problems:
        s.problem(key, message)
    return not problems


def _shape_problems(s: Keys, point: ModbusPoint) -> list[tuple[str, str]]:
    found = []
    if point.table in BIT_TABLES and point.type != "bool":
        found.append(
            ("type", f"a {point.table} holds single bits: its type must be bool, not {point.type}")
        )
    if point.type == "string" and not point.length:
        found.append(("length", "is required for a string point (its number of characters)"))
    if point.type != "string" and s.has("length"):
        found.append(("length", "applies only to string points"))
    return found


def _place_problems(point: ModbusPoint) -> list[tuple[str, str]]:
    found = []
    last = point.address + point.count - 1
    if last >= ADDRESS_SPACE:
        found.append(
            (
                "address",
                f"{point.type} at {point.address} needs {point.count} registers and runs past "
                f"the end of the address space (last would be {last}, the highest is "
                f"{ADDRESS_SPACE - 1})",
            )
        )
    if point.bit is not None and point.table in BIT_TABLES:
        found.append(("bit", f"a {point.table} is a single bit already: remove bit"))
    elif point.bit is not None and point.type != "bool":
        found.append(
            ("bit", f"picks one bit of a register: the type must be bool, not {point.type}")
        )
    return found


def _use_problems(point: ModbusPoint) -> list[tuple[str, str]]:
    found = []
    if point.not_available and point.type in ("bool", "string"):
        found.append(("not_available", f"applies to numbers, not to {point.type} points"))
    if point.writable and point.table in READ_ONLY_TABLES:
        kind = "registers" if point.table == "input" else "inputs"
        found.append(("writable", f"{point.table} {kind} are read-only"))
    return found


def _limit_problems(point: ModbusPoint) -> list[tuple[str, str]]:
    found = []
    if point.min is not None and point.max is not None and point.min > point.max:
        found.append(("min", f"min ({point.min:g}) is greater than max ({point.max:g})"))
    if point.deadband is not None and point.deadband < 0:
        found.append(("deadband", "cannot be negative"))
    if point.scale == 0:
        found.append(("scale", "cannot be zero"))
    return found
