"""The GPIO drivers (`gpio-input`, `gpio-counter`, `gpio-output`) on gpiozero's mock pins.

Each test hands its driver a ``MockFactory`` of its own and closes it; the few that let gpiozero
choose a factory (from ``GPIOZERO_PIN_FACTORY``) have the global one closed and reset after them.
Edges are timed with a fake clock: mock pins ignore gpiozero's ``bounce_time`` and real time
between two ``drive_low()`` calls is a few µs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device, GPIOPinInUse, InputDevice
from gpiozero.pins.mock import MockFactory, MockPin

from agent.aio import cancel_and_wait
from agent.api import DriverContext, local_bus
from agent.config import Config, DeviceConfig, load_config
from agent.config.types import STATE_DIR
from agent.errors import BusError, ConfigError, DeviceError
from agent.poll.scheduler import BusPoller
from agent.registry import build_driver, load_driver
from agent.service.app import Agent
from agent.testkit import run
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from drivers.gpio.driver import (
    FACTORY_FIX,
    SAVE_EVERY,
    GpioCounterDriver,
    GpioInputDriver,
    GpioOutputDriver,
    pin_spec,
)

HEAD = """
[agent]
id = "gw"
data_dir = "data"
[mqtt]
url = "{url}"
topic_prefix = "g"
batch_interval = "50ms"
"""

INPUTS = """
[[device]]
name = "pump-house"
driver = "gpio-input"
interval = "1s"
  [[device.point]]
  name = "door"
  pin = 17                  # pull up by default: a contact to ground, active low
  [[device.point]]
  name = "float"
  pin = "BOARD13"           # GPIO27 on the 40-pin header
  pull = "down"
  [[device.point]]
  name = "alarm"
  pin = "gpio22"
  pull = "none"
  active = "low"
  [[device.point]]
  name = "breaker"
  pin = "BCM23"
  pull = "up"
  active = "high"           # a normally-closed contact: open means tripped
"""

RAIN = """
[[device]]
name = "rain"
driver = "gpio-counter"
interval = "1m"
pin = 5
debounce = "20ms"
  [[device.point]]
  name = "total"
  measure = "total"
  scale = 0.2794
  unit = "mm"
  [[device.point]]
  name = "intensity"
  measure = "rate"
  rate_per = "h"
  scale = 0.2794
  unit = "mm/h"
  [[device.point]]
  name = "tips"
  measure = "total"
"""

RELAYS = """
[[device]]
name = "pumps"
driver = "gpio-output"
interval = "1s"
  [[device.point]]
  name = "pump"
  pin = 20
  writable = true
  [[device.point]]
  name = "valve"
  pin = 21
  active = "low"            # an opto-isolated board: low switches it on
  safe_state = true         # open when the agent is not running
  writable = true
  [[device.point]]
  name = "fan"
  pin = 26
"""


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    pins = MockFactory()
    yield pins
    pins.close()


@pytest.fixture(autouse=True)
def no_global_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """gpiozero's class-level factory starts empty and is closed and emptied after each test."""
    monkeypatch.setattr(Device, "pin_factory", None)
    yield
    if Device.pin_factory is not None:
        Device.pin_factory.close()


def claimed(factory: MockFactory, *pins: int) -> list[int]:
    """Those of ``pins`` that some gpiozero device holds."""
    held = []
    for pin in pins:
        try:
            InputDevice(pin, pin_factory=factory).close()
        except GPIOPinInUse:
            held.append(pin)
    return held


def load(tmp_path: Path, *fragments: str, url: str = "mqtt://127.0.0.1:1") -> Config:
    path = tmp_path / "site.toml"
    path.write_text(HEAD.replace("{url}", url) + "".join(fragments))
    config, _ = load_config(path, {})
    return config


def problems_of(tmp_path: Path, *fragments: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, *fragments)
    return sorted(f"{p.path}: {p.message}" for p in caught.value.problems)


