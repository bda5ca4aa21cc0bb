"""``gpio-input``, ``gpio-counter``, ``gpio-output``: contacts, pulses and relays on the gateway's
own GPIO pins, through gpiozero.

Devices of these drivers are on no bus (no ``bus`` key); each gets a driver of its own.

Pins are written as gpiozero accepts them: ``17``, ``"GPIO17"`` or ``"BCM17"`` (the chip's
numbering, what pinout diagrams call GPIO/BCM), ``"BOARD11"`` or ``"J8:11"`` (the physical pin of
the 40-pin header), ``"WPI0"`` (wiringPi); upper or lower case. The pin factory is gpiozero's own
choice: ``GPIOZERO_PIN_FACTORY`` when set (``lgpio``, ``rpigpio``, ``pigpio``, ``native``,
``mock``), else the first of lgpio, RPi.GPIO, pigpio, native that loads. gpiozero is imported
only when such a device is entered: ``edge-agent check`` of any configuration does not need it.
Where no factory loads, entering fails with one line naming what was tried and the fix; the agent
retries it with backoff while the other devices keep running.

``gpio-input`` — contacts (a door switch, a float switch, a pump's run signal). Each
``[[device.point]]`` is one pin; its value is ``true`` while the contact is active. Point keys:

* ``pin`` — required;
* ``pull`` — the pin's internal resistor: ``"up"`` (default: a contact wired from the pin to
  ground), ``"down"`` (a contact wired to 3.3 V) or ``"none"`` (the circuit has its own);
* ``active`` — the level that means ``true``: ``"high"`` or ``"low"``. Default: the opposite of
  the pull (a closed contact pulls the pin away from it); required with ``pull = "none"``.

``gpio-counter`` — pulses of one pin: a tipping-bucket rain gauge, a flow meter, an energy meter's
S0 output. Device keys:

* ``pin`` (required), ``pull``, ``active`` — as for ``gpio-input``; a pulse is counted when the
  pin turns active;
* ``debounce`` — a duration (default ``"10ms"``): an edge, either way, that comes sooner than
  this after the last accepted edge is contact bounce: ignored, and counted as ``bounces``. Reed
  and micro switches (rain gauges) settle within a few ms; 10 ms leaves them room and still
  counts 50 pulses a second. An electronic output (a Hall flow meter such as the YF-S201, up to
  ~225 Hz) does not bounce: set ``"0s"``, or below half its shortest period.

Point keys (the points are different measures of the same pulses):

* ``measure`` — required: ``"total"`` (every pulse counted, times ``scale``, plus ``offset``: kept
  across restarts) or ``"rate"`` (the pulses since the previous poll times ``scale``, per
  ``rate_per``; the first poll after start has none, as there is no previous poll);
* ``rate_per`` — with ``"rate"``: ``"s"`` (default), ``"min"`` or ``"h"``.

``scale`` is the amount per pulse (0.2794 mm for a Davis gauge; 1/450 L for a YF-S201, whose
F = 7.5·Q Hz with Q in L/min) and must be above 0. ``offset`` applies to a total: the meter's
reading when counting began.

The total is kept in ``<state dir>/<device>.json``, written atomically (a temporary file, then
renamed) when it changed, at most every ``SAVE_EVERY`` seconds and at stop, so an idle gauge
does not wear the SD card; a power cut loses at most that much. A file that cannot be read is
said once, in one line, and counting starts from 0.

``gpio-output`` — relays. Each ``[[device.point]]`` is one pin; its value is ``true`` while the
relay is on, and with ``writable = true`` it can be set (``write``; MQTT commands). Point keys:

* ``pin`` — required;
* ``active`` — the level that switches the relay on: ``"high"`` (default) or ``"low"`` (most
  opto-isolated relay boards);
* ``safe_state`` — ``false`` (default: off) or ``true``: set when the agent starts and again
  when it stops, before the pin is released. Wire the relay so that an undriven pin means the
  same state: after the agent the pin is an input again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from agent.api import (
    BusConfig,
    BusError,
    DeviceConfig,
    DeviceError,
    DriverContext,
    PointConfig,
    Poll,
    Value,
    scaled,
)
from agent.api import keys as conv
from agent.api.keys import Convert

log = logging.getLogger(__name__)

#: Contact bounce of reed and micro switches is over within a few ms.
DEFAULT_DEBOUNCE = 0.010
#: A debounce longer than this is a mistake (``debounce = 10`` is 10 s, not 10 ms).
MAX_DEBOUNCE = 1.0
#: Least time between two writes of a counter's total (and at stop, whatever the time).
SAVE_EVERY = 60.0
RATE_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0}
PULLS = ("up", "down", "none")
LEVELS = ("high", "low")
MEASURES = ("total", "rate")
#: Digits kept of computed values: 0.2794 * 3 is 0.8382, not 0.8382000000000001.
DECIMALS = 9

FACTORY_FIX = (
    "on a Raspberry Pi install lgpio into edge-agent's environment (pip install lgpio); "
    "to try the config without GPIO set GPIOZERO_PIN_FACTORY=mock"
)

_PIN = re.compile(r"(GPIO|BCM|BOARD|WPI|[A-Z][A-Z0-9]*:)?(\d+)")
#: The 40-pin header (every Pi since the B+): physical pin → GPIO number.
HEADER_40 = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10,
    21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19,
    36: 16, 37: 26, 38: 20, 40: 21,
}  # fmt: skip
HEADER_POWER = {1: "3.3 V", 17: "3.3 V", 2: "5 V", 4: "5 V"}


def pin_spec(value: Any) -> str:
    """A pin as gpiozero names it: ``17``, ``"bcm17"`` → ``"GPIO17"``; ``"board11"`` →
    ``"BOARD11"``; ``"J8:11"`` as written."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError('must be a GPIO number or a pin name, e.g. 17 or "GPIO17"')
    text = str(value).strip().upper()
    match = _PIN.fullmatch(text)
    if not match:
        raise ValueError(
            f'"{value}" is not a pin: write e.g. 17, "GPIO17", "BCM17" or "BOARD11" (header pin)'
        )
    prefix, number = match[1] or "GPIO", int(match[2])
    if prefix == "BCM":
        prefix = "GPIO"
    return f"{prefix}{number}"


