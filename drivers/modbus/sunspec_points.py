"""SunSpec points by name, placed by discovery: a point says ``sunspec = "inverter.W"`` (a
model, or a kind of model, and a point of its definition) and gets its address, type, unit,
scale factor and "not implemented" value from the device's own model chain and SunSpec's
definitions, never from fixed offsets.

A reference is ``MODEL.POINT`` or, for a model's repeating group, ``MODEL.GROUP[N].POINT``
(``mppt.module[2].DCW``, the instance counted from 1). ``MODEL`` is a model id (``103``), a
model's SunSpec name (``inverter_three_phase``) or a kind (``inverter``: the first of 101-103 and
111-113 in the device's chain; ``meter``: 201-204). A device that lacks the model, the instance
or the point (an older, shorter model) lacks the point: it is reported missing, the others read.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

from agent.api import DeviceConfig, PointConfig, Value, keys

from .schema import MERGE_GAP, ModbusPoint, PointType, modbus_points
from .sunspec import (
    ModelBlock,
    ModelDefinition,
    Read,
    SunSpecPoint,
    definition,
    discover,
    known_models,
)

log = logging.getLogger(__name__)

#: Kinds of model a reference may name, the commonest first (the simulator serves the first).
KINDS: dict[str, tuple[int, ...]] = {
    "common": (1,),
    "inverter": (103, 101, 102, 113, 111, 112),
    "meter": (203, 201, 202, 204),
    "mppt": (160,),
    "nameplate": (120,),
    "settings": (121,),
    "status": (122,),
    "controls": (123,),
    "storage": (124,),
}

#: How each SunSpec type is held in registers here, and its "not implemented" raw value.
TYPES: dict[str, tuple[PointType, float | None]] = {
    "uint16": ("uint16", 0xFFFF),
    "int16": ("int16", 0x8000),
    "sunssf": ("int16", 0x8000),
    "enum16": ("uint16", 0xFFFF),
    "bitfield16": ("uint16", 0xFFFF),
    "count": ("uint16", None),
    "acc16": ("uint16", 0),
    "uint32": ("uint32", 0xFFFFFFFF),
    "int32": ("int32", 0x80000000),
    "acc32": ("uint32", 0),
    "enum32": ("uint32", 0xFFFFFFFF),
    "bitfield32": ("uint32", 0xFFFFFFFF),
    "ipaddr": ("uint32", 0),
    "acc64": ("uint64", 0),
    "uint64": ("uint64", 0xFFFFFFFFFFFFFFFF),
    "int64": ("int64", 0x8000000000000000),
    "float32": ("float32", math.nan),
    "float64": ("float64", math.nan),
    "string": ("string", None),
}

#: SunSpec's unit names, as the rest of a configuration writes them.
UNITS = {"C": "°C", "Pct": "%", "Secs": "s", "W": "W", "Wh": "Wh"}

#: The prefix of the points a placed device reads for its own (scale factors, model ids),
#: never published.
INTERNAL = "sunspec:"
#: The most instances a reference may count (of a model in the chain, of a repeating group).
MAX_INSTANCE = 255

_REF = re.compile(
    r"(?P<model>[A-Za-z0-9_]+)(?:\[(?P<instance>\d+)\])?\."
    r"(?:(?P<group>[A-Za-z_]+)\[(?P<index>\d+)\]\.)?(?P<point>[A-Za-z0-9_]+)"
)


@dataclass(frozen=True)
class Ref:
    """What a ``sunspec`` key names: the ``instance``-th model of ``models`` in the chain, and
    in it ``point``, of the ``index``-th ``group`` when a group is named."""

    models: tuple[int, ...]
    point: str
    group: str = ""
    index: int = 0
    instance: int = 1

    @property
    def common(self) -> bool:
        return self.models == (1,)


def parse_ref(text: str) -> Ref:
    """The reference ``text`` names; ``ValueError`` saying what is wrong and what would do."""
    match = _REF.fullmatch(text.strip())
    if not match:
        raise ValueError(
            f'"{text}" is not MODEL.POINT or MODEL.GROUP[N].POINT, e.g. "inverter.W", '
            '"meter[2].W" or "mppt.module[1].DCW"'
        )
    models = _models(match["model"])
    group, index = match["group"] or "", int(match["index"] or 0)
    instance = int(match["instance"] or 1)
    for counted, number in ((group or "model", index if group else 1), ("model", instance)):
        if not 1 <= number <= MAX_INSTANCE:
            raise ValueError(f'"{text}": a {counted} is counted from 1 to {MAX_INSTANCE}')
    ref = Ref(models, match["point"], group, index, instance)
    _check_point(text, ref)
    return ref


def _models(name: str) -> tuple[int, ...]:
    if name.isdigit():
        if int(name) not in known_models():
            shipped = ", ".join(str(m) for m in known_models())
            raise ValueError(f"SunSpec model {name} is not one edge-agent reads ({shipped})")
        return (int(name),)
    named = KINDS | {definition(m).name: (m,) for m in known_models()}
    if name not in named:
        raise ValueError(
            f'"{name}" is not a SunSpec model id or kind{keys.suggest(name, named)}; kinds: '
            f"{', '.join(KINDS)}"
        )
    return named[name]


def _check_point(text: str, ref: Ref) -> None:
    first = definition(ref.models[0])
    if ref.group and ref.group != first.group_name:
        has = f"its group is {first.group_name}" if first.group_name else "it has no group"
        raise ValueError(f'"{text}": model {first.model_id} has no group {ref.group} ({has})')
    if any(_defined(definition(m), ref) for m in ref.models):
        return
    names = [p.name for p in (first.group_points if ref.group else first.points)]
    raise ValueError(
        f'"{text}": model {first.model_id} ({first.name}) has no point {ref.point}'
        f"{keys.suggest(ref.point, names)}"
    )


def _defined(model: ModelDefinition, ref: Ref) -> SunSpecPoint | None:
    point = model.group_point(ref.point) if ref.group else model.point(ref.point)
    return point if point is not None and point.type != "pad" else None


def config_point(common: PointConfig, text: str) -> ModbusPoint:
    """The point as configured, before discovery places it (``ValueError`` if ``text`` names
    nothing): the type and unit of the kind's first model, a placeholder address."""
    ref = parse_ref(text)
    model = next(definition(m) for m in ref.models if _defined(definition(m), ref))
    found = cast(SunSpecPoint, _defined(model, ref))
    stored, unimplemented = TYPES[found.type]
    fields = {f: getattr(common, f) for f in PointConfig.__dataclass_fields__}
    fields["unit"] = common.unit or UNITS.get(found.unit, found.unit)
    return ModbusPoint(
        **fields,
        type=stored,
        length=found.size * 2 if stored == "string" else 0,
        not_available=() if unimplemented is None else (unimplemented,),
        sunspec=text.strip(),
    )