def counter(
    device: DeviceConfig,
    factory: MockFactory,
    clock: FakeClock,
    state_dir: Path | None = None,
) -> GpioCounterDriver:
    return GpioCounterDriver(
        local_bus(device),
        DriverContext(devices=(device,), state_dir=state_dir),
        pin_factory=factory,
        clock=clock,
    )


def tip(pin: MockPin, clock: FakeClock, at: float, *, held: float = 0.1) -> None:
    """One clean tip of the bucket at ``at``: the reed contact pulls the pin low for ``held``."""
    clock.now = at
    pin.drive_low()
    clock.now = at + held
    pin.drive_high()


# --- gpio-input


def test_inputs_follow_their_pull_and_active_level(tmp_path: Path, factory: MockFactory) -> None:
    device = load(tmp_path, INPUTS).device("pump-house")

    async def body() -> list[dict[str, Any]]:
        async with GpioInputDriver(
            local_bus(device), DriverContext(devices=(device,)), pin_factory=factory
        ) as driver:
            resting = dict((await driver.read(device)).values)
            factory.pin(17).drive_low()  # the door contact closes to ground
            factory.pin(27).drive_high()
            factory.pin(22).drive_high()
            factory.pin(23).drive_low()
            return [resting, dict((await driver.read(device)).values)]

    resting, driven = run(body())
    # pulls: 17 and 23 rest high, 27 low; 22 floats (low on a mock pin)
    assert resting == {"door": False, "float": False, "alarm": True, "breaker": True}
    assert driven == {"door": True, "float": True, "alarm": False, "breaker": False}
    assert factory.pin(17).pull == "up"
    assert factory.pin(27).pull == "down"
    assert factory.pin(22).pull == "floating"
    assert factory.pin(17).function == "input"


def test_a_device_not_handed_over_is_opened_at_its_first_poll(
    tmp_path: Path, factory: MockFactory
) -> None:
    """As ``edge-agent read`` builds it, and the scheduler until it hands the devices over."""
    device = load(tmp_path, INPUTS).device("pump-house")
    driver = GpioInputDriver(local_bus(device), pin_factory=factory)

    async def body() -> tuple[list[int], list[int], dict[str, Any]]:
        async with driver:
            before = claimed(factory, 17, 27, 22, 23)
            poll = await driver.read(device)
            return before, claimed(factory, 17, 27, 22, 23), dict(poll.values)

    before, after, values = run(body())
    assert before == []
    assert after == [17, 27, 22, 23]
    assert values["door"] is False
    assert values["alarm"] is True
    assert claimed(factory, 17, 27, 22, 23) == []  # released at exit


# --- gpio-counter


def test_bounces_within_debounce_are_ignored_and_counted(
    tmp_path: Path, factory: MockFactory
) -> None:
    device = load(tmp_path, RAIN).device("rain")
    clock = FakeClock()
    pin = factory.pin(5)

    async def body() -> GpioCounterDriver:
        async with counter(device, factory, clock) as driver:
            # a tip whose reed contact bounces on closing and again on opening
            for offset, low in [(0, True), (0.001, False), (0.002, True), (0.003, False)]:
                clock.now = 1000 + offset
                pin.drive_low() if low else pin.drive_high()
            clock.now = 1000.004
            pin.drive_low()  # settled closed
            clock.now = 1000.100
            pin.drive_high()  # opens: 100 ms after the last accepted edge, accepted
            clock.now = 1000.101
            pin.drive_low()  # bounce on opening: not a tip
            clock.now = 1000.102
            pin.drive_high()
            tip(pin, clock, 1001.0)  # the next tip
            # a pulse shorter than debounce: its end is ignored, the next pulse is not
            clock.now = 1002.0
            pin.drive_low()
            clock.now = 1002.005
            pin.drive_high()
            clock.now = 1002.030
            pin.drive_low()
            poll = await driver.read(device)
            assert poll.values["tips"] == 4
            assert poll.values["total"] == 1.1176
            return driver

    driver = run(body())
    assert driver.counters["rain"] == {"pulses": 4, "bounces": 3}