def _header_pin(spec: str) -> int | None:
    """The physical pin number of a ``BOARDn``/``J8:n``/``P1:n`` spec, else None."""
    match = re.fullmatch(r"(?:BOARD|J8:|P1:)(\d+)", spec)
    return int(match[1]) if match else None


def pin_key(spec: str) -> str:
    """The GPIO a spec names where that can be known without the board (for duplicates)."""
    header = _header_pin(spec)
    if header is not None and header in HEADER_40:
        return f"GPIO{HEADER_40[header]}"
    return spec


def _pin_problem(spec: str) -> str:
    header = _header_pin(spec)
    if header is None or header in HEADER_40 or header > 40:
        return ""
    what = HEADER_POWER.get(header, "ground")
    return f"{spec} is a {what} pin of the 40-pin header, not a GPIO"


@dataclass
class _Count:
    """One counter device's pulses."""

    debounce: float
    total: int = 0  # every pulse counted: kept across restarts
    window: int = 0  # pulses since the previous poll
    since: float | None = None  # when the window began; None: no poll since the pin was opened
    last_edge: float | None = None  # when the last accepted edge happened
    saved: int = 0  # the total the state file holds
    saved_at: float = -math.inf
    #: Edges (pulse or not, when) from the pin's callbacks, not yet judged: appended on the
    #: pin library's thread, taken on the loop (a deque's append and popleft are thread-safe).
    edges: deque[tuple[bool, float]] = field(default_factory=deque)


_Self = TypeVar("_Self", bound="_GpioDriver")