@dataclass(frozen=True)
class Layout:
    """A device's points placed on its chain: what to read (its points, the scale factors they
    need and the id register of each model they are in), the points it lacks, and the model id
    each id register must hold."""

    points: tuple[ModbusPoint, ...]
    missing: tuple[str, ...]
    model_ids: tuple[tuple[str, int], ...] = ()

    def moved(self, values: Mapping[str, Value]) -> str | None:
        """What says the unit's map changed since it was placed (a model id elsewhere), if so."""
        for name, model_id in self.model_ids:
            found = values.get(name)
            if found is not None and found != model_id:
                address = name.removeprefix(INTERNAL).split(".")[0]
                return f"SunSpec model {model_id} is no longer at {address} (found {found!r})"
        return None


def logical_devices(chain: Sequence[ModelBlock]) -> list[list[ModelBlock]]:
    """The chain cut before each common model: one unit may serve several logical devices (an
    inverter, then each of its meters), each starting with a common model of its own."""
    devices: list[list[ModelBlock]] = []
    for block in chain:
        if block.model_id == 1 or not devices:
            devices.append([])
        devices[-1].append(block)
    return devices


def place(
    points: Sequence[ModbusPoint],
    chain: Sequence[ModelBlock],
    logical: int | None = None,
    gap: int = MERGE_GAP,
) -> Layout:
    """Each SunSpec point of ``points`` at its address on ``chain`` (or on its ``logical``-th
    logical device, from 1); other points as they are. The id register of a model is read too
    where a read of its points takes it in anyway (within ``gap`` of them: no request more).

    A model reference takes the ``instance``-th model of its kind in the chain; a ``common``
    point takes the common model before the first model the device's other points are in (the
    meter's own, on a unit that serves an inverter and its meters), else the ``instance``-th."""
    if logical is not None:
        devices = logical_devices(chain)
        chain = devices[logical - 1] if logical <= len(devices) else []
    refs = {p.name: parse_ref(p.sunspec) for p in points if p.sunspec is not None}
    blocks = {n: _block(ref, chain) for n, ref in refs.items() if not ref.common}
    anchor = next((b for b in blocks.values() if b is not None), None)
    for name, ref in refs.items():
        if ref.common:
            blocks[name] = _common_before(anchor, chain) if anchor else _block(ref, chain)
    placed: dict[str, ModbusPoint] = {}
    missing: list[str] = []
    model_ids: dict[str, int] = {}
    for point in points:
        block = blocks.get(point.name)
        found = _place(point, refs[point.name], block) if block else None
        if point.sunspec is None:
            placed[point.name] = point
        elif block is None or found is None:
            missing.append(point.name)
        else:
            placed[point.name] = found[0]
            if found[1] is not None:
                placed.setdefault(found[1].name, found[1])
            if found[0].address - block.address <= gap + 1:
                placed.setdefault(_id_point(block).name, _id_point(block))
                model_ids[_id_point(block).name] = block.model_id
    return Layout(tuple(placed.values()), tuple(missing), tuple(model_ids.items()))