@pytest.mark.parametrize(
    ("levels", "active_high"),
    [
        ("", False),  # pull up by default: active low
        ('pull = "up"\nactive = "high"', True),
        ('pull = "down"', True),
        ('pull = "down"\nactive = "low"', False),
        ('pull = "none"\nactive = "high"', True),
        ('pull = "none"\nactive = "low"', False),
    ],
)
def test_a_pulse_is_counted_when_the_pin_turns_active(
    tmp_path: Path, factory: MockFactory, levels: str, active_high: bool
) -> None:
    device = load(tmp_path, RAIN.replace("pin = 5\n", f"pin = 5\n{levels}\n")).device("rain")
    clock = FakeClock()
    pin = factory.pin(5)

    def drive(high: bool) -> None:
        clock.now += 1
        pin.drive_high() if high else pin.drive_low()

    async def body() -> list[Any]:
        tips = []
        async with counter(device, factory, clock) as driver:
            drive(not active_high)  # to inactive (a change whatever the pull left it at)
            drive(active_high)
            drive(not active_high)
            tips.append((await driver.read(device)).values["tips"])
            drive(active_high)  # the edge that counts, without the one that ends the pulse
            tips.append((await driver.read(device)).values["tips"])
        return tips

    assert run(body()) == [1, 2]


def test_total_and_rate_over_the_poll_interval(tmp_path: Path, factory: MockFactory) -> None:
    fragment = RAIN.replace('unit = "mm"', 'unit = "mm"\n  offset = 100.0')
    device = load(tmp_path, fragment).device("rain")
    clock = FakeClock()
    pin = factory.pin(5)

    async def body() -> list[dict[str, Any]]:
        polls = []
        async with counter(device, factory, clock) as driver:
            polls.append(dict((await driver.read(device)).values))  # 1000: no previous poll
            for at in (1010, 1020, 1030):
                tip(pin, clock, at)
            clock.now = 1060
            polls.append(dict((await driver.read(device)).values))
            clock.now = 1120
            polls.append(dict((await driver.read(device)).values))  # an idle minute
        return polls

    first, wet, idle = run(body())
    assert first == {"total": 100.0, "tips": 0}  # no rate without a previous poll
    # 3 tips of 0.2794 mm in 60 s: 50.292 mm/h; the offset is the total's only
    assert wet == {"total": 100.8382, "intensity": 50.292, "tips": 3}
    assert idle == {"total": 100.8382, "intensity": 0.0, "tips": 3}


def test_edges_from_the_pin_librarys_thread_reach_the_loop(
    tmp_path: Path, factory: MockFactory
) -> None:
    """Real pins call back on a thread of the pin library: 450 pulses (a YF-S201 at 1 L/min
    for a minute, undebounced) driven from another thread are all counted."""
    fragment = """
[[device]]
name = "flow"
driver = "gpio-counter"
pin = "GPIO6"
debounce = "0s"
  [[device.point]]
  name = "pulses"
  measure = "total"
"""
    device = load(tmp_path, fragment).device("flow")
    pin = factory.pin(6)
    callers: set[int] = set()

    def pulses() -> None:
        callers.add(threading.get_ident())
        for _ in range(450):
            pin.drive_low()
            pin.drive_high()

    async def body() -> tuple[int, Any]:
        async with GpioCounterDriver(
            local_bus(device), DriverContext(devices=(device,)), pin_factory=factory
        ) as driver:
            thread = threading.Thread(target=pulses)
            thread.start()
            thread.join(10)  # blocks the loop: the edges wait for it in its queue
            assert not thread.is_alive()
            await asyncio.sleep(0)  # the loop runs what was queued: no poll needed to count
            handed = driver.counters["flow"]["pulses"]
            poll = await driver.read(device)
            return handed, poll.values["pulses"]

    handed, counted = run(body())
    assert callers
    assert threading.get_ident() not in callers
    assert handed == counted == 450