class _GpioDriver:
    """What the three share: the pin factory, the gpiozero objects per device, their closing.

    A driver handed its ``devices`` opens their pins when entered (a counter counts from the
    start, a relay is put in its safe state at once); a device it was not handed is opened at its
    first poll. ``pin_factory`` replaces gpiozero's choice (tests pass a ``MockFactory``);
    ``clock`` gives the time of edges and polls.
    """

    bus_types: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        bus: BusConfig,
        context: DriverContext | None = None,
        *,
        pin_factory: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        context = context or DriverContext()
        devices = context.devices
        #: Per device name: what happened on its pins (``pulses``, ``bounces``, ``save_errors``).
        self.counters: dict[str, Counter[str]] = {}
        self._devices = list(devices)
        #: Every device this driver serves, by name: those handed, and those seen at a poll.
        self._known = {d.name: d for d in devices}
        self._given_factory = pin_factory
        self._factory: Any = None
        self._clock = clock
        #: Per device name, per point (or ``""`` for a counter's pin): its gpiozero object.
        self._opened: dict[str, dict[str, Any]] = {}

    async def __aenter__(self: _Self) -> _Self:
        self._factory = self._given_factory or _default_factory()
        try:
            for device in self._devices:
                if device.name not in self._opened:
                    self._open(device)
        except _PinError as exc:
            self._close_all()
            raise BusError(str(exc)) from None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close_all()
        self._factory = None

    def _objects(self, device: DeviceConfig) -> dict[str, Any]:
        """The device's gpiozero objects; opened now if the driver was not handed the device."""
        if device.name not in self._opened:
            if self._factory is None:
                raise DeviceError(f"device {device.name}: the gpio driver was not entered")
            try:
                self._open(device)
            except _PinError as exc:
                raise DeviceError(str(exc)) from None
        return self._opened[device.name]

    def _open(self, device: DeviceConfig) -> None:
        self.counters.setdefault(device.name, Counter())
        made: dict[str, Any] = {}
        try:
            for key, pin, make in self._makers(device):
                made[key] = _claim(device, pin, make)
        except _PinError:
            for thing in made.values():
                _close(device, thing)
            raise
        self._opened[device.name] = made
        self._opened_device(device, made)

    def _makers(self, device: DeviceConfig) -> list[tuple[str, str, Callable[[], Any]]]:
        """Per gpiozero object of the device: its key, its pin, and how to make it."""
        raise NotImplementedError

    def _opened_device(self, device: DeviceConfig, objects: dict[str, Any]) -> None:
        """Called once the device's objects exist."""

    def _closing_device(self, device: DeviceConfig, objects: dict[str, Any]) -> None:
        """Called before the device's objects are closed (at stop or to reconnect)."""

    def _close_all(self) -> None:
        """Close every pin; never raises (``__aexit__`` runs at stop)."""
        for name, objects in list(self._opened.items()):
            device = self._known.get(name)
            try:
                if device is not None:
                    self._closing_device(device, objects)
            except Exception:  # a stop must go on: the other pins still need releasing
                log.exception("device %s: while stopping", name)
            for thing in objects.values():
                _close(device, thing)
        self._opened.clear()

    def _remember(self, device: DeviceConfig) -> None:
        self._known.setdefault(device.name, device)


class _PinError(Exception):
    """A pin could not be claimed; a ``BusError`` when entering, a ``DeviceError`` later."""


