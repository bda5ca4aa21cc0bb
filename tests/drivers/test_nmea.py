"""The `nmea` driver: a GPS receiver's sentences, over real pseudo-terminals."""

from __future__ import annotations

import asyncio
import os
import time
import tty
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.api import BusConfig, DeviceConfig, PointConfig
from agent.api.pty import PtyLink
from agent.config import load_config
from agent.errors import ConfigError, DeviceError
from agent.model import Poll
from agent.testkit import run
from drivers.nmea.driver import FIELDS, KNOT, NmeaDriver, checksum

GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"


def sentence(body: str) -> bytes:
    return b"$%s*%02X\r\n" % (body.encode(), checksum(body))


LOST_GGA = sentence("GNGGA,123520,,,,,0,00,99.9,,M,,M,,")
LOST_RMC = sentence("GNRMC,123520,V,,,,,,,230394,,,N")
OTHER = sentence("GPGSV,1,1,01,05,40,083,46")


def bus_at(path: str, **overrides: Any) -> BusConfig:
    settings: dict[str, Any] = {"timeout": 2.0, "baudrate": 4800, **overrides}
    return BusConfig("gps-port", "serial", serial_port=path, **settings)


def point(name: str, **options: Any) -> PointConfig:
    scale = options.pop("scale", 1.0)
    offset = options.pop("offset", 0.0)
    return PointConfig(name, scale=scale, offset=offset, options=options)


def device(*points: PointConfig, **options: Any) -> DeviceConfig:
    return DeviceConfig("gps", "gps-port", "nmea", 1.0, points=points, options=options)


EVERYTHING = device(*(point(f) for f in FIELDS if f != "latitude"), point("lat", field="latitude"))


@asynccontextmanager
async def receiver(stream: Sequence[bytes] = ()) -> AsyncIterator[str]:
    """A receiver printing ``stream`` over and over (its own period, not a synchronisation: it
    prints whether read or not); yields the agent's end of the line."""
    async with PtyLink() as link:
        agent, far = link.paths
        fd = os.open(far, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)

        async def printing() -> None:
            while stream:
                for line in stream:
                    os.write(fd, line)
                await asyncio.sleep(0.02)

        printer = asyncio.create_task(printing())
        try:
            yield agent
        finally:
            printer.cancel()
            os.close(fd)


def test_the_known_checksums() -> None:
    assert checksum(GGA[1:-5].decode()) == 0x47
    assert checksum(RMC[1:-5].decode()) == 0x6A


def test_a_valid_fix_gives_every_field() -> None:
    async def body() -> None:
        async with receiver([OTHER, GGA, RMC]) as agent:
            assert NmeaDriver.validate(bus_at(agent), [EVERYTHING]) == []
            async with NmeaDriver(bus_at(agent)) as driver:
                poll = await driver.read(EVERYTHING)
        assert poll.errors == ()
        assert poll.values == {
            "lat": pytest.approx(48 + 7.038 / 60),
            "longitude": pytest.approx(11 + 31.0 / 60),
            "altitude": pytest.approx(545.4),
            "fix_quality": 1,
            "satellites": 8,
            "hdop": pytest.approx(0.9),
            "speed": pytest.approx(22.4 * KNOT),
            "course": pytest.approx(84.4),
            "gps_time": 764426119000,  # 1994-03-23T12:35:19Z
            "fix": True,
        }
        assert poll.values["speed"] == pytest.approx(11.5236, abs=1e-4)
        assert driver.counters["gps"]["sentences"] >= 2
        assert driver.counters["gps"]["bad_checksum"] == 0

    run(body(), 4)


def test_south_and_west_are_negative_and_scale_applies() -> None:
    south = sentence("GNGGA,010203.50,3351.500,S,15112.600,W,2,12,0.6,-3.0,M,,M,,")
    rmc = sentence("GNRMC,010203.50,A,3351.500,S,15112.600,W,0.0,,010125,,,D")
    gps = device(
        point("latitude"),
        point("longitude"),
        point("altitude", scale=100.0),
        point("gps_time"),
        point("course"),
    )

    async def body() -> Poll:
        async with receiver([south, rmc]) as agent, NmeaDriver(bus_at(agent)) as driver:
            return await driver.read(gps)

    poll = run(body(), 4)
    assert poll.values == {
        "latitude": pytest.approx(-(33 + 51.5 / 60)),
        "longitude": pytest.approx(-(151 + 12.6 / 60)),
        "altitude": pytest.approx(-300.0),
        "gps_time": 1735693323500,  # 2025-01-01T01:02:03.5Z
    }
    # an empty course (standing still) is an error for its point only
    assert poll.errors == ("device gps: course: no course in the sentences",)