def test_the_total_survives_a_restart(tmp_path: Path, factory: MockFactory) -> None:
    device = load(tmp_path, RAIN).device("rain")
    clock = FakeClock()
    state = tmp_path / "data" / STATE_DIR  # not there yet: the driver creates it
    pin = factory.pin(5)

    async def first_run() -> None:
        async with counter(device, factory, clock, state) as driver:
            tip(pin, clock, 1001)
            tip(pin, clock, 1002)
            await driver.read(device)
            tip(pin, clock, 1003)  # counted after the last poll: kept at stop

    async def second_run() -> dict[str, Any]:
        async with counter(device, factory, clock, state) as driver:
            tip(pin, clock, 1101)
            return dict((await driver.read(device)).values)

    run(first_run())
    assert json.loads((state / "rain.json").read_text()) == {"pulses": 3}
    assert sorted(p.name for p in state.iterdir()) == ["rain.json"]  # no temporary file left
    assert run(second_run()) == {"total": 1.1176, "tips": 4}
    assert json.loads((state / "rain.json").read_text()) == {"pulses": 4}


def test_the_total_is_written_only_when_it_changed(tmp_path: Path, factory: MockFactory) -> None:
    device = load(tmp_path, RAIN).device("rain")
    clock = FakeClock()
    state = tmp_path / "state"
    kept = state / "rain.json"
    pin = factory.pin(5)

    async def body() -> list[bool]:
        written = []
        async with counter(device, factory, clock, state) as driver:
            tip(pin, clock, 1001)
            await driver.read(device)  # at 1001.1
            written.append(kept.exists())  # the first change is kept at once
            kept.unlink()
            clock.now = 1010
            await driver.read(device)
            written.append(kept.exists())  # idle: not rewritten
            tip(pin, clock, 1020)
            clock.now = 1030
            await driver.read(device)
            written.append(kept.exists())  # changed, but written less than SAVE_EVERY ago
            clock.now = 1002 + SAVE_EVERY
            await driver.read(device)
            written.append(kept.exists())
            assert json.loads(kept.read_text()) == {"pulses": 2}
            kept.unlink()
        written.append(kept.exists())  # unchanged since the last write: not at stop either
        return written

    assert run(body()) == [True, False, False, True, False]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "not a pulse count: ''"),
        (b'{"pulses": 12', "not a pulse count: '{\"pulses\": 12'"),
        (b'{"pulses": -3}\n', "not a pulse count"),
        (b'{"pulses": true}\n', "not a pulse count"),
        (b"[12]", "not a pulse count: '[12]'"),
        (b"\xff\xfe\x00", "'utf-8' codec can't decode byte 0xff"),
    ],
)
def test_a_corrupt_state_file_is_said_once_and_counting_starts_at_0(
    tmp_path: Path,
    factory: MockFactory,
    caplog: pytest.LogCaptureFixture,
    content: bytes,
    why: str,
) -> None:
    device = load(tmp_path, RAIN).device("rain")
    clock = FakeClock()
    state = tmp_path / "state"
    state.mkdir()
    (state / "rain.json").write_bytes(content)
    pin = factory.pin(5)
    driver = counter(device, factory, clock, state)

    async def body() -> list[Any]:
        tips = []
        for at in (1001, 1101):  # entered twice (a reconnection): read once, said once
            async with driver:
                tip(pin, clock, at)
                tips.append((await driver.read(device)).values["tips"])
        return tips

    with caplog.at_level(logging.WARNING, logger="drivers.gpio"):
        assert run(body()) == [1, 2]
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith(f"device rain: the kept pulse count in {state / 'rain.json'}")
    assert why in message
    assert message.endswith("counting from 0")
    assert "\n" not in message
    assert record.exc_info is None
    assert json.loads((state / "rain.json").read_text()) == {"pulses": 2}


