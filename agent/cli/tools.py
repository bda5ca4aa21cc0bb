"""The technician's tools behind ``edge-agent check --plan``, ``read`` and ``templates``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from .. import registry
from ..api import PLAN_NOTES, Describes, DriverContext, KeepsRaw, ShipsTemplates, local_bus
from ..api.keys import suggest
from ..clock import Clock
from ..config import BusConfig, Config, DeviceConfig, PointConfig, TemplateConfig
from ..errors import AgentError
from ..model import Poll
from ..service.lock import data_dir_lock
from ..store.buffer import BUFFER_FILE, BufferStats, open_buffer
from ..store.inspect import stored_samples, stored_stats


class UsageError(AgentError, ValueError):
    """The command line names something the configuration does not have."""


def find_device(config: Config, name: str) -> DeviceConfig:
    names = [d.name for d in config.devices]
    if name not in names:
        raise UsageError(
            f'no device named "{name}"{suggest(name, names)}; devices: {", ".join(names)}'
        )
    return config.device(name)


def find_bus(config: Config, name: str) -> BusConfig:
    names = [b.name for b in config.buses]
    if name not in names:
        raise UsageError(f'no bus named "{name}"{suggest(name, names)}; buses: {", ".join(names)}')
    return config.bus(name)


def plan_lines(config: Config) -> list[str]:
    """Per device, the requests one poll makes: what ``check --plan`` prints and start-up logs."""
    owners = [(bus, registry.bus_driver(bus, config.devices)) for bus in config.buses]
    owners += [(local_bus(d), d.driver) for d in config.devices if not d.bus]
    lines = []
    for bus, name in owners:
        if name is None:
            continue
        driver_class = registry.load_driver(name)
        # The running agent's state: what its drivers learned (a Modbus unit's missing points).
        context = DriverContext(state_dir=config.agent.state_dir)
        driver = registry.build_driver(driver_class, bus, context)
        addressed = "unit" in registry.options(driver_class, "device")
        local = bus.type == "local"
        devices = [config.device(bus.name)] if local else config.devices_on(bus.name)
        for device in devices:
            requests = driver.describe(device) if isinstance(driver, Describes) else []
            reads = [r for r in requests if not r.startswith(PLAN_NOTES)]
            where = "on no bus" if local else f"bus {bus.name}"
            if addressed:
                where += f", unit {device.unit}"
            lines.append(
                f"device {device.name} ({where}, every {device.interval:g}s): "
                f"{len(reads)} request(s) for {len(device.points)} point(s)"
            )
            lines.extend(f"  {r}" for r in requests)
    return lines


#: How a point's raw registers or bits are shown: the driver's ``show_raw``.
ShowRaw = Callable[[PointConfig, tuple[int, ...]], str]


async def read_device(
    config: Config, device_name: str, point_names: Sequence[str]
) -> tuple[Poll, ShowRaw]:
    """One poll of one device now, with the raw registers behind each value, and how they
    are shown."""
    device = find_device(config, device_name)
    if point_names:
        known = {p.name: p for p in device.points}
        for name in point_names:
            if name not in known:
                raise UsageError(
                    f'device {device.name} has no point "{name}"{suggest(name, known)}; '
                    f"points: {', '.join(known)}"
                )
        # keep the points the chosen ones need (the exponents they are scaled by)
        wanted = set(point_names) | {n for p in point_names for n in known[p].needs}
        device = replace(device, points=tuple(p for p in device.points if p.name in wanted))
    bus = config.bus(device.bus) if device.bus else local_bus(device)
    # The running agent owns the data dir: a driver's kept state is not touched from here.
    context = DriverContext(devices=(device,))
    driver = registry.build_driver(registry.load_driver(device.driver), bus, context)
    show: ShowRaw = _show_raw
    if isinstance(driver, KeepsRaw):
        driver.keep_raw = True
        show = driver.show_raw
    async with driver:
        return await driver.read(device), show


def _show_raw(point: PointConfig, raw: tuple[int, ...]) -> str:
    return " ".join(str(r) for r in raw)


def print_poll(
    device: DeviceConfig,
    poll: Poll,
    points: Sequence[str],
    as_json: bool,
    out: TextIO = sys.stdout,
    show: ShowRaw = _show_raw,
) -> None:
    """The poll as a table (point, value, unit, raw registers) or as JSON."""
    shown = [p for p in device.points if not points or p.name in points]
    if as_json:
        payload: dict[str, Any] = {
            "device": device.name,
            "ts": Clock().wall_ms(),
            "values": {p.name: poll.values[p.name] for p in shown if p.name in poll.values},
            "raw": {p.name: list(poll.raw[p.name]) for p in shown if p.name in poll.raw},
            "errors": list(poll.errors),
            "missing": [name for name in poll.missing if name in {p.name for p in shown}],
        }
        print(json.dumps(payload, ensure_ascii=False), file=out)
        return
    rows = [("point", "value", "unit", "raw")]
    for p in shown:
        # no reading this time ("—"), or none to be had from this unit
        value = poll.values.get(p.name, "lacks it" if p.name in poll.missing else "—")
        raw = show(p, poll.raw[p.name]) if p.name in poll.raw else ""
        rows.append((p.name, str(value), p.unit, raw))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[3],
            file=out,
        )
    for error in poll.errors:
        print(f"error: {error}", file=out)


def template_lines(templates: Sequence[TemplateConfig]) -> list[str]:
    """One line per template: name, number of points, description."""
    width = max((len(t.name) for t in templates), default=0)
    return [
        f"{t.name.ljust(width)}  {len(t.points):3d} points  {t.description}".rstrip()
        for t in sorted(templates, key=lambda t: t.name)
    ]


def template_detail(template: TemplateConfig) -> list[str]:
    """A template's points: where each lives and how it is decoded."""
    lines = [
        f"template {template.name}: {template.description}".rstrip(": "),
        f"source: {template.source}",
    ]
    driver = registry.load_driver(template.driver)
    for p in template.points:
        shown = driver.describe_point(p) if isinstance(driver, ShipsTemplates) else ""
        lines.append(f"  {p.name:<20} {shown}".rstrip())
    return lines