def test_a_lost_fix_is_reported_not_a_position_of_zero() -> None:
    async def body() -> None:
        async with receiver([LOST_GGA, LOST_RMC]) as agent, NmeaDriver(bus_at(agent)) as driver:
            poll = await driver.read(EVERYTHING)
        assert poll.values == {
            "fix": False,
            "fix_quality": 0,
            "satellites": 0,
            "hdop": pytest.approx(99.9),
            "gps_time": 764426120000,
        }
        assert poll.errors == ("device gps: no fix",)
        assert driver.counters["gps"]["no_fix"] == 1

    run(body(), 4)


def test_a_good_gga_with_rmc_status_v_is_no_fix() -> None:
    rmc_v = sentence("GPRMC,123519,V,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W")

    async def body() -> Poll:
        async with receiver([GGA, rmc_v]) as agent, NmeaDriver(bus_at(agent)) as driver:
            return await driver.read(device(point("latitude"), point("fix"), point("fix_quality")))

    poll = run(body(), 4)
    assert poll.values == {"fix": False, "fix_quality": 0}
    assert poll.errors == ("device gps: no fix",)


def test_a_bad_checksum_is_counted_and_ignored() -> None:
    wrong = GGA.replace(b"545.4", b"545.5")  # another altitude under the old *47
    bare = GGA.split(b"*")[0] + b"\r\n"  # no checksum at all

    async def body() -> None:
        # Wherever in the receiver's cycle the poll starts, it reads at least two bad ones
        # before it has both a GGA and an RMC.
        stream = [wrong, bare, GGA, bare, wrong, RMC]
        async with receiver(stream) as agent, NmeaDriver(bus_at(agent)) as driver:
            poll = await driver.read(device(point("altitude"), point("fix")))
        assert poll.values == {"altitude": pytest.approx(545.4), "fix": True}
        assert driver.counters["gps"]["bad_checksum"] >= 2

    run(body(), 4)


def test_silence_is_a_device_error_within_the_timeout() -> None:
    async def body() -> None:
        async with receiver() as agent, NmeaDriver(bus_at(agent)) as driver:
            started = time.monotonic()
            with pytest.raises(DeviceError, match=r"no GGA or RMC sentence within 0\.2s"):
                await driver.read(device(point("fix"), line_timeout=0.2))
            elapsed = time.monotonic() - started
            assert driver.counters["gps"]["timeouts"] == 1
        assert 0.2 <= elapsed < 1.0

    run(body(), 4)


def test_only_bad_sentences_is_a_device_error_that_says_so() -> None:
    bad = GGA.replace(b"*47", b"*48")

    async def body() -> None:
        async with receiver([bad]) as agent, NmeaDriver(bus_at(agent)) as driver:
            with pytest.raises(DeviceError, match=r"sentence \(\d+ with a bad checksum\)"):
                await driver.read(device(point("fix"), line_timeout=0.2))

    run(body(), 4)


def test_validate_refuses_unknown_fields() -> None:
    problems = NmeaDriver.validate(
        bus_at("/dev/ttyUSB0"),
        [device(point("lat", field="latitud"), point("speeed"), point("fix", scale=2.0))],
    )
    fields = ", ".join(FIELDS)
    assert problems == [
        (
            "device.gps.point.lat.field",
            f'no field "latitud" (did you mean "latitude"?); the fields: {fields}',
        ),
        (
            "device.gps.point.speeed.name",
            f'no field "speeed" (did you mean "speed"?); the fields: {fields}',
        ),
        ("device.gps.point.fix.scale", "scale and offset apply to numbers, not fix"),
    ]


# --- through the loader

CONFIG = """
[agent]
id = "gw"
data_dir = "data"
[[bus]]
name = "gps-port"
type = "serial"
port = "/dev/ttyACM0"
baudrate = 9600
timeout = "1s"
[[device]]
name = "gps"
bus = "gps-port"
driver = "nmea"
interval = "10s"
line_timeout = "2s"
  [[device.point]]
  name = "lat"
  {point}
"""


def load(tmp_path: Path, point: str) -> Any:
    path = tmp_path / "site.toml"
    path.write_text(CONFIG.replace("{point}", point))
    return load_config(path, environ={})[0]


def test_an_nmea_device_loads(tmp_path: Path) -> None:
    gps = load(tmp_path, 'field = "latitude"\n  unit = "°"').device("gps")
    assert gps.options == {"line_timeout": 2.0}
    assert gps.points[0].options == {"field": "latitude"}


def test_an_unknown_field_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as failed:
        load(tmp_path, 'field = "longitud"')
    assert [(p.path, p.message) for p in failed.value.problems if not p.warning] == [
        (
            "device.gps.point.lat.field",
            f'no field "longitud" (did you mean "longitude"?); the fields: {", ".join(FIELDS)}',
        )
    ]
    with pytest.raises(ConfigError) as failed:
        load(tmp_path, 'fields = "latitude"')
    assert [p.path for p in failed.value.problems if not p.warning] == [
        "device.gps.point.lat.fields"
    ]