def test_a_state_dir_that_cannot_be_written_is_said_once(
    tmp_path: Path, factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    device = load(tmp_path, RAIN).device("rain")
    clock = FakeClock()
    state = tmp_path / "state"
    state.write_text("a file where the directory should be")
    pin = factory.pin(5)

    async def body() -> tuple[GpioCounterDriver, Any]:
        async with counter(device, factory, clock, state) as driver:
            for at in (1001, 1100, 1200):
                tip(pin, clock, at)
                clock.now = at + SAVE_EVERY
                poll = await driver.read(device)
            return driver, poll.values["tips"]

    with caplog.at_level(logging.WARNING, logger="drivers.gpio"):
        driver, tips = run(body())
    assert tips == 3  # counting goes on
    assert driver.counters["rain"]["save_errors"] == 4  # three polls and the stop
    # said once each: at start that nothing could be read, at the first poll that nothing can be kept
    loaded, saved = (r.getMessage() for r in caplog.records)
    assert loaded.startswith(f"device rain: the kept pulse count in {state / 'rain.json'} cannot")
    assert saved.startswith(f"device rain: cannot keep the pulse count in {state / 'rain.json'}")
    assert saved.endswith("File exists: " + repr(str(state)) + "): counting on, retrying")


def test_without_a_state_dir_nothing_is_kept(tmp_path: Path, factory: MockFactory) -> None:
    device = load(tmp_path, RAIN).device("rain")
    clock = FakeClock()
    pin = factory.pin(5)
    before = sorted(tmp_path.rglob("*"))

    async def body() -> Any:
        async with counter(device, factory, clock, None) as driver:
            tip(pin, clock, clock.now + 1)
            return (await driver.read(device)).values["tips"]

    assert run(body()) == 1
    assert run(body()) == 1  # from 0 again: nothing was kept
    assert sorted(tmp_path.rglob("*")) == before


# --- gpio-output


def test_relays_are_safe_at_start_and_stop_and_read_back_writes(
    tmp_path: Path, factory: MockFactory
) -> None:
    device = load(tmp_path, RELAYS).device("pumps")
    pump, valve, fan = (factory.pin(n) for n in (20, 21, 26))
    points = {p.name: p for p in device.points}

    async def body() -> list[dict[str, Any]]:
        seen = []
        async with GpioOutputDriver(
            local_bus(device), DriverContext(devices=(device,)), pin_factory=factory
        ) as driver:
            # at start, before any poll
            seen.append({"pump": pump.state, "valve": valve.state, "fan": fan.state})
            seen.append(dict((await driver.read(device)).values))
            await driver.write(device, points["pump"], True)
            await driver.write(device, points["valve"], 0)
            seen.append({"pump": pump.state, "valve": valve.state})
            seen.append(dict((await driver.read(device)).values))
        return seen

    at_start, read_at_start, levels, read_back = run(body())
    assert at_start == {"pump": False, "valve": False, "fan": False}  # valve: low is on
    assert read_at_start == {"pump": False, "valve": True, "fan": False}
    assert levels == {"pump": True, "valve": True}  # valve off: high
    assert read_back == {"pump": True, "valve": False, "fan": False}
    # at stop: back to the safe states, then released
    assert (pump.state, valve.state) == (False, False)
    assert pump.function == valve.function == "input"
    assert [s.state for s in pump.states] == [False, True, False]
    assert claimed(factory, 20, 21, 26) == []


@pytest.mark.parametrize("value", ["on", 2, 0.5, -1, float("nan")])
def test_a_relay_refuses_what_is_not_a_state(
    tmp_path: Path, factory: MockFactory, value: Any
) -> None:
    device = load(tmp_path, RELAYS).device("pumps")
    pump = next(p for p in device.points if p.name == "pump")

    async def body() -> None:
        async with GpioOutputDriver(
            local_bus(device), DriverContext(devices=(device,)), pin_factory=factory
        ) as driver:
            await driver.write(device, pump, value)

    with pytest.raises(DeviceError) as caught:
        run(body())
    assert str(caught.value) == (
        f"device pumps: pump: {value!r} is not a relay state: true/false or 1/0"
    )
    assert factory.pin(20).states[-1].state is False  # never switched on


def test_a_relay_that_is_not_writable_is_not_written(tmp_path: Path, factory: MockFactory) -> None:
    device = load(tmp_path, RELAYS).device("pumps")
    fan = next(p for p in device.points if p.name == "fan")

    async def body() -> None:
        async with GpioOutputDriver(
            local_bus(device), DriverContext(devices=(device,)), pin_factory=factory
        ) as driver:
            await driver.write(device, fan, True)

    with pytest.raises(DeviceError, match=r"^device pumps: fan: is not writable \(writable = "):
        run(body())
    assert factory.pin(26).state is False


def test_one_pin_for_two_devices_is_refused_when_entering(
    tmp_path: Path, factory: MockFactory
) -> None:
    config = load(tmp_path, INPUTS, RELAYS.replace("pin = 26", 'pin = "BOARD11"'))
    inputs, relays = config.device("pump-house"), config.device("pumps")

    async def body() -> None:
        async with (
            GpioInputDriver(
                local_bus(inputs), DriverContext(devices=(inputs,)), pin_factory=factory
            ),
            GpioOutputDriver(
                local_bus(relays), DriverContext(devices=(relays,)), pin_factory=factory
            ),
        ):
            pass

    with pytest.raises(BusError) as caught:
        run(body())
    message = str(caught.value)
    assert message.startswith("device pumps: pin BOARD11: pin GPIO17 is already in use by ")
    assert message.endswith("(another device of this config, or another program, has it)")
    assert claimed(factory, 20, 21, 26) == []  # the relays claimed before it were released


# --- configuration


def test_pins_are_written_as_gpiozero_names_them() -> None:
    assert [pin_spec(v) for v in (17, "17", "GPIO17", "bcm17", "gpio017")] == ["GPIO17"] * 5
    assert [pin_spec(v) for v in ("BOARD11", "board11", "J8:11", "WPI0")] == [
        "BOARD11",
        "BOARD11",
        "J8:11",
        "WPI0",
    ]
    for bad in ("GPIO", "pin 17", "17a", "-1"):
        with pytest.raises(ValueError, match=r'is not a pin: write e\.g\. 17, "GPIO17"'):
            pin_spec(bad)
    for wrong in (17.0, True, [17]):
        with pytest.raises(TypeError, match="must be a GPIO number or a pin name"):
            pin_spec(wrong)


def test_configuration_problems_name_their_keys(tmp_path: Path) -> None:
    bad_inputs = """
[[device]]
name = "panel"
driver = "gpio-input"
  [[device.point]]
  name = "a"
  pin = 17
  [[device.point]]
  name = "b"
  pin = "BOARD11"
  [[device.point]]
  name = "c"
  pull = "none"
  scale = 2.0
  writable = true
  [[device.point]]
  name = "d"
  pin = "BOARD6"
  [[device.point]]
  name = "e"
  pin = "GPIOX"
  bounce = "5ms"
"""
    bad_counter = """
[[device]]
name = "gauge"
driver = "gpio-counter"
pull = "none"
  [[device.point]]
  name = "total"
  rate_per = "h"
  scale = 0.0
  [[device.point]]
  name = "rate"
  measure = "rate"
  rate_per = "day"
  [[device.point]]
  name = "flow"
  measure = "rate"
  offset = 3.0
  writable = true

[[device]]
name = "gauge2"
driver = "gpio-counter"
pin = 6
debounce = 10
  [[device.point]]
  name = "total"
  measure = "total"
"""
    bad_relays = """
[[device]]
name = "relays"
driver = "gpio-output"
  [[device.point]]
  name = "k1"
  pin = 5
  [[device.point]]
  name = "k2"
  pin = "bcm5"
  [[device.point]]
  name = "k3"
  pin = 6
  pull = "up"
  safe_state = "off"
"""
    assert problems_of(tmp_path, bad_inputs, bad_counter, bad_relays) == [
        'device.gauge.active: is required with pull = "none": "high" or "low" (the level that means active)',
        'device.gauge.pin: is required: the GPIO, e.g. 17 or "GPIO17"',
        'device.gauge.point.flow.offset: applies to measure = "total" only',
        "device.gauge.point.flow.writable: a pulse count cannot be set",
        'device.gauge.point.rate.rate_per: "day" is not one of s, min, h',
        'device.gauge.point.total.measure: is required: "total" (every pulse times scale, kept '
        'across restarts) or "rate" (pulses times scale per rate_per, since the previous poll)',
        'device.gauge.point.total.rate_per: applies to measure = "rate" only',
        "device.gauge.point.total.scale: is the amount per pulse: it must be more than 0",
        # a device whose own key failed is left out of its driver's checks
        'device.gauge2.debounce: 10s would ignore real pulses: a number is seconds, write e.g. "10ms"',
        'device.panel.point.b.pin: BOARD11 is also the pin of point "a" (BOARD11 is GPIO17)',
        'device.panel.point.c.active: is required with pull = "none": "high" or "low" (the level that means active)',
        'device.panel.point.c.pin: is required: the GPIO, e.g. 17 or "GPIO17"',
        "device.panel.point.c.scale: a contact is true or false: scale and offset do not apply",
        "device.panel.point.c.writable: an input cannot be set: relays are gpio-output",
        "device.panel.point.d.pin: BOARD6 is a ground pin of the 40-pin header, not a GPIO",
        "device.panel.point.e.bounce: unknown key; known keys: active, deadband, heartbeat, max, "
        "min, name, offset, pin, pull, scale, unit, writable",
        'device.panel.point.e.pin: "GPIOX" is not a pin: write e.g. 17, "GPIO17", "BCM17" or '
        '"BOARD11" (header pin)',
        'device.relays.point.k2.pin: GPIO5 is also the pin of point "k1"',
        "device.relays.point.k3.pull: unknown key; known keys: active, deadband, heartbeat, max, "
        "min, name, offset, pin, safe_state, scale, unit, writable",
        "device.relays.point.k3.safe_state: must be true or false, got a string",
    ]


# --- gpiozero, only where it is needed


NO_GPIO = """
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
[[device]]
name = "meter"
bus = "plc"
  [[device.point]]
  name = "volts"
  address = 0
[[device]]
name = "gateway"
driver = "system"
  [[device.point]]
  name = "load1"
"""

PROBE = """
import sys
from pathlib import Path
from agent.service.app import Agent
from agent.cli.main import main
from agent.config import load_config

code = main(["check", "--plan", "-c", sys.argv[1]])
Agent(load_config(Path(sys.argv[1]), {})[0])  # every poller built, every driver class loaded
print(code, "gpiozero" in sys.modules, "drivers.gpio" in sys.modules)
"""


@pytest.mark.parametrize(
    ("fragments", "gpio_loaded"),
    [((NO_GPIO,), False), ((NO_GPIO, INPUTS, RAIN, RELAYS), True)],
    ids=["without-gpio-devices", "with-gpio-devices"],
)
def test_gpiozero_is_imported_only_to_use_pins(
    tmp_path: Path, fragments: tuple[str, ...], gpio_loaded: bool
) -> None:
    """A fresh interpreter checks the config and builds the agent: the GPIO drivers may be
    loaded, gpiozero is not (``check`` works on a laptop without it)."""
    path = tmp_path / "site.toml"
    path.write_text(HEAD.replace("{url}", "mqtt://127.0.0.1:1") + "".join(fragments))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"0 False {gpio_loaded}"


# --- no pin factory


def test_no_pin_factory_is_one_line_naming_it_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = load(tmp_path, INPUTS).device("pump-house")
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "nope")

    async def enter() -> None:
        async with GpioInputDriver(local_bus(device), DriverContext(devices=(device,))):
            pass

    with pytest.raises(BusError) as caught:
        run(enter())
    assert str(caught.value) == (
        "gpio: no GPIO pin factory could be loaded (GPIOZERO_PIN_FACTORY=nope: Unable to find "
        f"pin factory 'nope'): {FACTORY_FIX}"
    )
    assert Device.pin_factory is None
    # the fix, then the scheduler's next attempt with the same driver instance
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    run(enter())
    assert isinstance(Device.pin_factory, MockFactory)


