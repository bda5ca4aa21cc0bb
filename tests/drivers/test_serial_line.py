"""The `serial-line` driver: ASCII sensors on a plain serial port, over real pseudo-terminals."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agent.api import BusConfig, DeviceConfig, PointConfig
from agent.api.pty import PtyLink
from agent.config import load_config
from agent.errors import BusError, ConfigError, DeviceError
from agent.testkit import run
from agent.testkit.sensor import SerialSensor
from drivers.serial_line.driver import SerialLineDriver, decode_escapes


def bus_at(path: str, **overrides: Any) -> BusConfig:
    settings: dict[str, Any] = {"timeout": 0.5, **overrides}
    return BusConfig("line", "serial", serial_port=path, **settings)


def device(options: dict[str, Any], *points: PointConfig) -> DeviceConfig:
    return DeviceConfig("wx", "line", "serial-line", 1.0, points=points, options=options)


def point(name: str, **options: Any) -> PointConfig:
    scale = options.pop("scale", 1.0)
    offset = options.pop("offset", 0.0)
    return PointConfig(name, scale=scale, offset=offset, options=options)


WEATHER = device(
    {"command": "R\\r", "terminator": "\r\n", "pattern": r"T=(?P<t>-?[\d.]+) H=(?P<h>\d+)"},
    point("temperature", group="t", scale=0.1, offset=-1.0),
    point("h", type="int"),
)


def test_escapes_are_decoded() -> None:
    assert decode_escapes("R\\r\\n\\t\\x02\\\\x") == b"R\r\n\t\x02\\x"
    with pytest.raises(ValueError, match="not an escape"):
        decode_escapes("R\\m")


def test_a_regex_answer_is_parsed_and_scaled() -> None:
    async def body() -> None:
        async with SerialSensor(terminator="") as sensor:
            agent = sensor.path
            sensor.answer(b"R\r", [b"T=215 H=40\r\nT=0 H=0\r\n", b"T=-10 H=41\r\n"])
            assert SerialLineDriver.validate(bus_at(agent), [WEATHER]) == []
            async with SerialLineDriver(bus_at(agent)) as driver:
                first = await driver.read(WEATHER)
                second = await driver.read(WEATHER)
        assert first.values == {"temperature": pytest.approx(20.5), "h": 40}
        assert first.errors == ()
        # the unasked-for second line of the first answer was not taken for the second's
        assert second.values == {"temperature": pytest.approx(-2.0), "h": 41}
        assert driver.counters["wx"]["lines"] == 2

    run(body(), 10)


def test_delimited_fields() -> None:
    meter = device(
        {"command": "?\\n", "delimiter": ","},
        point("level", field=1, scale=2.0),
        point("state", field=2, type="string"),
        point("alarm", field=3, type="bool"),
        point("count", field=4, type="int"),
    )

    async def body() -> None:
        async with SerialSensor(terminator="") as sensor:
            agent = sensor.path
            sensor.answer(b"?\n", [b"L1, 3.25 ,ok,OFF,x7\n"])
            assert SerialLineDriver.validate(bus_at(agent), [meter]) == []
            async with SerialLineDriver(bus_at(agent)) as driver:
                poll = await driver.read(meter)
        # a field of the wrong kind is an error for that point only
        assert poll.values == {"level": 6.5, "state": "ok", "alarm": False}
        assert len(poll.errors) == 1
        assert "count" in poll.errors[0]
        assert "'x7' is not an int" in poll.errors[0]

    run(body(), 10)


def test_a_garbage_line_is_counted_and_reported_and_the_next_poll_is_fine() -> None:
    async def body() -> None:
        async with SerialSensor(terminator="") as sensor:
            agent = sensor.path
            replies = [b"T=215 H=40\r\n", b"\x00#?garbage\r\n", b"T=220 H=42\r\n"]
            sensor.answer(b"R\r", replies)
            async with SerialLineDriver(bus_at(agent)) as driver:
                assert (await driver.read(WEATHER)).values["h"] == 40
                with pytest.raises(DeviceError) as failed:
                    await driver.read(WEATHER)
                assert (await driver.read(WEATHER)).values["h"] == 42
        message = str(failed.value)
        assert "malformed line (1 so far)" in message
        assert "'\\x00#?garbage'" in message
        assert driver.counters["wx"]["malformed"] == 1
        assert driver.counters["wx"]["lines"] == 2

    run(body(), 10)


def test_a_missing_group_is_an_error_for_its_point_only() -> None:
    optional = device(
        {"command": "R\\r", "pattern": r"T=(?P<t>\S+)( H=(?P<h>\S+))?"},
        point("t"),
        point("h"),
    )

    async def body() -> None:
        async with SerialSensor(terminator="") as sensor:
            agent = sensor.path
            sensor.answer(b"R\r", [b"T=1.5\n"])
            async with SerialLineDriver(bus_at(agent)) as driver:
                poll = await driver.read(optional)
        assert poll.values == {"t": 1.5}
        assert poll.errors == ("device wx: h: no group h in 'T=1.5'",)

    run(body(), 10)


def test_without_a_command_the_next_printed_line_is_read() -> None:
    streaming = device({"pattern": r"^(?P<v>\d+)$", "line_timeout": 2.0}, point("v", type="int"))

    async def body() -> None:
        async with SerialSensor(terminator="") as sensor:
            agent = sensor.path

            async def printing() -> None:
                # The sensor's own period, not a synchronisation: it prints whether read or not.
                for n in range(3, 1000):
                    sensor.print(b"%d\n" % n)
                    await asyncio.sleep(0.02)

            printer = asyncio.create_task(printing())
            try:
                async with SerialLineDriver(bus_at(agent)) as driver:
                    first = (await driver.read(streaming)).values["v"]
                    second = (await driver.read(streaming)).values["v"]
            finally:
                printer.cancel()
        assert isinstance(first, int)
        assert isinstance(second, int)
        assert 3 <= first < second

    run(body(), 10)


def test_no_answer_is_a_device_error_within_the_timeout() -> None:
    silent = device({"command": "R\\r", "pattern": "(?P<t>.+)", "line_timeout": 0.2}, point("t"))

    async def body() -> None:
        async with SerialSensor(terminator="") as sensor:
            agent = sensor.path
            sensor.answer(b"R\r", lambda _: None)  # heard, not answered
            async with SerialLineDriver(bus_at(agent)) as driver:
                started = time.monotonic()
                with pytest.raises(DeviceError, match=r"no line to 'R\\\\r' within 0.2s"):
                    await driver.read(silent)
                elapsed = time.monotonic() - started
        assert 0.2 <= elapsed < 1.0
        assert driver.counters["wx"]["timeouts"] == 1
        assert sensor.commands == 1  # the command was sent (and heard by the sensor)

    run(body(), 10)


def test_a_cancelled_read_stops_at_once_and_leaves_the_port_usable() -> None:
    async def body() -> None:
        async with SerialSensor(terminator="") as sensor:
            agent = sensor.path
            sensor.answer(b"R\r", lambda _: None)  # heard, not answered
            async with SerialLineDriver(bus_at(agent, timeout=30.0)) as driver:
                reading = asyncio.create_task(driver.read(WEATHER))
                await sensor.asked.wait()  # the poll is waiting for its answer
                reading.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await reading
                sensor.answer(b"R\r", b"T=1 H=2\r\n")
                assert (await driver.read(WEATHER)).values["h"] == 2

    run(body(), 10)


def test_a_port_that_cannot_be_opened_is_a_bus_error(tmp_path: Path) -> None:
    async def body() -> None:
        with pytest.raises(BusError, match=r"cannot open .*ttyNONE"):
            async with SerialLineDriver(bus_at(str(tmp_path / "ttyNONE"))):
                pass
        async with PtyLink() as link:
            agent, _ = link.paths
            async with SerialLineDriver(bus_at(agent)):
                with pytest.raises(BusError, match="cannot open"):  # held exclusively
                    async with SerialLineDriver(bus_at(agent)):
                        pass

    run(body(), 10)


def test_validate_refuses_what_cannot_work() -> None:
    bus = bus_at("/dev/ttyUSB0")
    problems = SerialLineDriver.validate(
        bus,
        [
            device({"pattern": "(?P<t>.+)"}, point("temp"), point("x", group="t", field=1)),
            device({"delimiter": ","}, point("a"), point("b", field=0, group="t")),
            device({}, point("a")),
            device({"pattern": "(?P<t>.+)", "delimiter": ","}, point("t")),
            device({"delimiter": ","}, point("s", field=0, type="string", scale=2.0)),
        ],
    )
    assert problems == [
        ("device.wx.point.temp.name", 'the pattern has no group "temp"; its groups: t'),
        ("device.wx.point.x.field", "applies with delimiter; with pattern use group"),
        ("device.wx.point.a.field", "is required with delimiter (a 0-based index)"),
        ("device.wx.point.b.group", "applies with pattern; with delimiter use field"),
        (
            "device.wx",
            'needs a valid pattern (named groups, e.g. "T=(?P<t>\\S+)") or a delimiter (e.g. ",")',
        ),
        ("device.wx.delimiter", "a device has a pattern or a delimiter, not both"),
        ("device.wx.point.s.type", "scale and offset apply to numbers, not to string"),
    ]
    assert SerialLineDriver.validate(BusConfig("line", "serial"), []) == [
        ("bus.line.port", "is required: the serial port's path")
    ]


# --- through the loader


CONFIG = """
[agent]
id = "gw"
data_dir = "data"
[[bus]]
name = "line"
type = "serial"
port = "/dev/ttyUSB0"
baudrate = 19200
timeout = "300ms"
[[device]]
name = "wx"
bus = "line"
driver = "serial-line"
interval = "5s"
command = 'R\\r'
{device}
  [[device.point]]
  name = "t"
  {point}