def _block(ref: Ref, chain: Sequence[ModelBlock]) -> ModelBlock | None:
    matching = [b for b in chain if b.model_id in ref.models]
    return matching[ref.instance - 1] if ref.instance <= len(matching) else None


def _common_before(anchor: ModelBlock, chain: Sequence[ModelBlock]) -> ModelBlock | None:
    before = [b for b in chain if b.model_id == 1 and b.address < anchor.address]
    return before[-1] if before else None


def _id_point(block: ModelBlock) -> ModbusPoint:
    """The model's id register: read with its points, it shows the map has not moved."""
    return ModbusPoint(f"{INTERNAL}{block.address}.ID", address=block.address)


def _place(
    point: ModbusPoint, ref: Ref, block: ModelBlock
) -> tuple[ModbusPoint, ModbusPoint | None] | None:
    """The point at its address in ``block``, and the scale-factor point it needs; ``None``
    if the block lacks it."""
    model = definition(block.model_id)
    found = _defined(model, ref)
    if found is None:
        return None
    address = _address(block, model, ref, found)
    if address is None:
        return None
    placed = _as_modbus(point, found, address)
    if found.scale_factor is None:
        return placed, None
    if re.fullmatch(r"-?\d+", found.scale_factor):  # a fixed exponent, not a register
        return replace(placed, scale=placed.scale * 10.0 ** int(found.scale_factor)), None
    factor = model.point(found.scale_factor)
    if factor is None or factor.offset + factor.size > block.length + 2:
        return None
    name = f"{INTERNAL}{block.address}.{factor.name}"
    sf_point = ModbusPoint(
        name, type="int16", address=block.address + factor.offset, not_available=(0x8000,)
    )
    return replace(placed, scale_exponent=name), sf_point


def _address(
    block: ModelBlock, model: ModelDefinition, ref: Ref, point: SunSpecPoint
) -> int | None:
    """Where ``point`` is on the device, or ``None`` past the end of the device's model."""
    offset = point.offset
    if ref.group:
        offset += model.fixed_size + (ref.index - 1) * model.group_size
    if offset + point.size > block.length + 2:
        return None
    return block.address + offset


def _as_modbus(point: ModbusPoint, found: SunSpecPoint, address: int) -> ModbusPoint:
    stored, unimplemented = TYPES[found.type]
    return replace(
        point,
        table="holding",
        address=address,
        type=stored,
        length=found.size * 2 if stored == "string" else 0,
        not_available=() if unimplemented is None else (unimplemented,),
    )


def readings(values: dict[str, Value], points: Sequence[ModbusPoint]) -> dict[str, Value]:
    """What a poll publishes of ``values``: not the scale factors read for other points, nor a
    SunSpec string of NULs (its "not implemented")."""
    unset = {p.name for p in points if p.sunspec is not None and p.type == "string"}
    return {
        name: value
        for name, value in values.items()
        if not name.startswith(INTERNAL) and not (name in unset and value == "")
    }


def logical_device(device: DeviceConfig) -> int | None:
    """The device's ``sunspec_device``: which logical device of its unit it is, from 1."""
    chosen = device.options.get("sunspec_device")
    return None if chosen is None else int(chosen)