def test_no_pin_factory_here_names_each_one_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On this (not a Raspberry Pi) machine, gpiozero's defaults all fail."""
    if Path("/proc/device-tree/model").exists():
        pytest.skip("a board with a device tree may have a pin factory")
    device = load(tmp_path, RAIN).device("rain")
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)

    async def enter() -> None:
        async with GpioCounterDriver(local_bus(device), DriverContext(devices=(device,))):
            pass

    with pytest.raises(BusError) as caught:
        run(enter())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("gpio: no GPIO pin factory could be loaded (lgpio: ")
    assert "; native: " in message
    assert message.endswith(
        "Unable to load any default pin factory!): on a Raspberry Pi install lgpio into "
        "edge-agent's environment (pip install lgpio); to try the config without GPIO set "
        "GPIOZERO_PIN_FACTORY=mock"
    )


def test_the_scheduler_says_it_once_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    device = load(tmp_path, RAIN).device("rain")
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "nope")

    class Watched(BusPoller):
        """Says when the third attempt has failed."""

        third = asyncio.Event()

        def _failed(self, name: str, error: str, read_some: bool = False) -> None:
            super()._failed(name, error, read_some)
            if self.health[name].errors >= 3:
                self.third.set()

    poller = Watched(
        local_bus(device), [device], load_driver("gpio-counter"), lambda *_: None, None, tmp_path
    )

    async def body() -> None:
        task = asyncio.create_task(poller.run())
        try:
            await asyncio.wait_for(poller.third.wait(), 10)  # backoff: 0.5 s, then 1 s at most
        finally:
            await cancel_and_wait(task)

    with caplog.at_level(logging.INFO):
        run(body(), timeout=15)
    health = poller.health["rain"]
    assert health.failing
    assert health.last_error.startswith("gpio: no GPIO pin factory")
    said = [r.getMessage() for r in caplog.records if "pin factory" in r.getMessage()]
    assert said == [f"device rain: {health.last_error}"]


