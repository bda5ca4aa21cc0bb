"""SunSpec devices as they are, not at fixed offsets: the ``SunS`` marker found at one of the
usual base addresses, the chain of models walked by each model's id and length (a common model
of 66 registers, or of 65 as older devices have it; models in any order), and each model's
points from the SunSpec definitions (``sunspec_models/``, the SunSpec Alliance's JSON, Apache
2.0: see its NOTICE).

Discovery reads through a callable (``read(address, count)`` → the registers, or ``None`` when
the unit refuses), so that the driver's own transactions, pacing and fault counting serve it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

#: "SunS" in two registers, where a SunSpec map starts.
MARKER = (0x5375, 0x6E53)
#: Where the marker is looked for, in this order (the specification's, and common practice).
BASES = (40000, 50000, 0)
#: The id that ends the chain.
END = 0xFFFF
#: More models than any device has: a chain that does not end is damaged (or not SunSpec).
MAX_MODELS = 64
MODELS_DIR = Path(__file__).parent / "sunspec_models"

log = logging.getLogger(__name__)

Read = Callable[[int, int], Awaitable[list[int] | None]]


@dataclass(frozen=True)
class ModelBlock:
    """One model of a device's chain: its id, the address of its id register, and its length
    (the registers after the id and length)."""

    model_id: int
    address: int
    length: int

    @property
    def end(self) -> int:
        """The address after the model."""
        return self.address + 2 + self.length


@dataclass(frozen=True)
class SunSpecPoint:
    """A point of a model: its offset from the model's id register (in a repeating group: from
    the group's start), its size in registers, its SunSpec type (``uint16``, ``int16``,
    ``acc32``, ``sunssf``, ``string``…), its unit, and the point holding its scale factor."""

    name: str
    offset: int
    size: int
    type: str
    scale_factor: str | None = None
    unit: str = ""


@dataclass(frozen=True)
class ModelDefinition:
    """A model as SunSpec defines it: its fixed part and, for models like 160 (MPPT), the
    repeating group (``module``) that fills the rest of the model's length."""

    model_id: int
    name: str
    points: tuple[SunSpecPoint, ...]
    group_name: str = ""
    group_points: tuple[SunSpecPoint, ...] = ()

    @property
    def fixed_size(self) -> int:
        """Registers of the fixed part, the id and length included."""
        return sum(p.size for p in self.points)

    @property
    def group_size(self) -> int:
        return sum(p.size for p in self.group_points)

    def point(self, name: str) -> SunSpecPoint | None:
        return next((p for p in self.points if p.name == name), None)

    def group_point(self, name: str) -> SunSpecPoint | None:
        return next((p for p in self.group_points if p.name == name), None)


class NotSunSpec(ValueError):
    """No SunSpec map where one was looked for, or a chain that makes no sense."""


class Silent(Exception):
    """``read`` got no answer at all (the message says so): at a base, the map may be at the
    next one; in the chain, the unit is gone."""


async def discover(read: Read, bases: tuple[int, ...] = BASES) -> list[ModelBlock]:
    """The device's models, in the order of its chain; ``NotSunSpec`` when no base holds the
    marker, or the chain runs past ``MAX_MODELS`` or the address space.

    ``read(address, count)`` returns the registers, ``None`` when the unit refuses them, or
    raises ``Silent``: a base where the unit is silent is passed over, as one that refuses (RTU
    units are often silent on registers they lack); ``Silent`` in the chain is raised.
    """
    silent = []
    for base in bases:
        try:
            found = await read(base, 2)
        except Silent:
            silent.append(base)
            continue
        if found == list(MARKER):
            return await _chain(read, base + 2)
    if len(silent) == len(bases):
        shown = ", ".join(str(b) for b in bases)
        raise NotSunSpec(f"no answer at {shown}, where a SunSpec map starts: is the unit there?")
    shown = ", ".join(str(b) for b in bases)
    quiet = f" (no answer at {', '.join(str(b) for b in silent)})" if silent else ""
    raise NotSunSpec(f'no SunSpec marker ("SunS") at {shown}{quiet}')


async def _chain(read: Read, address: int) -> list[ModelBlock]:
    models: list[ModelBlock] = []
    while len(models) < MAX_MODELS:
        header = await read(address, 2)
        if header is None or len(header) != 2:
            # The end model's id alone: some units have no length register after it.
            ident = await read(address, 1)
            if ident == [END]:
                return models
            if not models:
                raise NotSunSpec(f"the model header at {address} cannot be read")
            log.warning(
                "SunSpec: the chain ends at %d without an end model (0xFFFF): %d model(s) read",
                address,
                len(models),
            )
            return models
        model_id, length = header
        if model_id == END:
            return models
        block = ModelBlock(model_id, address, length)
        if block.end > 0x10000:
            raise NotSunSpec(f"model {model_id} at {address} runs past the address space")
        models.append(block)
        address = block.end
    raise NotSunSpec(f"the chain does not end within {MAX_MODELS} models")


@cache
def definition(model_id: int) -> ModelDefinition:
    """Model ``model_id`` as its shipped SunSpec JSON defines it; ``KeyError`` for a model
    edge-agent does not ship."""
    path = MODELS_DIR / f"model_{model_id}.json"
    if not path.is_file():
        raise KeyError(f"SunSpec model {model_id} is not one edge-agent reads")
    group = json.loads(path.read_text(encoding="utf-8"))["group"]
    repeating = group.get("groups", [])
    return ModelDefinition(
        model_id,
        group["name"],
        _points(group["points"]),
        repeating[0]["name"] if repeating else "",
        _points(repeating[0]["points"]) if repeating else (),
    )


def _points(items: list[dict[str, object]]) -> tuple[SunSpecPoint, ...]:
    points, offset = [], 0
    for item in items:
        size = int(str(item.get("size", 1)))
        sf = item.get("sf")
        unit = str(item.get("units", ""))
        points.append(
            SunSpecPoint(str(item["name"]), offset, size, str(item["type"]), _sf(sf), unit)
        )
        offset += size
    return tuple(points)


def _sf(value: object) -> str | None:
    return None if value is None else str(value)


def model_points(model_id: int) -> tuple[SunSpecPoint, ...]:
    """The points of the fixed part of model ``model_id``, with their offsets."""
    return definition(model_id).points


def known_models() -> list[int]:
    """The models whose definitions ship with edge-agent."""
    return sorted(int(p.stem.removeprefix("model_")) for p in MODELS_DIR.glob("model_*.json"))