def find_template(templates: Sequence[TemplateConfig], name: str) -> TemplateConfig:
    names = [t.name for t in templates]
    if name not in names:
        raise UsageError(
            f'no template named "{name}"{suggest(name, names)}; run `edge-agent templates`'
        )
    return next(t for t in templates if t.name == name)


def buffer_command(
    config: Config, action: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """``edge-agent buffer stats|export|purge``: stats and export read what the buffer's files
    hold, committed or in the agent's journal (safe while the agent runs); purge needs the agent
    stopped."""
    path = config.agent.data_dir / BUFFER_FILE
    if action == "stats":
        _print_stats(path, stored_stats(path), config.buffer.max_size, out)
        return 0
    if action == "export":

        def say(problem: str) -> None:
            print(f"edge-agent buffer export: {problem}", file=err)

        for sample in stored_samples(path, damaged=say):
            print(json.dumps(sample.to_json(), ensure_ascii=False), file=out)
        return 0
    with data_dir_lock(config.agent.data_dir):
        buffer = open_buffer(
            config.agent.data_dir,
            config.buffer.max_size,
            config.buffer.flush_interval,
            boot=Clock().boot_id(),
        ).open()
        count = buffer.purge()
        buffer.close()
    print(f"buffer {path}: purged {count} sample(s); ids continue from {buffer.next_id}", file=out)
    return 0


def _print_stats(path: Path, stats: BufferStats, bound: int, out: TextIO) -> None:
    oldest = (
        "none"
        if stats.oldest_ts is None
        else f"{stats.oldest_ts} ({(Clock().wall_ms() - stats.oldest_ts) / 1000:.0f} s old)"
    )
    memory = f", {stats.in_memory} in memory only" if stats.in_memory else ""
    print(f"buffer {path}", file=out)
    print(f"  waiting samples:  {stats.depth} ({stats.on_disk} committed{memory})", file=out)
    print(f"  oldest sample:    {oldest}", file=out)
    print(f"  size on disk:     {stats.bytes} bytes (bound {bound})", file=out)
    print(f"  dropped (ever):   {stats.dropped}", file=out)
    print(f"  lost to damage:   {stats.lost}", file=out)
    print(f"  next id:          {stats.next_id}", file=out)
