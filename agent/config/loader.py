"""Load and validate the configuration: every problem at once, each with file, line and key path."""

from __future__ import annotations

import collections
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from .. import registry
from ..api import keys as conv
from ..api.config import (
    LINE_KEYS,
    BusConfig,
    BusType,
    DeviceConfig,
    PointConfig,
    TemplateConfig,
    local_bus,
)
from ..api.driver import BuildsPoints, Driver, ShipsTemplates
from ..api.keys import suggest
from ..errors import ConfigError, DriverError, Problem
from .mqtt import MqttTable
from .mqtt_limits import (
    MAX_AGENT_ID,
    length_problem,
)
from .remote import load_remote
from .sections import Problems, Section
from .source import SourceFile, TomlSyntaxError, glob_match, parse_toml, read_toml
from .sparkplug import load_sparkplug
from .types import AgentSection, BufferSection, Config
from .web import load_web


class _HasName(Protocol):
    @property
    def name(self) -> str: ...


_Named = TypeVar("_Named", bound=_HasName)

DEFAULT_INTERVAL = 10.0
_TOP_LEVEL = ("agent", "buffer", "mqtt", "web", "remote", "sparkplug", "bus", "device", "template")
_INCLUDED_TOP_LEVEL = ("bus", "device", "template")
#: The driver whose points a ``[[template]]`` holds when it names none: templates began as
#: Modbus register maps, and a configuration written then must keep its meaning.
DEFAULT_TEMPLATE_DRIVER = "modbus"


def load_config(
    path: Path,
    environ: Mapping[str, str] | None = None,
    texts: Mapping[str, str] | None = None,
) -> tuple[Config, list[Problem]]:
    """The validated configuration and its warnings; ``ConfigError`` lists every problem.

    ``texts``: the files as they would be (name relative to ``path``'s folder → text), read
    instead of the disk's — ``path``'s own name among them — and the only files includes match:
    a configuration pushed over MQTT is checked where it will be written, before it is."""
    env = os.environ if environ is None else environ
    loader = _Loader(path, env, texts)
    config = loader.load()
    if config is None or loader.problems.errors:
        raise ConfigError(loader.problems.items)
    return config, loader.problems.warnings


def builtin_templates() -> list[TemplateConfig]:
    """The templates every registered driver ships, without any configuration."""
    loader = _Loader(Path("."), {})
    templates = [t for name in registry.driver_names() for t in loader.shipped_templates(name)]
    if loader.problems.errors:
        raise ConfigError(loader.problems.items)
    return templates