def sunspec_points(points: Sequence[PointConfig]) -> list[ModbusPoint]:
    """The points of ``points`` that discovery places."""
    return [p for p in points if isinstance(p, ModbusPoint) and p.sunspec is not None]


class Layouts:
    """Per device, its SunSpec points placed on the chain its unit has (discovered at its first
    poll, again after a poll that read nothing: the device may have been replaced). The chain is
    kept in the state dir, so that ``check --plan`` shows where the running agent reads."""

    def __init__(self, state_dir: Path | None, gap: int = MERGE_GAP) -> None:
        self.state_dir = state_dir
        self.gap = gap
        self._placed: dict[str, tuple[DeviceConfig, DeviceConfig, Layout]] = {}
        #: What was last said missing per device, so that a rediscovery does not say it again.
        self._said: dict[str, tuple[str, ...]] = {}

    async def placed(self, device: DeviceConfig, read: Read) -> tuple[DeviceConfig, Layout]:
        """The device as read (its points placed) and its layout; ``NotSunSpec`` when its unit
        has no SunSpec map."""
        known = self._placed.get(device.name)
        if known is not None and known[0] == device:
            return known[1], known[2]
        chain = await discover(read)
        self._save(device, chain)
        return self._place(device, chain)

    def known(self, device: DeviceConfig) -> tuple[DeviceConfig, Layout] | None:
        """The device placed as the last discovery found it (here, or by the running agent)."""
        known = self._placed.get(device.name)
        if known is not None and known[0] == device:
            return known[1], known[2]
        chain = self._load(device)
        return None if chain is None else self._place(device, chain)

    def forget(self, device: DeviceConfig) -> None:
        self._placed.pop(device.name, None)

    def _place(
        self, device: DeviceConfig, chain: Sequence[ModelBlock]
    ) -> tuple[DeviceConfig, Layout]:
        layout = place(modbus_points(device.points), chain, logical_device(device), self.gap)
        if layout.missing and self._said.get(device.name) != layout.missing:
            models = ", ".join(str(b.model_id) for b in chain)
            log.warning(
                "device %s: its SunSpec models (%s) lack %s: left out, the others are read",
                device.name,
                models,
                ", ".join(layout.missing),
            )
        self._said[device.name] = layout.missing
        placed = replace(device, points=layout.points)
        self._placed[device.name] = (device, placed, layout)
        return placed, layout

    def _path(self, device: DeviceConfig) -> Path | None:
        return self.state_dir / f"{device.name}.sunspec.json" if self.state_dir else None

    def _save(self, device: DeviceConfig, chain: Sequence[ModelBlock]) -> None:
        path = self._path(device)
        if path is None:
            return
        data = {"unit": device.unit, "chain": [[b.model_id, b.address, b.length] for b in chain]}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(data), encoding="utf-8")
            temporary.replace(path)
        except OSError as exc:  # only check --plan reads it: never worth a failed poll
            log.debug("device %s: cannot keep its SunSpec chain in %s: %s", device.name, path, exc)

    def _load(self, device: DeviceConfig) -> list[ModelBlock] | None:
        path = self._path(device)
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path else None
            if not isinstance(data, dict) or data.get("unit") != device.unit:
                return None
            return [ModelBlock(int(i), int(a), int(n)) for i, a, n in data["chain"]]
        except (OSError, ValueError, TypeError, KeyError):
            return None  # absent or damaged: discovery will say at the next poll


#: Where the simulator's SunSpec map starts, and how many MPPT inputs (repeating-group
#: instances) it serves.
SIMULATED_BASE = 40000
SIMULATED_INSTANCES = 2
#: SunSpec's current common model is 66 long (with its pad register); the fixed templates of
#: old assumed 65.
COMMON_LENGTH = 66


@dataclass(frozen=True)
class SimulatedMap:
    """A SunSpec unit as the simulator serves it: every register of its chain as a point
    (``fixed``: name → raw registers, held as they are), and the device's own points placed on
    it, their scale factors folded into their scale so that a value set is a value read."""

    chain: tuple[ModelBlock, ...]
    fixed: dict[str, tuple[ModbusPoint, list[int]]]
    points: tuple[ModbusPoint, ...]