# --- the whole agent


def test_the_agent_counts_publishes_and_keeps_the_total(tmp_path: Path, broker: Broker) -> None:
    fragment = textwrap.dedent(
        """
        [[device]]
        name = "rain"
        driver = "gpio-counter"
        interval = "100ms"
        pin = 5
        debounce = "0s"
          [[device.point]]
          name = "tips"
          measure = "total"
        """
    )
    config = load(tmp_path, fragment, url=broker.url)
    pins = Device.pin_factory = MockFactory()  # gpiozero's choice, as GPIOZERO_PIN_FACTORY=mock

    async def agent_run(tips: int, total: int) -> list[dict[str, Any]]:
        stop = asyncio.Event()
        task = asyncio.create_task(Agent(config).run(stop))
        try:
            async with Subscriber(broker.host, broker.port, "g/gw/telemetry") as sub:
                await sub.wait_samples(1, "rain")  # polled: the pin is watched
                for _ in range(tips):
                    pins.pin(5).drive_low()
                    pins.pin(5).drive_high()
                await sub.wait_for(
                    lambda _: any(s["values"]["tips"] == total for s in sub.samples("rain"))
                )
                samples = sub.samples("rain")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await cancel_and_wait(task)
        return samples

    first = run(agent_run(3, total=3), timeout=30)
    assert first[0]["values"] == {"tips": 0}
    assert first[-1]["values"] == {"tips": 3}
    kept = tmp_path / "data" / STATE_DIR / "rain.json"
    assert json.loads(kept.read_text()) == {"pulses": 3}
    again = run(agent_run(1, total=4), timeout=30)
    assert again[0]["values"] == {"tips": 3}
    assert again[-1]["values"] == {"tips": 4}
    assert json.loads(kept.read_text()) == {"pulses": 4}
    assert os.listdir(tmp_path / "data" / STATE_DIR) == ["rain.json"]


def test_the_agent_hands_over_its_devices_so_relays_are_safe_before_any_poll(
    tmp_path: Path,
) -> None:
    device = load(tmp_path, RELAYS).device("pumps")
    pins = Device.pin_factory = MockFactory()  # gpiozero's choice, as GPIOZERO_PIN_FACTORY=mock
    pins.pin(20).drive_high()  # the board left the pump relay on

    async def body() -> bool:
        driver = build_driver(GpioOutputDriver, local_bus(device), DriverContext(devices=(device,)))
        async with driver:
            return bool(pins.pin(20).state)

    assert run(body()) is False