class _Loader:
    def __init__(
        self, path: Path, environ: Mapping[str, str], texts: Mapping[str, str] | None = None
    ) -> None:
        self.path = path
        self.environ = environ
        self.texts = texts
        self.problems = Problems()
        #: "device.NAME" → the file and line of the first table of that name.
        self._first_tables: dict[str, tuple[str, int]] = {}
        #: id() of each loaded bus and device → the place key of its table (see Problems).
        self._place: dict[int, str] = {}
        #: Bus name → the driver that brings its type ("" for a serial bus).
        self._bus_owner: dict[str, str] = {}
        #: Driver name → the templates it ships, read once.
        self._shipped: dict[str, list[TemplateConfig]] = {}
        self._registry = registry.Registry()

    def load(self) -> Config | None:
        main = self._read(self.path)
        if main is None:
            return None
        root = Section(main, main.data, (), "", self.problems, self.environ)
        agent = self._agent(root)
        buffer = self._buffer(root)
        mqtt = MqttTable(self._relative).load(self._table(root, "mqtt"), agent.id)
        web = load_web(self._table(root, "web"), self._relative)
        remote = load_remote(self._table(root, "remote"))
        sparkplug = load_sparkplug(self._table(root, "sparkplug"), agent.id)
        if sparkplug.enabled and (remote.config or remote.diagnostics):
            root.problem(
                "remote",
                "is served by the JSON topics only: with [sparkplug] enabled nothing takes "
                "config/set or diag/*",
                warning=True,
            )
        files = [root, *self._includes(agent)]
        buses = [b for f in files for b in self._buses(f)]
        user_templates = [t for f in files for t in self._templates(f, self._first_tables)]
        devices = [d for f in files for d in self._devices(f, buses, user_templates)]
        for section in files:
            section.finish()
        buses = self._with_line_defaults(buses, devices)
        self._check_drivers(buses, devices)
        # A user template of the same name replaces the shipped one: a technician's fixed copy.
        shipped = [t for found in self._shipped.values() for t in found]
        templates = ({t.name: t for t in shipped} | {t.name: t for t in user_templates}).values()
        base = self.path.parent
        texts = tuple((_relative_name(f.source.path, base), f.source.text) for f in files)
        return Config(
            self.path,
            agent,
            buffer,
            mqtt,
            tuple(buses),
            tuple(devices),
            tuple(templates),
            web,
            remote,
            sparkplug,
            texts,
        )

    def _read(self, path: Path, written: bool = True) -> SourceFile | None:
        """The file ``path``; ``written``: one of the configuration's (the main file or an
        include), read from ``texts`` when those are given; else one the agent ships."""
        try:
            if written and self.texts is not None:
                name = _relative_name(path, self.path.parent)
                if name not in self.texts:
                    raise FileNotFoundError(name)
                return parse_toml(path, self.texts[name])
            return read_toml(path)
        except TomlSyntaxError as exc:
            self.problems.add(Problem(str(path), exc.line, "(syntax)", f"invalid TOML: {exc}"))
        except FileNotFoundError:
            self.problems.add(Problem(str(path), 0, "(file)", "no such file: create it or pass -c"))
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.add(Problem(str(path), 0, "(file)", f"cannot read: {exc}"))
        return None

    # --- [agent], [buffer], [mqtt]

    def _table(self, root: Section, key: str) -> Section:
        data = root.data.get(key, {})
        if not isinstance(data, dict):
            root.problem(key, f"must be a [{key}] table")
            data = {}
        return root.child(key, (key,), key, data)

    def _agent(self, root: Section) -> AgentSection:
        s = self._table(root, "agent")
        agent_id = s.take("id", _agent_id, _host_name()) or "gateway"
        default_dir = self.environ.get("STATE_DIRECTORY", "/var/lib/edge-agent").split(":")[0]
        data_dir = self._relative(s.take("data_dir", conv.text, default_dir) or default_dir)
        _check_data_dir(s, data_dir)
        include = s.take("include", conv.strings, ()) or ()
        levels = ("debug", "info", "warning", "error")
        log_level = s.take("log_level", conv.one_of(*levels), "info") or "info"
        s.finish()
        return AgentSection(agent_id, data_dir, log_level, include)

    def _buffer(self, root: Section) -> BufferSection:
        s = self._table(root, "buffer")
        default = BufferSection()
        result = BufferSection(
            max_size=s.take("max_size", conv.size, default.max_size) or default.max_size,
            flush_interval=s.take("flush_interval", conv.positive_duration, 1.0) or 1.0,
        )
        s.finish()
        return result

    # --- includes, [[bus]], [[template]], [[device]]

    def _includes(self, agent: AgentSection) -> list[Section]:
        base = self.path.parent
        sections = []
        # Each file once, and never the main one again: two patterns (or "*.toml" beside the
        # config) matching one file would make every table in it a duplicate of itself.
        read = {self.path.resolve()}
        for pattern in agent.include:
            for file in self._matches(base, pattern):
                if file.resolve() in read:
                    continue
                read.add(file.resolve())
                source = self._read(file)
                if source is not None:
                    sections.append(self._included(source))
        return sections

    def _matches(self, base: Path, pattern: str) -> list[Path]:
        """The files ``pattern`` matches; pathlib refuses some patterns with an exception."""
        problem = None
        if not pattern:
            problem = 'an empty pattern matches nothing: write e.g. "conf.d/*.toml"'
        elif Path(pattern).is_absolute():
            problem = "is absolute: write the pattern relative to the config file's directory"
        elif self.texts is not None:
            return [base / name for name in sorted(self.texts) if glob_match(name, pattern)]
        else:
            try:
                return included_on_disk(base, pattern)
            except ValueError as exc:  # "**" inside a name
                problem = str(exc)
        self.problems.at("agent.include", f"{conv.shown(pattern)}: {problem}")
        return []

    def _included(self, source: SourceFile) -> Section:
        section = Section(source, source.data, (), "", self.problems, self.environ)
        for key in source.data:
            if key not in _INCLUDED_TOP_LEVEL:
                section.problem(
                    key, "an included file may hold only [[bus]], [[device]] and [[template]]"
                )
                section.take(key, lambda v: v, None)
        return section

    def _buses(self, root: Section) -> list[BusConfig]:
        result = []
        for index, data in root.tables("bus"):
            s = root.child("bus", index, f"bus.{data.get('name', index[-1])}", data)
            bus_name = s.take("name", conv.name)
            _say_if_named_before(s, "bus", bus_name, self._first_tables)
            bus, owner = _bus(s, bus_name, self._registry)
            s.finish()
            if bus:
                self._place[id(bus)] = s.place
                self._bus_owner[bus.name] = owner
                result.append(bus)
        return result

    def _with_line_defaults(
        self, buses: list[BusConfig], devices: list[DeviceConfig]
    ) -> list[BusConfig]:
        """Each serial bus with the line settings its devices' driver prescribes (DL/T 645's
        2400 8E1), where its table writes none of its own."""
        return [
            self._line_defaulted(bus, {d.driver for d in devices if d.bus == bus.name})
            for bus in buses
        ]

    def _line_defaulted(self, bus: BusConfig, drivers: set[str]) -> BusConfig:
        if not bus.serial or len(drivers) != 1:
            return bus
        try:
            driver = self._registry.load_driver(drivers.pop())
        except DriverError:
            return bus  # said where a device names it
        defaulted = bus.line_defaulted(registry.line_defaults(driver))
        self._place[id(defaulted)] = self._place[id(bus)]
        return defaulted

    def _templates(
        self,
        root: Section,
        first_tables: dict[str, tuple[str, int]],
        default_driver: str = DEFAULT_TEMPLATE_DRIVER,
    ) -> list[TemplateConfig]:
        result = []
        for index, data in root.tables("template"):
            s = root.child("template", index, f"template.{data.get('name', index[-1])}", data)
            template_name = s.take("name", conv.name)
            _say_if_named_before(s, "template", template_name, first_tables)
            description = s.take("description", conv.utf8_text, "") or ""
            driver_name = s.take("driver", conv.text, default_driver) or ""
            driver = self._driver_class(s, driver_name, None) if driver_name else None
            if driver is None:
                s.ignore_rest()
                continue
            placed = self._points(s, driver)
            s.finish()
            points = tuple(point for point, _ in placed)
            _check_points(s.path, driver, placed, points)
            if template_name:
                source = str(s.source.path)
                result.append(
                    TemplateConfig(template_name, points, source, description, driver_name)
                )
        return result

    def shipped_templates(self, driver_name: str) -> list[TemplateConfig]:
        """The templates ``driver_name`` ships, one or more per file of its templates_dir."""
        if driver_name in self._shipped:
            return self._shipped[driver_name]
        result = self._shipped[driver_name] = []
        try:
            driver = self._registry.load_driver(driver_name)
        except DriverError:
            return result  # said where the driver is named
        if not isinstance(driver, ShipsTemplates):
            return result
        first_tables: dict[str, tuple[str, int]] = {}  # a user's may replace one: apart
        for file in sorted(driver.templates_dir.glob("*.toml")):
            source = self._read(file, written=False)
            if source is not None:
                root = Section(source, source.data, (), "", self.problems, self.environ)
                result.extend(self._templates(root, first_tables, driver_name))
                root.finish()
        return result

    def _devices(
        self, root: Section, buses: list[BusConfig], templates: list[TemplateConfig]
    ) -> list[DeviceConfig]:
        result = []
        bus_by_name = {b.name: b for b in buses}
        for index, data in root.tables("device"):
            s = root.child("device", index, f"device.{data.get('name', index[-1])}", data)
            device_name = s.take("name", conv.name)
            _say_if_named_before(s, "device", device_name, self._first_tables)
            device = self._device(s, device_name, bus_by_name, templates)
            s.finish()
            if device:
                self._place[id(device)] = s.place
                result.append(device)
        return result

    def _device(
        self,
        s: Section,
        device_name: str | None,
        bus_by_name: Mapping[str, BusConfig],
        templates: list[TemplateConfig],
    ) -> DeviceConfig | None:
        bus_name = s.take("bus", conv.text, None)
        bus = bus_by_name.get(bus_name or "")
        implied = self._bus_owner.get(bus.name, "") if bus else ""
        driver_name = s.take("driver", conv.text, implied) or implied
        driver = self._device_driver(s, driver_name, bus_name, bus, implied, bus_by_name)
        if driver is None:
            s.ignore_rest()  # its keys are the driver's to judge, and it has none
            return None
        interval = s.take("interval", conv.positive_duration, DEFAULT_INTERVAL) or DEFAULT_INTERVAL
        own = registry.options(driver, "device")
        options = {
            k: v for k, convert in own.items() if (v := s.take(k, convert, None)) is not None
        }
        # A key that failed is reported already; the driver judges only devices that loaded whole.
        failed = any(key in s.data and key not in options for key in own)
        points = self._device_points(s, driver, driver_name, templates)
        if bus and bus.timeout > interval:
            s.problem(
                "interval",
                f"bus {bus.name} timeout ({bus.timeout:g}s) is longer than the interval "
                f"({interval:g}s): a silent device will make polls overrun",
                warning=True,
            )
        if not device_name or not (bus or registry.is_local(driver)) or failed:
            return None
        template = cast(str | None, s.data.get("template"))
        unit = int(options.pop("unit", 1 if "unit" in own else 0))
        bus_of = bus.name if bus else ""
        return DeviceConfig(
            device_name, bus_of, driver_name, interval, unit, template, points, options
        )

    def _device_driver(
        self,
        s: Section,
        driver_name: str,
        bus_name: str | None,
        bus: BusConfig | None,
        implied: str,
        bus_by_name: Mapping[str, BusConfig],
    ) -> type[Driver] | None:
        """The device's driver, or None after saying why it has none that fits its bus."""
        if bus and not driver_name:
            s.problem(
                "driver",
                f'is required: a device on a {bus.type} bus names its driver, e.g. "serial-line"',
            )
        driver = (
            self._driver_class(s, driver_name, bus_name) if driver_name or not bus_name else None
        )
        local = driver is not None and registry.is_local(driver)
        if local and bus_name:
            s.problem("bus", f"a {driver_name} device is on no bus: remove bus")
        elif bus_name and not bus:
            s.problem("bus", f'no bus named "{bus_name}"{suggest(bus_name, bus_by_name)}')
        elif not bus_name and driver is not None and not local:
            types = ", ".join(registry.bus_types(driver))
            s.problem("bus", f"is required: {driver_name} devices are on a bus ({types})")
        elif bus and implied and driver_name != implied:
            s.problem("driver", f'a device on a {bus.type} bus uses the "{implied}" driver')
        elif bus and driver and bus.type not in registry.bus_types(driver):
            s.problem("driver", f"the {driver_name} driver does not run on a {bus.type} bus")
            driver = None
        return driver

    def _driver_class(self, s: Section, name: str, bus_name: str | None) -> type[Driver] | None:
        """The device's driver class, or None after saying why there is none."""
        if not name:
            if not bus_name:
                s.problem(None, 'needs a bus (Modbus devices) or a driver, e.g. driver = "system"')
            return None
        try:
            return self._registry.load_driver(name)
        except DriverError as exc:
            s.problem("driver", str(exc))
            return None

    def _device_points(
        self, s: Section, driver: type[Driver], driver_name: str, templates: list[TemplateConfig]
    ) -> tuple[PointConfig, ...]:
        points: list[PointConfig] = []
        usable = {t.name: t for t in self.shipped_templates(driver_name)} | {
            t.name: t for t in templates if t.driver == driver_name
        }
        # a driver without templates has no template key: an unknown key like any other
        takes_template = usable or isinstance(driver, ShipsTemplates)
        template_name = s.take("template", conv.text, None) if takes_template else None
        found = usable.get(template_name or "")
        if found:
            points.extend(found.points)
        elif template_name is not None:
            s.problem(
                "template",
                f'no template named "{template_name}"{suggest(template_name, usable)}',
            )
        own = self._points(s, driver)
        inherited = {p.name for p in points}
        for point, section in own:
            if found and point.name in inherited:
                section.problem(
                    "name",
                    f'point "{point.name}" is also defined by template {found.name} '
                    f"({found.source}): rename or remove one",
                )
        points.extend(point for point, _ in own)
        _check_points(s.path, driver, own, points)
        if not points and template_name is None and not s.has("point"):
            hint = " or a template" if usable else ""
            s.problem(None, f"has no points: add [[device.point]] tables{hint}")
        return tuple(points)

    def _points(self, owner: Section, driver: type[Driver]) -> list[tuple[PointConfig, Section]]:
        """The owner's ``[[…point]]`` tables, each with its section (where its problems are
        said), as ``driver`` builds them."""
        result: list[tuple[PointConfig, Section]] = []
        first_tables: dict[str, tuple[str, int]] = {}
        for index, data in owner.tables("point"):
            path = f"{owner.path}.point.{data.get('name', index[-1])}"
            section = owner.child("point", index, path, data)
            point_name = section.take("name", conv.name)
            if point_name is not None and point_name in first_tables:
                file, line = first_tables[point_name]
                section.problem(
                    "name",
                    f'another point of {owner.path} is named "{point_name}", at {file}:{line}: '
                    "rename or remove one",
                )
            elif point_name is not None:
                first_tables[point_name] = (str(section.source.path), section.line())
            point = _point(section, point_name, driver)
            if point is not None:
                result.append((point, section))
        return result

    # --- cross-checks

    def _check_drivers(self, buses: list[BusConfig], devices: list[DeviceConfig]) -> None:
        """Each bus's driver validates what only it knows; no I/O happens here.

        A driver names what it finds by key path (``device.NAME…``), which two tables of one
        name share: it is asked once per duplicate, each time with names that are unique, so
        that each of its findings is said at the table it is about.
        """
        rounds = max(_most_of_one_name(buses), _most_of_one_name(devices))
        for round_buses, round_devices in zip(
            _unique_rounds(buses, rounds), _unique_rounds(devices, rounds), strict=True
        ):
            places = {
                **{f"bus.{b.name}": self._place[id(b)] for b in round_buses},
                **{f"device.{d.name}": self._place[id(d)] for d in round_devices},
            }
            for path, message in self._driver_findings(round_buses, round_devices):
                self.problems.at(path, message, place=_placed(path, places))

    def _driver_findings(
        self, buses: list[BusConfig], devices: list[DeviceConfig]
    ) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for bus in buses:
            on_bus = [d for d in devices if d.bus == bus.name]
            names = sorted({d.driver for d in on_bus} | ({self._bus_owner[bus.name]} - {""}))
            if len(names) > 1:  # only on a serial bus: each device names its driver
                found.append(
                    (
                        f"bus.{bus.name}",
                        f"its devices use different drivers ({', '.join(names)}): one port "
                        "is one driver's; put them on buses of their own",
                    )
                )
                continue
            if names:
                found.extend(self._registry.load_driver(names[0]).validate(bus, on_bus))
        for device in devices:
            if not device.bus:
                local = self._registry.load_driver(device.driver)
                found.extend(local.validate(local_bus(device), [device]))
        return found

    def _relative(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.path.parent / path

    def _optional_path(self, value: str | None) -> Path | None:
        return None if value is None else self._relative(value)


def _point(s: Section, point_name: str | None, driver: type[Driver]) -> PointConfig | None:
    """A point: the keys every point has, then the driver's own. A point with a problem is
    left out, so that its driver sees only points that parsed."""
    before = len(s.problems.errors)
    common: dict[str, Any] = {
        "scale": s.take("scale", conv.number, 1.0),
        "offset": s.take("offset", conv.number, 0.0),
        "unit": s.take("unit", conv.utf8_text, ""),  # sent in meta
        "deadband": s.take("deadband", conv.number, None),
        "heartbeat": s.take("heartbeat", conv.positive_duration, None),
        "writable": s.take("writable", conv.boolean, False),
        "min": s.take("min", conv.number, None),
        "max": s.take("max", conv.number, None),
    }
    base = PointConfig(name=point_name or "", **common)
    point: PointConfig | None = base
    if isinstance(driver, BuildsPoints):
        point = driver.build_point(base, s)
    else:
        own = registry.options(driver, "point")
        options = {k: v for k, c in own.items() if (v := s.take(k, c, None)) is not None}
        point = replace(base, options=options)
    s.finish()
    if point is None or point_name is None or len(s.problems.errors) > before:
        return None
    return point


def _check_points(
    owner: str,
    driver: type[Driver],
    mine: Sequence[tuple[PointConfig, Section]],
    points: Sequence[PointConfig],
) -> None:
    """The driver's checks of ``mine`` among all the owner's ``points``, said at each point."""
    if not isinstance(driver, BuildsPoints):
        return
    sections = {point.name: section for point, section in mine}
    for name, key, message in driver.check_points(owner, [p for p, _ in mine], points):
        sections[name].problem(key, message)


def _say_if_named_before(
    s: Section, kind: str, name: str | None, first_tables: dict[str, tuple[str, int]]
) -> None:
    """Say so when a table of ``kind`` has the name of an earlier one: at this one, the
    later, which is the one to rename, naming where the first is."""
    if name is None:
        return
    first = first_tables.get(f"{kind}.{name}")
    if first is None:
        first_tables[f"{kind}.{name}"] = (str(s.source.path), s.line())
    else:
        s.problem(
            None,
            f'two [[{kind}]] tables are named "{name}"; the first is at '
            f"{first[0]}:{first[1]}: rename or remove one",
        )


def _most_of_one_name(items: Sequence[_Named]) -> int:
    """How many of ``items`` share the most shared name (1 when all are unique)."""
    counts = collections.Counter(item.name for item in items)
    return max(counts.values(), default=1)


def _unique_rounds(items: Sequence[_Named], rounds: int) -> list[list[_Named]]:
    """``rounds`` lists of ``items`` with each name once: the first of each name, then the
    second of names written twice (and the only one of the others), and so on."""
    by_name: dict[str, list[_Named]] = {}
    for item in items:
        by_name.setdefault(item.name, []).append(item)
    return [[same[min(n, len(same) - 1)] for same in by_name.values()] for n in range(rounds)]


def _placed(path: str, places: Mapping[str, str]) -> str:
    """``path`` (``device.NAME.…``) with its table's part replaced by that table's place key."""
    table = ".".join(path.split(".")[:2])
    place = places.get(table)
    return path if place is None else place + path[len(table) :]


def _bus(
    s: Section, bus_name: str | None, installed: registry.Registry
) -> tuple[BusConfig | None, str]:
    """One ``[[bus]]`` and the driver that brings its type (``""``: its devices name theirs).
    Network buses take host and port, serial ones a port path and the line settings."""
    kind, owner = _bus_type(s, installed)
    d = BusConfig("", "")
    common: dict[str, Any] = {
        "timeout": s.take("timeout", conv.positive_duration, d.timeout),
        "request_gap": s.take("request_gap", conv.duration, d.request_gap),
    }
    if kind is None:
        s.ignore_rest()
        return None, ""
    if kind.link == "serial":
        link: dict[str, Any] = {
            "serial_port": s.take("port", conv.utf8_text),  # named in health and status
            "baudrate": s.take("baudrate", conv.in_range(50, 4_000_000), d.baudrate),
            "parity": s.take("parity", conv.one_of("N", "E", "O"), d.parity),
            "stopbits": s.take("stopbits", conv.in_range(1, 2), d.stopbits),
            "bytesize": s.take("bytesize", conv.in_range(7, 8), d.bytesize),
        }
    else:
        link = {
            "host": s.take("host", conv.utf8_text),
            "port": s.take("port", conv.in_range(1, 65535), kind.default_port),
        }
    own = registry.options(installed.load_driver(owner), "bus") if owner else {}
    options = {k: v for k, c in own.items() if (v := s.take(k, c, None)) is not None}
    failed = any(key in s.data and key not in options for key in own)
    if bus_name is None or None in link.values() or None in common.values() or failed:
        return None, owner
    written = frozenset(LINE_KEYS) & frozenset(s.data) if kind.link == "serial" else frozenset()
    bus = BusConfig(bus_name, kind.name, **link, **common, options=options, line_written=written)
    return bus, owner


def _bus_type(s: Section, installed: registry.Registry) -> tuple[BusType | None, str]:
    """The bus's type, and the driver that brings it; ``None`` after saying what is wrong."""
    names = installed.bus_type_choices(s.data.get("type"))
    type_name = s.take("type", conv.one_of(*names))
    if type_name is None:
        return None, ""
    try:
        kind, owner = installed.bus_type(type_name)
    except DriverError as exc:
        s.problem("type", str(exc))
        return None, ""
    return kind, owner or ""


def _agent_id(value: Any) -> str:
    result = conv.name(value)
    why = "it names this gateway in every topic and on every dashboard"
    if problem := length_problem(result, MAX_AGENT_ID, why):
        raise ValueError(problem)
    return result


def _check_data_dir(s: Section, data_dir: Path) -> None:
    """A data_dir that is a file (or under one) cannot be made a directory: a config mistake.
    One that is missing or read-only is not: the agent says so when it starts."""
    for path in (data_dir, *data_dir.parents):
        try:
            if path.is_dir():
                return
            if path.exists():
                what = "is a file, not a directory" if path.is_file() else "is not a directory"
                where = str(data_dir) if path == data_dir else f"{path} (part of {data_dir})"
                s.problem("data_dir", f"{what}: {where}")
                return
        except OSError:  # cannot look (permissions): the agent will tell at start
            return


def _host_name() -> str:
    """The default agent id: the host name, cut to what is valid in a topic."""
    host = socket.gethostname().split(".")[0]
    cleaned = "".join(c if c.isalnum() or c in "_-" else "-" for c in host)
    return cleaned[:MAX_AGENT_ID] or "gateway"


def _relative_name(path: Path, base: Path) -> str:
    """``path`` as written relative to the main file's folder (as an include pattern sees it)."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:  # not below it (a symlinked folder): its whole path
        return path.as_posix()


def included_on_disk(base: Path, pattern: str) -> list[Path]:
    """The files below ``base`` an include ``pattern`` matches on disk: never a hidden one (a
    push's journal, an editor's swap file). ``ValueError`` for a pattern pathlib refuses."""
    return sorted(p for p in base.glob(pattern) if not _hidden(p, base))


def _hidden(path: Path, base: Path) -> bool:
    """Whether a part of ``path`` below ``base`` starts with a dot."""
    return any(part.startswith(".") for part in path.relative_to(base).parts)