def simulated_map(device: DeviceConfig) -> SimulatedMap:
    """The SunSpec map a simulated ``device`` serves: the common model (66 long), a nameplate
    model, then the models its points name, in descending id order (not a fixed template's)."""
    wanted = {_first_defining(cast(str, p.sunspec)) for p in sunspec_points(device.points)}
    chain = _chain([1, 120, *sorted(wanted - {1, 120}, reverse=True)])
    fixed: dict[str, tuple[ModbusPoint, list[int]]] = {}
    fixed["sunspec:marker"] = (ModbusPoint("sunspec:marker", address=SIMULATED_BASE), [0x5375])
    fixed["sunspec:marker2"] = (
        ModbusPoint("sunspec:marker2", address=SIMULATED_BASE + 1),
        [0x6E53],
    )
    exponents: dict[str, int] = {}
    for block in chain:
        for name, offset, point in _registers(block):
            address = block.address + offset
            raw = _simulated_raw(block, point, offset)
            key = f"{INTERNAL}{block.address}.{name}"
            if point.type == "sunssf":
                exponents[key] = _simulated_exponent(point.name)
                raw = [exponents[key] & 0xFFFF]
            # As a string of its registers: one point covers them all, whatever its type.
            fixed[key] = (
                ModbusPoint(key, address=address, type="string", length=2 * point.size),
                raw,
            )
    end = chain[-1].end
    fixed["sunspec:end"] = (ModbusPoint("sunspec:end", address=end), [0xFFFF])
    fixed["sunspec:end_length"] = (ModbusPoint("sunspec:end_length", address=end + 1), [0])
    placed = place(modbus_points(device.points), chain).points
    points = [_folded(p, exponents) for p in placed if not p.name.startswith(INTERNAL)]
    return SimulatedMap(tuple(chain), fixed, tuple(points))


def _folded(point: ModbusPoint, exponents: dict[str, int]) -> ModbusPoint:
    if point.scale_exponent is None:
        return point
    exponent = exponents[point.scale_exponent]
    return replace(point, scale=point.scale * 10.0**exponent, scale_exponent=None)


def _first_defining(text: str) -> int:
    ref = parse_ref(text)
    return next(m for m in ref.models if _defined(definition(m), ref))


def _chain(model_ids: Sequence[int]) -> list[ModelBlock]:
    blocks, address = [], SIMULATED_BASE + 2
    for model_id in model_ids:
        model = definition(model_id)
        length = model.fixed_size - 2 + model.group_size * SIMULATED_INSTANCES
        if model_id == 1:
            length = COMMON_LENGTH
        blocks.append(ModelBlock(model_id, address, length))
        address = blocks[-1].end
    return blocks


def _registers(block: ModelBlock) -> list[tuple[str, int, SunSpecPoint]]:
    """Every point of the block, named as in a reference, with its offset from the block."""
    model = definition(block.model_id)
    found = [(p.name, p.offset, p) for p in model.points]
    for index in range(SIMULATED_INSTANCES if model.group_points else 0):
        start = model.fixed_size + index * model.group_size
        found += [
            (f"{model.group_name}[{index + 1}].{p.name}", start + p.offset, p)
            for p in model.group_points
        ]
    return [(n, o, p) for n, o, p in found if o + p.size <= block.length + 2]


def _simulated_raw(block: ModelBlock, point: SunSpecPoint, offset: int) -> list[int]:
    """A register's content before any value is set: the header, or "not implemented"."""
    if offset == 0:
        return [block.model_id]
    if offset == 1:
        return [block.length]
    if point.type == "count":
        return [SIMULATED_INSTANCES]
    stored, unimplemented = TYPES.get(point.type, ("uint16", 0))
    if stored == "float32":
        return [0x7FC0, 0][: point.size]
    if unimplemented is None or stored == "string":
        return [0] * point.size
    raw = int(unimplemented)
    return [(raw >> (16 * (point.size - 1 - i))) & 0xFFFF for i in range(point.size)]


def _simulated_exponent(name: str) -> int:
    """Scale factors as inverters use them: whole watts and watt-hours, centi-amperes and
    centi-hertz, tenths of the rest."""
    if name.startswith(("W_", "VA_", "VAr_", "WH_", "DCW_", "DCWH_", "TotWh", "TotVAh")):
        return 0
    if name.startswith(("A_", "Hz_", "DCA_")):
        return -2
    return -1