def _claim(device: DeviceConfig, pin: str, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except Exception as exc:  # gpiozero's errors and the pin library's (lgpio.error, OSError…)
        why = _one_line(exc)
        if type(exc).__name__ == "GPIOPinInUse" or "busy" in why.lower():
            why += " (another device of this config, or another program, has it)"
        raise _PinError(f"device {device.name}: pin {pin}: {why}") from None


def _close(device: DeviceConfig | None, thing: Any) -> None:
    try:
        thing.close()
    except Exception as exc:  # closing must not stop the other pins from being released
        name = device.name if device else "?"
        log.warning("device %s: closing a pin: %s", name, _one_line(exc))


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _gpiozero() -> Any:
    import gpiozero

    return gpiozero


def _default_factory() -> Any:
    """gpiozero's pin factory, loaded as gpiozero chooses; ``BusError`` in one line if none."""
    try:
        gpiozero = _gpiozero()
    except ImportError as exc:
        raise BusError(f"gpio: gpiozero cannot be imported ({exc}): reinstall edge-agent") from None
    device = gpiozero.Device
    if device.pin_factory is not None:
        return device.pin_factory
    # gpiozero says each factory it passes over as a warning: gathered into our one line instead
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            device.ensure_pin_factory()
        except Exception as exc:  # ImportError, BadPinFactory, PinUnknownPi, a pigpiod refusal…
            # "Falling back from lgpio: No module named 'lgpio'", … then why it gave up
            tried = [_one_line(w.message).removeprefix("Falling back from ") for w in caught]
            chosen = os.environ.get("GPIOZERO_PIN_FACTORY")
            last = _one_line(exc)
            tried.append(f"GPIOZERO_PIN_FACTORY={chosen}: {last}" if chosen else last)
            raise BusError(
                f"gpio: no GPIO pin factory could be loaded ({'; '.join(tried)}): {FACTORY_FIX}"
            ) from None
    for warning in caught:
        log.warning("gpio: %s", _one_line(warning.message))
    log.info("gpio: pins through %s", type(device.pin_factory).__name__)
    return device.pin_factory


# --- validation


def _point_pins_problems(device: DeviceConfig) -> list[tuple[str, str]]:
    """Of a device whose points are pins: each point has one, a GPIO, and none twice."""
    problems = []
    pins = []
    for point in device.points:
        path = f"device.{device.name}.point.{point.name}.pin"
        if "pin" not in point.options:
            problems.append((path, 'is required: the GPIO, e.g. 17 or "GPIO17"'))
        else:
            pins.append((path, str(point.options["pin"])))
    return problems + _pins_problems(device, pins)


def _pins_problems(device: DeviceConfig, pins: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``pins`` as (key path, spec): each a GPIO, and no GPIO twice."""
    problems = []
    seen: dict[str, str] = {}
    for path, spec in pins:
        if why := _pin_problem(spec):
            problems.append((path, why))
            continue
        key = pin_key(spec)
        if key in seen:
            same = f" ({spec} is {key})" if spec != key else ""
            problems.append((path, f'{spec} is also the pin of point "{seen[key]}"{same}'))
        else:
            seen[key] = path.removeprefix(f"device.{device.name}.point.").removesuffix(".pin")
    return problems


def _level_problems(path: str, options: Mapping[str, Any]) -> list[tuple[str, str]]:
    if options.get("pull") == "none" and "active" not in options:
        return [
            (
                f"{path}.active",
                'is required with pull = "none": "high" or "low" (the level that means active)',
            )
        ]
    return []


def _bool_point_problems(path: str, point: PointConfig, what: str) -> list[tuple[str, str]]:
    problems = []
    for key, value, neutral in (("scale", point.scale, 1.0), ("offset", point.offset, 0.0)):
        if value != neutral:
            problems.append(
                (f"{path}.{key}", f"a {what} is true or false: scale and offset do not apply")
            )
    return problems


def _pull_up(options: Mapping[str, Any]) -> bool | None:
    """gpiozero's ``pull_up`` for our ``pull``."""
    return {"up": True, "down": False, "none": None}[options.get("pull", "up")]


def _active_high(options: Mapping[str, Any]) -> bool:
    """Whether a high level means active: ``active``, else the opposite of the pull."""
    if "active" in options:
        return str(options["active"]) == "high"
    return str(options.get("pull", "up")) == "down"


# --- gpio-input


class GpioInputDriver(_GpioDriver):
    """Contacts: each point is a pin, true while active."""

    point_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "pin": pin_spec,
        "pull": conv.one_of(*PULLS),
        "active": conv.one_of(*LEVELS),
    }

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for device in devices:
            problems.extend(_point_pins_problems(device))
            for point in device.points:
                path = f"device.{device.name}.point.{point.name}"
                problems.extend(_level_problems(path, point.options))
                problems.extend(_bool_point_problems(path, point, "contact"))
                if point.writable:
                    problems.append(
                        (f"{path}.writable", "an input cannot be set: relays are gpio-output")
                    )
        return problems

    def _makers(self, device: DeviceConfig) -> list[tuple[str, str, Callable[[], Any]]]:
        gpiozero = _gpiozero()

        def maker(point: PointConfig) -> Callable[[], Any]:
            pull_up = _pull_up(point.options)
            active = _active_high(point.options) if pull_up is None else None
            return lambda: gpiozero.InputDevice(
                point.options["pin"],
                pull_up=pull_up,
                active_state=active,
                pin_factory=self._factory,
            )

        return [(p.name, str(p.options["pin"]), maker(p)) for p in device.points]

    async def read(self, device: DeviceConfig) -> Poll:
        """Every contact's state now."""
        self._remember(device)
        objects = self._objects(device)
        values: dict[str, Value] = {}
        errors: list[str] = []
        for point in device.points:
            try:
                # the level itself: our ``active`` may differ from what gpiozero implies
                level = bool(objects[point.name].pin.state)
            except Exception as exc:  # the pin library's own errors
                errors.append(f"device {device.name}: {point.name}: {_one_line(exc)}")
                continue
            values[point.name] = level == _active_high(point.options)
        if errors and not values:
            raise DeviceError("; ".join(errors))
        return Poll(values, tuple(errors))


# --- gpio-counter


def _debounce(value: Any) -> float:
    seconds = conv.duration(value)
    if seconds > MAX_DEBOUNCE:
        raise ValueError(
            f'{seconds:g}s would ignore real pulses: a number is seconds, write e.g. "10ms"'
        )
    return seconds


class GpioCounterDriver(_GpioDriver):
    """Pulses of one pin, debounced here (mock pins and some factories ignore gpiozero's
    ``bounce_time``); the total is kept across restarts in ``state_dir``."""

    device_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "pin": pin_spec,
        "pull": conv.one_of(*PULLS),
        "active": conv.one_of(*LEVELS),
        "debounce": _debounce,
    }
    point_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "measure": conv.one_of(*MEASURES),
        "rate_per": conv.one_of(*RATE_SECONDS),
    }

    def __init__(
        self,
        bus: BusConfig,
        context: DriverContext | None = None,
        *,
        pin_factory: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(bus, context, pin_factory=pin_factory, clock=clock)
        self.state_dir = context.state_dir if context else None
        self._counts: dict[str, _Count] = {}
        self._save_failing: set[str] = set()

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for device in devices:
            path = f"device.{device.name}"
            if "pin" not in device.options:
                problems.append((f"{path}.pin", 'is required: the GPIO, e.g. 17 or "GPIO17"'))
            elif why := _pin_problem(str(device.options["pin"])):
                problems.append((f"{path}.pin", why))
            problems.extend(_level_problems(path, device.options))
            for point in device.points:
                problems.extend(_counter_point_problems(f"{path}.point.{point.name}", point))
        return problems

    def _makers(self, device: DeviceConfig) -> list[tuple[str, str, Callable[[], Any]]]:
        gpiozero = _gpiozero()
        pull_up = _pull_up(device.options)
        active = _active_high(device.options) if pull_up is None else None
        pin = device.options["pin"]
        return [
            (
                "",
                pin,
                lambda: gpiozero.DigitalInputDevice(
                    pin, pull_up=pull_up, active_state=active, pin_factory=self._factory
                ),
            )
        ]

    def _opened_device(self, device: DeviceConfig, objects: dict[str, Any]) -> None:
        count = self._counts.get(device.name)
        if count is None:  # the first time: what the last run counted
            total = self._load(device)
            debounce = float(device.options.get("debounce", DEFAULT_DEBOUNCE))
            count = self._counts[device.name] = _Count(debounce, total=total, saved=total)
        count.window, count.since = 0, None
        loop = asyncio.get_running_loop()
        counters = self.counters[device.name]
        # gpiozero's "active" follows its pull; ours may be the other level
        pull_up = _pull_up(device.options)
        theirs_high = _active_high(device.options) if pull_up is None else not pull_up
        pulse_on_activated = theirs_high == _active_high(device.options)

        def handler(pulse: bool) -> Callable[[], None]:
            def edge() -> None:
                # On the pin library's thread (with mock pins: whoever drove the pin). The time is
                # taken now; the edge is judged on the loop, by the call queued here or by the
                # next poll or the stop if they come first: none is left in the queue at stop.
                count.edges.append((pulse, self._clock()))
                with contextlib.suppress(RuntimeError):  # a loop closed while a pin still fired
                    loop.call_soon_threadsafe(_judge, count, counters)

            return edge

        pin = objects[""]
        pin.when_activated = handler(pulse_on_activated)
        pin.when_deactivated = handler(not pulse_on_activated)

    def _closing_device(self, device: DeviceConfig, objects: dict[str, Any]) -> None:
        count = self._counts.get(device.name)
        if count is None:
            return
        _judge(count, self.counters[device.name])
        if count.total != count.saved:
            self._save(device, count, self._clock())

    async def read(self, device: DeviceConfig) -> Poll:
        """The total, and the rate since the previous poll."""
        self._remember(device)
        self._objects(device)
        count = self._counts[device.name]
        _judge(count, self.counters[device.name])
        now = self._clock()
        elapsed = None if count.since is None else now - count.since
        values: dict[str, Value] = {}
        for point in device.points:
            if point.options.get("measure") == "total":
                values[point.name] = scaled(point, count.total)
            elif elapsed is not None and elapsed > 0:
                per = RATE_SECONDS[point.options.get("rate_per", "s")]
                values[point.name] = round(count.window * point.scale / elapsed * per, DECIMALS)
        count.window, count.since = 0, now
        if count.total != count.saved and now - count.saved_at >= SAVE_EVERY:
            self._save(device, count, now)
        return Poll(values)

    # --- the kept total

    def _state_file(self, device: DeviceConfig) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"{device.name}.json"

    def _load(self, device: DeviceConfig) -> int:
        """The total the state file holds; 0 (said once, in one line) when it cannot be used."""
        path = self._state_file(device)
        if path is None:
            return 0
        try:
            text = path.read_text()
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            why = _one_line(exc)
        else:
            try:
                pulses = json.loads(text)["pulses"]
            except (ValueError, TypeError, KeyError, IndexError):
                pulses = None
            if isinstance(pulses, int) and not isinstance(pulses, bool) and pulses >= 0:
                return pulses
            why = f"not a pulse count: {text[:40]!r}"
        log.warning(
            "device %s: the kept pulse count in %s cannot be used (%s): counting from 0",
            device.name,
            path,
            why,
        )
        return 0

    def _save(self, device: DeviceConfig, count: _Count, now: float) -> None:
        """Write the total atomically; a failure is said once and retried at the next poll."""
        path = self._state_file(device)
        if path is None:
            return
        total = count.total
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".tmp")
            with temporary.open("w") as file:
                file.write(json.dumps({"pulses": total}) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            _sync_directory(path.parent)
        except OSError as exc:
            self.counters[device.name]["save_errors"] += 1
            if device.name not in self._save_failing:
                self._save_failing.add(device.name)
                log.warning(
                    "device %s: cannot keep the pulse count in %s (%s): counting on, retrying",
                    device.name,
                    path,
                    _one_line(exc),
                )
            return
        if device.name in self._save_failing:
            self._save_failing.discard(device.name)
            log.info("device %s: pulse count kept in %s again", device.name, path)
        count.saved, count.saved_at = total, now


def _judge(count: _Count, counters: Counter[str]) -> None:
    """Each edge waiting, in order: accepted, or ignored as bounce when it came within debounce
    of the last accepted one (either way: a contact bounces when it opens too)."""
    while count.edges:
        pulse, at = count.edges.popleft()
        if count.last_edge is not None and at - count.last_edge < count.debounce:
            if pulse:
                counters["bounces"] += 1
            continue
        count.last_edge = at
        if pulse:
            count.total += 1
            count.window += 1
            counters["pulses"] += 1


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _counter_point_problems(path: str, point: PointConfig) -> list[tuple[str, str]]:
    measure = point.options.get("measure")
    problems = []
    if measure is None:
        problems.append(
            (
                f"{path}.measure",
                'is required: "total" (every pulse times scale, kept across restarts) '
                'or "rate" (pulses times scale per rate_per, since the previous poll)',
            )
        )
    if point.scale <= 0:
        problems.append((f"{path}.scale", "is the amount per pulse: it must be more than 0"))
    if measure != "rate" and "rate_per" in point.options:
        problems.append((f"{path}.rate_per", 'applies to measure = "rate" only'))
    if measure == "rate" and point.offset != 0:
        problems.append((f"{path}.offset", 'applies to measure = "total" only'))
    if point.writable:
        problems.append((f"{path}.writable", "a pulse count cannot be set"))
    return problems


# --- gpio-output


class GpioOutputDriver(_GpioDriver):
    """Relays: each point is a pin, true while on; set to its safe state at start and stop."""

    point_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "pin": pin_spec,
        "active": conv.one_of(*LEVELS),
        "safe_state": conv.boolean,
    }

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for device in devices:
            problems.extend(_point_pins_problems(device))
            for point in device.points:
                path = f"device.{device.name}.point.{point.name}"
                problems.extend(_bool_point_problems(path, point, "relay"))
        return problems

    def _makers(self, device: DeviceConfig) -> list[tuple[str, str, Callable[[], Any]]]:
        gpiozero = _gpiozero()

        def maker(point: PointConfig) -> Callable[[], Any]:
            # initial_value: the pin becomes an output already at the safe level, no glitch
            return lambda: gpiozero.OutputDevice(
                point.options["pin"],
                active_high=point.options.get("active", "high") == "high",
                initial_value=bool(point.options.get("safe_state", False)),
                pin_factory=self._factory,
            )

        return [(p.name, str(p.options["pin"]), maker(p)) for p in device.points]

    def _closing_device(self, device: DeviceConfig, objects: dict[str, Any]) -> None:
        for point in device.points:
            relay = objects.get(point.name)
            if relay is None:
                continue
            try:
                relay.value = bool(point.options.get("safe_state", False))
            except Exception as exc:  # the other relays still go to their safe state
                log.warning(
                    "device %s: %s: cannot set the safe state: %s",
                    device.name,
                    point.name,
                    _one_line(exc),
                )

    async def read(self, device: DeviceConfig) -> Poll:
        """Every relay's state now."""
        self._remember(device)
        objects = self._objects(device)
        values: dict[str, Value] = {}
        errors: list[str] = []
        for point in device.points:
            try:
                values[point.name] = bool(objects[point.name].is_active)
            except Exception as exc:  # the pin library's own errors
                errors.append(f"device {device.name}: {point.name}: {_one_line(exc)}")
        if errors and not values:
            raise DeviceError("; ".join(errors))
        return Poll(values, tuple(errors))

    async def write(self, device: DeviceConfig, point: PointConfig, value: Value) -> None:
        """Switch the relay of ``point`` on (true, 1) or off (false, 0)."""
        where = f"device {device.name}: {point.name}"
        if isinstance(value, bool):
            state = value
        elif isinstance(value, int | float) and value in (0, 1):
            state = bool(value)
        else:
            raise DeviceError(f"{where}: {value!r} is not a relay state: true/false or 1/0")
        if not point.writable:
            raise DeviceError(f"{where}: is not writable (writable = true on the point)")
        if all(p.name != point.name for p in device.points):
            raise DeviceError(f"{where}: no such point")
        self._remember(device)
        relay = self._objects(device)[point.name]
        try:
            relay.value = state
        except Exception as exc:  # the pin library's own errors
            raise DeviceError(f"{where}: {_one_line(exc)}") from None