"""


def load(tmp_path: Path, device: str = 'pattern = "T=(?P<t>\\\\S+)"', point: str = "") -> Any:
    path = tmp_path / "site.toml"
    path.write_text(CONFIG.replace("{device}", device).replace("{point}", point))
    return load_config(path, environ={})[0]


def problems_of(tmp_path: Path, **parts: str) -> list[str]:
    with pytest.raises(ConfigError) as failed:
        load(tmp_path, **parts)
    return [f"{p.path}: {p.message}" for p in failed.value.problems if not p.warning]


def test_a_serial_line_device_loads(tmp_path: Path) -> None:
    config = load(tmp_path, point='type = "number"\n  scale = 0.5')
    bus, wx = config.bus("line"), config.device("wx")
    assert (bus.type, bus.serial_port, bus.baudrate, bus.timeout) == (
        "serial",
        "/dev/ttyUSB0",
        19200,
        0.3,
    )
    assert wx.options == {"command": "R\\r", "pattern": "T=(?P<t>\\S+)"}
    assert wx.points[0].options == {"type": "number"}
    assert wx.points[0].scale == 0.5


def test_a_bad_regex_is_a_problem_at_its_key(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, device='pattern = "T=(?P<t>\\\\S+"')
    assert problems == [
        "device.wx.pattern: is not a valid regular expression: "
        "missing ), unterminated subpattern at position 2",
    ]  # and nothing more: the driver judges only devices whose own keys all loaded


def test_field_without_delimiter_is_a_problem(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, point="field = 1")
    assert problems == ["device.wx.point.t.field: applies with delimiter; with pattern use group"]


def test_an_unknown_key_is_a_problem(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, device='pattern = "(?P<t>.+)"\nterminater = "\\r"')
    assert problems == ['device.wx.terminater: unknown key (did you mean "terminator"?)']


def test_a_device_on_a_serial_bus_must_name_its_driver(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        CONFIG.replace('driver = "serial-line"\n', "")
        .replace("{device}", "")
        .replace("{point}", "")
    )
    with pytest.raises(ConfigError) as failed:
        load_config(path, environ={})
    assert [p.path for p in failed.value.problems if not p.warning] == ["device.wx.driver"]
    assert "serial-line" in failed.value.problems[0].message


def test_modbus_keys_are_unknown_on_a_serial_bus(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    text = CONFIG.replace("[[device]]", "merge_gap = 4\n[[device]]")
    path.write_text(text.split("[[device]]")[0])
    with pytest.raises(ConfigError) as failed:
        load_config(path, environ={})
    assert [f"{p.path}: {p.message}" for p in failed.value.problems] == [
        'bus.line.merge_gap: unknown key (did you mean "request_gap"?)'
    ]
