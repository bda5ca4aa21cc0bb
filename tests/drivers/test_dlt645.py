"""The `dlt645` driver: frames against bytes computed by hand from DL/T 645-2007, then the driver
against emulated meters on real pseudo-terminals (faults, scan, the command line, the agent)."""

from __future__ import annotations

import asyncio
import io
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.api import BusConfig, DeviceConfig, PointConfig
from agent.api.pty import PtyLink
from agent.cli.tools import plan_lines
from agent.config import Config, load_config
from agent.config.loader import builtin_templates
from agent.errors import ConfigError, DeviceError
from agent.poll.scheduler import BusPoller
from agent.testkit import run
from agent.testkit.process import cli_async
from drivers.dlt645 import Dlt645Driver
from drivers.dlt645 import protocol as p
from drivers.dlt645.driver import NoAnswer, point_format
from drivers.dlt645.emulator import Dlt645Bus, SimulatedMeter
from drivers.dlt645.scan import NO_METER, SEVERAL, scan_dlt645_bus

ADDRESS = "000012345678"
VOLTAGE, CURRENT, ENERGY, POWER, FREQUENCY = (
    0x02010100,
    0x02020100,
    0x00000000,
    0x02030000,
    0x02800002,
)


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text)


# --- the protocol, against bytes computed by hand


def test_requests_are_the_bytes_the_standard_gives() -> None:
    # The read-address request every DL/T 645 tool shows: 68, AA six times, 68 13 00 DF 16.
    assert p.read_address_request() == hexbytes("FEFEFEFE 68AAAAAAAAAAAA68 1300 DF16")
    # Total energy from any meter: DI 00000000 is 33 33 33 33 on the wire, CS AD.
    assert p.read_request(p.WILDCARD, ENERGY) == hexbytes(
        "FEFEFEFE 68AAAAAAAAAAAA68 1104 33333333 AD16"
    )
    # Phase A voltage of meter 000012345678: address 78 56 34 12 00 00, DI 00 01 01 02 + 0x33.
    assert p.address_bytes(ADDRESS) == hexbytes("785634120000")
    assert p.read_request(p.address_bytes(ADDRESS), VOLTAGE) == hexbytes(
        "FEFEFEFE 68785634120000 68 1104 33343435 C916"
    )


def test_a_reply_is_taken_apart_from_hand_computed_bytes() -> None:
    # 220.1 V: BCD 22 01, low byte first 01 22, + 0x33: 34 55; CS D4.
    raw = hexbytes("FEFE 68785634120000 68 9106 33343435 3455 D416")
    stripped = raw[2:]
    assert p.frame_size(raw) is None  # a preamble byte: dropped
    assert p.frame_size(stripped[:9]) == 0  # not yet the length byte
    assert p.frame_size(stripped) == len(stripped)
    reply = p.reply_to(stripped, p.address_bytes(ADDRESS), p.READ_DATA)
    assert p.value_bytes(reply, VOLTAGE, 2) == hexbytes("0122")
    assert p.decode(p.value_bytes(reply, VOLTAGE, 2), p.Format.parse("XXX.X")) == 220.1


def test_faulty_replies_are_refused_each_in_its_own_words() -> None:
    asked = p.address_bytes(ADDRESS)
    good = hexbytes("68785634120000 68 9106 33343435 3455 D416")
    with pytest.raises(p.ChecksumError, match="checksum mismatch: CS D5, the bytes sum to D4"):
        p.reply_to(good[:-2] + b"\xd5\x16", asked, p.READ_DATA)
    with pytest.raises(p.AddressMismatch, match="from address 000012345679, not 000012345678"):
        p.reply_to(p.frame(p.address_bytes("000012345679"), 0x91, b"\0\1\1\2\1\x22"), asked, 0x11)
    # 0xD1 with error byte 02 (+0x33 = 35): bit 1, "no requested data".
    abnormal = hexbytes("68785634120000 68 D101 35 EB16")
    with pytest.raises(p.AbnormalReply, match=r"error byte 0x02 \(no requested data\)"):
        p.reply_to(abnormal, asked, p.READ_DATA)
    assert str(p.AbnormalReply(0x05)) == (
        "abnormal reply, error byte 0x05 (other error, wrong password or not authorised)"
    )
    with pytest.raises(p.ProtocolError, match="a reply for identifier 02010100, not 02010200"):
        p.value_bytes(p.reply_to(good, asked, 0x11), 0x02010200, 2)
    with pytest.raises(
        p.ProtocolError, match=r"2 value byte\(s\) for 02010100, where its format needs 3"
    ):
        p.value_bytes(p.reply_to(good, asked, 0x11), VOLTAGE, 3)


def test_a_wildcard_address_matches_any_reply() -> None:
    assert p.matches(hexbytes("785634120000"), p.WILDCARD)
    assert p.matches(hexbytes("785634120000"), hexbytes("78AAAAAAAAAA"))
    assert not p.matches(hexbytes("795634120000"), hexbytes("78AAAAAAAAAA"))


def test_bcd_values_low_byte_first_with_a_sign_in_the_top_bit() -> None:
    # -12.345 A: digits 01 23 45, sign bit on the most significant byte, sent 45 23 81.
    assert p.decode(hexbytes("452381"), p.Format(6, 3, True)) == -12.345
    assert p.decode(hexbytes("56341200"), p.Format(8, 2)) == 1234.56
    assert p.decode(hexbytes("00500000"), p.Format(8, 0)) == 5000
    assert p.encode(-12.345, p.Format(6, 3, True)) == hexbytes("452381")
    assert p.encode(50.0, p.Format(4, 2)) == hexbytes("0050")
    with pytest.raises(p.BcdError, match="garbled BCD 4a 23 01: a digit above 9"):
        p.decode(hexbytes("4A2301"), p.Format(6, 3))
    with pytest.raises(ValueError, match="does not fit"):
        p.encode(1000.0, p.Format(4, 1))


def test_formats_parse_as_the_tables_write_them() -> None:
    assert p.Format.parse("XXX.XXX") == p.Format(6, 3)
    assert p.Format.parse("XXXXXXXX").size == 4
    assert str(p.Format(6, 4, True)) == "XX.XXXX"
    with pytest.raises(ValueError, match="has 5 digits: a value is whole bytes"):
        p.Format.parse("XXX.XX")
    with pytest.raises(ValueError, match="is not a format"):
        p.Format.parse("NN.NN")
    assert p.known_format(CURRENT) == p.Format(6, 3, True)
    assert p.known_format(FREQUENCY) == p.Format(4, 2)


# --- the driver on a wire


def point(name: str, di: str, **keys: Any) -> PointConfig:
    own: dict[str, Any] = {k: keys.pop(k) for k in ("format", "signed") if k in keys}
    options = {"di": di, **own}
    return PointConfig(name, options=options, **keys)


def meter_device(
    name: str, address: str, points: Sequence[PointConfig], **options: Any
) -> DeviceConfig:
    return DeviceConfig(
        name, "meters", "dlt645", 1.0, points=tuple(points), options={"address": address, **options}
    )


METER_POINTS = [
    point("voltage", "02010100"),
    point("current", "02020100"),
    point("power", "02030000", scale=1000.0),
    point("energy", "00000000"),
]


def a_meter(address: str = ADDRESS, **faults: Any) -> SimulatedMeter:
    values = {VOLTAGE: 230.4, CURRENT: -5.125, POWER: -1.1782, ENERGY: 1234.56, FREQUENCY: 49.98}
    return SimulatedMeter(address, values, **faults)


@asynccontextmanager
async def wired(
    meters: Sequence[SimulatedMeter], timeout: float = 0.3, request_gap: float = 0.0
) -> AsyncIterator[tuple[Dlt645Driver, Dlt645Bus]]:
    """A driver on one end of a cable, the meters on the other (parity N: a pty has none)."""
    async with PtyLink() as link:
        bus = BusConfig(
            "meters",
            "serial",
            serial_port=link.paths[0],
            baudrate=2400,
            timeout=timeout,
            request_gap=request_gap,
        )
        async with Dlt645Bus(link.paths[1], meters) as far, Dlt645Driver(bus) as driver:
            yield driver, far


def poll_of(meter: SimulatedMeter, points: Sequence[PointConfig] = METER_POINTS) -> Any:
    device = meter_device("house", meter.address, points)

    async def scenario() -> Any:
        async with wired([meter]) as (driver, _):
            return await driver.read(device), driver.counters["house"]

    return run(scenario(), timeout=10)


@pytest.mark.parametrize("preamble", [0, 1, 4])
def test_a_poll_reads_every_point_whatever_the_preamble(preamble: int) -> None:
    meter = a_meter(preamble=preamble)
    poll, counters = poll_of(meter)
    assert poll.values == {"voltage": 230.4, "current": -5.125, "power": -1178.2, "energy": 1234.56}
    assert poll.errors == ()
    assert counters["ok"] == 4
    assert [di for _, di in meter.heard] == [VOLTAGE, CURRENT, POWER, ENERGY]


def test_a_reply_with_following_frames_is_read_too() -> None:
    poll, _ = poll_of(a_meter(following=True))
    assert poll.values["voltage"] == 230.4


def test_an_adapter_that_hears_its_own_request_is_not_taken_for_the_meter() -> None:
    device = meter_device("house", ADDRESS, METER_POINTS[:1])

    async def scenario() -> Any:
        async with PtyLink() as link, Dlt645Bus(link.paths[1], [a_meter()], echo=True):
            bus = BusConfig("meters", "serial", serial_port=link.paths[0], timeout=0.3)
            async with Dlt645Driver(bus) as driver:
                return await driver.read(device), driver.counters["house"]

    poll, counters = run(scenario(), timeout=10)
    assert (poll.values, poll.errors) == ({"voltage": 230.4}, ())
    assert counters["garbled"] == 0


def test_one_identifier_read_by_two_points_is_asked_once() -> None:
    meter = a_meter()
    poll, _ = poll_of(meter, [point("kw", "02030000"), point("w", "02030000", scale=1000.0)])
    assert poll.values == {"kw": -1.1782, "w": -1178.2}
    assert len(meter.heard) == 1


def test_a_known_identifier_keeps_its_sign_when_a_point_gives_its_format() -> None:
    assert point_format(point("i", "02020100", format="XXXXX.X")) == p.Format(6, 1, True)
    assert point_format(point("i", "02020100", signed=False)) == p.Format(6, 3, False)
    assert point_format(point("t", "02800007", format="XXX.X")) == p.Format(4, 1, False)


def test_a_point_may_give_the_format_of_an_identifier_the_driver_does_not_know() -> None:
    meter = a_meter()
    meter.values[0x02800007] = -7.5
    meter.formats[0x02800007] = p.Format(4, 1, True)
    poll, _ = poll_of(meter, [point("temperature", "02800007", format="XXX.X", signed=True)])
    assert poll.values == {"temperature": -7.5}


@pytest.mark.parametrize(
    ("fault", "counter", "message"),
    [
        ("bad_checksum", "checksum", "checksum mismatch: CS "),
        ("wrong_address", "wrong_address", "a reply from address 000012345679, not 000012345678"),
        ("garble_bcd", "garbled", "garbled BCD "),
        (
            "truncate",
            "garbled",
            "a reply cut short: 9 byte(s) within 0.3s: 68 78 56 34 12 00 00 68 91",
        ),
    ],
)
def test_a_spoilt_reply_fails_its_point_only(fault: str, counter: str, message: str) -> None:
    meter = a_meter()
    setattr(meter, fault, 1)
    poll, counters = poll_of(meter)
    assert set(poll.values) == {"current", "power", "energy"}
    (error,) = poll.errors
    assert error.startswith(f"device house: voltage (DI 02010100): {message}")
    assert counters[counter] == 1
    assert counters["ok"] == 3


def test_a_late_reply_is_passed_over_not_taken_for_the_next_answer() -> None:
    """A meter that answers after the timeout: its reply arrives during the next request, and
    is no answer to it (another identifier); every later point is still read."""
    meter = a_meter(late=1, late_by=0.6)
    device = meter_device("house", ADDRESS, METER_POINTS)
    current = p.known_format(CURRENT) or p.Format(6, 3, True)

    async def scenario() -> Any:
        async with wired([meter], timeout=0.2) as (driver, _):
            with pytest.raises(NoAnswer):
                await driver.read_value(device, CURRENT, current)
            return await driver.read(device), driver.counters["house"]

    poll, counters = run(scenario(), timeout=10)
    assert (poll.values, poll.errors) == (
        {"voltage": 230.4, "current": -5.125, "power": -1178.2, "energy": 1234.56},
        (),
    )
    assert (counters["timeouts"], counters["stray"], counters["ok"]) == (1, 1, 4)


STRAY = p.frame(p.address_bytes("000000000001"), 0x91, bytes.fromhex("00010102") + b"\x01\x22")


@pytest.mark.parametrize(
    ("noise", "stray"),
    [
        (b"\x68" * 8, 0),  # false starts: 68 68 68 68 68 68 68 68 FE FE 68 ...
        (b"\x68\x01\x02\x03\x04\x05\x06\x68\x91\x40", 0),  # one that claims 64 data bytes
        (b"\x00\xff\x68\x12", 0),
        (STRAY, 1),  # another meter's reply, from another address
    ],
    ids=["68s", "false-length", "bytes", "stray-frame"],
)
def test_noise_before_a_reply_is_passed_over(noise: bytes, stray: int) -> None:
    poll, counters = poll_of(a_meter(noise=noise, preamble=2), METER_POINTS[:1])
    assert (poll.values, poll.errors) == ({"voltage": 230.4}, ())
    assert counters["stray"] == stray


def cut(data: bytes) -> tuple[list[bytes], p.Framer]:
    """The frames ``read_frame`` cuts out of ``data`` with a ``Framer``."""
    framer, buffer, frames = p.Framer(), bytearray(data), []
    while buffer:
        size = framer(bytes(buffer))
        if size is None:
            del buffer[:1]
        elif size and len(buffer) >= size:
            frames.append(bytes(buffer[:size]))
            del buffer[:size]
        else:
            break
    return frames, framer


def test_the_framer_resyncs_after_a_false_start() -> None:
    good = hexbytes("68785634120000 68 9106 33343435 3455 D416")
    # 68 … 68 with a length of 1: a whole candidate that does not end in 16, at offset 3.
    assert cut(b"\x68" * 8 + b"\xfe\xfe" + good)[0] == [good]
    # A candidate still incomplete (L = 0x20) with a whole frame inside it.
    assert cut(hexbytes("68 010203040506 68 91 20") + good)[0] == [good]
    # L above the standard's 200: no frame.
    assert cut(hexbytes("68 010203040506 68 91 C9") + good)[0] == [good]
    # A spoilt frame alone: nothing cut, the checksum said.
    frames, framer = cut(good[:-2] + b"\xd5\x16")
    assert frames == []
    assert str(framer.spoilt).startswith("checksum mismatch: CS D5, the bytes sum to D4")
    # A frame still arriving is waited for, not given up.
    frames, framer = cut(good[:-3])
    assert (frames, framer.begun) == ([], good[:-3])


def test_a_slow_meter_within_the_standards_timing_is_read() -> None:
    """The wait counts from when the request has left, plus the reply's time on the wire: a
    meter that begins just before the timeout at 2400 baud ends well after it."""
    meter = a_meter(delay=0.18, byte_time=11 / 2400)
    device = meter_device("house", ADDRESS, METER_POINTS[:2])

    async def scenario() -> Any:
        async with wired([meter], timeout=0.2) as (driver, _):
            return await driver.read(device)

    poll = run(scenario(), timeout=10)
    assert (poll.values, poll.errors) == ({"voltage": 230.4, "current": -5.125}, ())


def test_the_request_gap_is_kept_between_requests() -> None:
    device = meter_device("house", ADDRESS, METER_POINTS)
    gap = 0.1

    async def scenario() -> list[float]:
        async with wired([a_meter()], request_gap=gap) as (driver, far):
            await driver.read(device)
            await driver.read(device)
            return far.heard_at

    heard = run(scenario(), timeout=10)
    assert len(heard) == 8
    assert min(b - a for a, b in itertools.pairwise(heard)) >= gap


def test_an_identifier_the_meter_lacks_is_its_abnormal_reply_named() -> None:
    poll, counters = poll_of(a_meter(), [*METER_POINTS, point("voltage_b", "02010200")])
    assert len(poll.values) == 4
    assert poll.errors == (
        "device house: voltage_b (DI 02010200): abnormal reply, error byte 0x02 "
        "(no requested data)",
    )
    assert counters["abnormal"] == 1


def test_a_meter_whose_every_point_fails_is_a_device_error() -> None:
    meter = a_meter(bad_checksum=2)
    device = meter_device("house", ADDRESS, METER_POINTS[:2])

    async def scenario() -> None:
        async with wired([meter]) as (driver, _):
            with pytest.raises(DeviceError) as failed:
                await driver.read(device)
            assert str(failed.value).count("checksum mismatch") == 2
            assert (await driver.read(device)).values == {"voltage": 230.4, "current": -5.125}

    run(scenario(), timeout=10)


def test_a_silent_meter_holds_the_bus_for_one_timeout_not_one_per_point() -> None:
    dead = a_meter(alive=False)
    device = meter_device("house", ADDRESS, METER_POINTS, line_timeout=0.2)

    async def scenario() -> float:
        async with wired([dead]) as (driver, _):
            started = time.monotonic()
            with pytest.raises(DeviceError) as failed:
                await driver.read(device)
            took = time.monotonic() - started
            assert driver.counters["house"]["timeouts"] == 1
        assert str(failed.value).startswith("device house: no answer within 0.2s on /dev/")
        return took

    took = run(scenario(), timeout=10)
    assert 0.2 <= took < 0.6  # four points: one timeout, not four


def test_meters_sharing_a_bus_each_answer_to_their_own_address() -> None:
    first, second = a_meter(), a_meter("210407000456")
    second.values[VOLTAGE] = 229.9
    devices = [
        meter_device("a", ADDRESS, METER_POINTS[:1]),
        meter_device("b", "210407000456", METER_POINTS[:1]),
    ]

    async def scenario() -> list[Any]:
        async with wired([first, second]) as (driver, _):
            return [(await driver.read(d)).values for d in devices]

    assert run(scenario(), timeout=10) == [{"voltage": 230.4}, {"voltage": 229.9}]


def test_the_agent_polls_a_meter_end_to_end() -> None:
    """Under the scheduler: two meters polled on their interval; a faulty reply in between
    costs one point of one poll, and polling goes on."""
    first, second = a_meter(garble_bcd=1), a_meter("210407000456")
    devices = [
        DeviceConfig(
            "a",
            "meters",
            "dlt645",
            0.2,
            points=tuple(METER_POINTS[:2]),
            options={"address": ADDRESS},
        ),
        DeviceConfig(
            "b",
            "meters",
            "dlt645",
            0.2,
            points=tuple(METER_POINTS[:1]),
            options={"address": "210407000456"},
        ),
    ]
    got: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    async def scenario() -> None:
        async with PtyLink() as link, Dlt645Bus(link.paths[1], [first, second]):
            bus = BusConfig(
                "meters", "serial", serial_port=link.paths[0], baudrate=2400, timeout=0.3
            )
            done = asyncio.Event()

            def sink(device: str, ts: int, mono: float, values: Any) -> None:
                got[device].append(dict(values))
                if all(len(v) >= 3 for v in got.values()):
                    done.set()

            poller = BusPoller(bus, devices, Dlt645Driver, sink)
            task = asyncio.create_task(poller.run())
            try:
                await asyncio.wait_for(done.wait(), 8)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    run(scenario(), timeout=15)
    assert got["a"][0] == {"current": -5.125}  # the garbled voltage: that point only
    assert got["a"][1] == {"voltage": 230.4, "current": -5.125}
    assert got["b"][:3] == [{"voltage": 230.4}] * 3


# --- configuration

CONFIG = """
[agent]
id = "farm-7"
data_dir = "data"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[bus]]
name = "meters"
type = "serial"
port = "/dev/ttyUSB0"
baudrate = 2400
parity = "{parity}"
[[device]]
name = "house"
bus = "meters"
driver = "dlt645"
interval = "1m"
{device}
  [[device.point]]
  name = "voltage"
  {point}
"""


def config_text(
    device: str = f'address = "{ADDRESS}"', point: str = 'di = "02010100"', parity: str = "E"
) -> str:
    return CONFIG.format(device=device, point=point, parity=parity)


def load(tmp_path: Path, **parts: str) -> Config:
    path = tmp_path / "site.toml"
    path.write_text(config_text(**parts))
    return load_config(path, environ={})[0]


def problems_of(tmp_path: Path, **parts: str) -> list[str]:
    with pytest.raises(ConfigError) as failed:
        load(tmp_path, **parts)
    return [f"{p.path}: {p.message}" for p in failed.value.problems if not p.warning]


def test_a_dlt645_device_loads(tmp_path: Path) -> None:
    config = load(tmp_path, point='di = "0202ff00"\n  format = "XXX.XXX"\n  signed = true')
    house = config.device("house")
    assert house.options == {"address": ADDRESS}
    assert house.points[0].options == {"di": "0202FF00", "format": "XXX.XXX", "signed": True}
    assert plan_lines(config)[1] == "  read 0202FF00 (voltage) from 000012345678"


@pytest.mark.parametrize(
    ("device", "point", "problem"),
    [
        (
            "address = 12345678",
            'di = "02010100"',
            'device.house.address: write the address as a string: address = "000012345678" (a number loses the leading zeros the nameplate prints)',
        ),
        (
            'address = "12345678"',
            'di = "02010100"',
            'device.house.address: "12345678" is not a meter address: 12 decimal digits, as on the nameplate: pad it with zeros in front as the nameplate prints it, "000012345678"',
        ),
        (
            'address = "AAAAAAAAAAAA"',
            'di = "02010100"',
            'device.house.address: "AAAAAAAAAAAA" is not a meter address: 12 decimal digits, as on the nameplate',
        ),
        (
            'address = "999999999999"',
            'di = "02010100"',
            "device.house.address: 999999999999 is the broadcast address: meters never answer it",
        ),
        (
            "",
            'di = "02010100"',
            'device.house.address: is required: the 12 digits on the meter\'s nameplate, e.g. "000012345678" (`edge-agent scan` reads the address of a meter alone on the bus)',
        ),
        (
            f'address = "{ADDRESS}"',
            'di = "2010100"',
            'device.house.point.voltage.di: "2010100" is not a data identifier: 8 hexadecimal digits as the standard\'s tables write them, most significant first, e.g. "02010100"',
        ),
        (
            f'address = "{ADDRESS}"',
            "",
            'device.house.point.voltage.di: is required: the data identifier, e.g. di = "02010100"',
        ),
        (
            f'address = "{ADDRESS}"',
            'di = "02800007"',
            'device.house.point.voltage.format: is required: 02800007 is not an identifier this driver knows; give its format from the meter\'s manual, e.g. format = "XXX.XXX" (and signed = true if its top bit is a sign)',
        ),
        (
            f'address = "{ADDRESS}"',
            'di = "02800007"\n  format = "XX.X"',
            'device.house.point.voltage.format: "XX.X" has 3 digits: a value is whole bytes of two BCD digits, 2 to 16 digits',
        ),
        (
            f'address = "{ADDRESS}"',
            'di = "02010100"\n  signed = "yes"',
            "device.house.point.voltage.signed: must be true or false, got a string",
        ),
    ],
)
def test_mistakes_are_one_line_at_their_key(
    tmp_path: Path, device: str, point: str, problem: str
) -> None:
    assert problems_of(tmp_path, device=device, point=point) == [problem]


def test_two_meters_at_one_address_are_refused() -> None:
    bus = BusConfig("meters", "serial", serial_port="/dev/ttyUSB0")
    twins = [meter_device("a", ADDRESS, METER_POINTS), meter_device("b", ADDRESS, METER_POINTS)]
    assert Dlt645Driver.validate(bus, twins) == [
        (
            "device.b.address",
            "000012345678 is also device a's: two meters on one bus need different addresses",
        )
    ]


def test_the_templates_hold_known_identifiers_only(tmp_path: Path) -> None:
    templates = {t.name: t for t in builtin_templates() if t.driver == "dlt645"}
    assert set(templates) == {"dlt645-single-phase", "dlt645-three-phase"}
    single, three = templates["dlt645-single-phase"], templates["dlt645-three-phase"]
    assert {pt.options["di"] for pt in single.points} >= {
        "00000000",
        "02010100",
        "02020100",
        "02800002",
    }
    assert {pt.options["di"] for pt in three.points} >= {
        "02010300",
        "02020300",
        "02030300",
        "00010400",
    }
    for pt in [*single.points, *three.points]:
        assert p.parse_di(pt.options["di"]) in p.KNOWN, pt.name
    config = load(tmp_path, point='di = "02010100"').device("house")
    assert config.points[0].name == "voltage"
    path = tmp_path / "t.toml"
    path.write_text(
        config_text().replace(
            '  [[device.point]]\n  name = "voltage"\n  di = "02010100"\n',
            'template = "dlt645-three-phase"\n',
        )
    )
    (house,) = load_config(path, environ={})[0].devices
    assert len(house.points) == len(three.points)
    assert Dlt645Driver.describe_point(three.points[0]) == "DI 00000000 XXXXXX.XX signed kWh"


# --- scanning


def scan_output(
    meters: Sequence[SimulatedMeter],
    configured: list[str],
    targets: str = "",
    timeout: float = 0.3,
    request_gap: float = 0.0,
    heard_at: list[float] | None = None,
) -> tuple[list[str], str]:
    out = io.StringIO()

    async def scenario() -> list[str]:
        async with PtyLink() as link, Dlt645Bus(link.paths[1], meters) as far:
            bus = BusConfig(
                "meters",
                "serial",
                serial_port=link.paths[0],
                baudrate=2400,
                timeout=timeout,
                request_gap=request_gap,
            )
            found = await scan_dlt645_bus(bus, configured, targets, out)
            (heard_at if heard_at is not None else []).extend(far.heard_at)
            return found

    found = run(scenario(), timeout=15)
    return found, out.getvalue()


def test_a_scan_reads_the_address_of_a_meter_alone_and_proposes_its_device() -> None:
    three_phase = a_meter("210407000456")
    three_phase.values[0x02010200] = 231.0
    found, printed = scan_output([three_phase], [])
    assert found == ["210407000456"]
    lines = printed.splitlines()
    assert lines[1] == "read address: the meter alone on the bus is 210407000456"
    assert lines[2] == "address 210407000456: answers, total energy 1234.56 kWh"
    assert "\n".join(lines[3:-1]) == "\n".join(
        [
            "# meter 210407000456: answers phase B voltage: three-phase",
            "[[device]]",
            'name = "meter-210407000456"',
            'bus = "meters"',
            'driver = "dlt645"',
            'address = "210407000456"',
            'template = "dlt645-three-phase"',
            'interval = "1m"',
        ]
    )
    assert lines[-1] == "found meter(s): 210407000456"


def test_several_meters_collide_on_read_address_and_are_found_by_address() -> None:
    found, printed = scan_output(
        [a_meter(), a_meter("210407000456")], [ADDRESS], "210407000456, 000000000001"
    )
    assert found == [ADDRESS, "210407000456"]
    assert "(several meters answering at once?): probe by address" in printed
    assert "address 000000000001: no answer" in printed
    assert 'template = "dlt645-single-phase"' in printed


def test_two_meters_answering_read_address_one_after_the_other_are_both_found() -> None:
    """The second reply comes after the first: the scan listens the whole timeout, says
    several meters, and probes each address it heard."""
    late = a_meter("210407000456", delay=0.1)
    found, printed = scan_output([a_meter(), late], [])
    assert found == [ADDRESS, "210407000456"]
    assert printed.splitlines()[1] == (
        f"read address: a reply from {ADDRESS}, 210407000456: several meters on the bus: "
        "probe by address"
    )
    assert "alone" not in printed


def test_a_collision_without_addresses_to_probe_does_not_end_in_no_meter() -> None:
    found, printed = scan_output([a_meter(), a_meter("210407000456")], [])
    assert found == []
    assert "(several meters answering at once?): probe by address" in printed
    assert printed.splitlines()[-1] == SEVERAL
    assert "no DL/T 645 meter answered" not in printed


def test_a_scan_waits_the_bus_timeout_for_a_slow_meter_and_keeps_the_request_gap() -> None:
    heard: list[float] = []
    slow = a_meter(delay=0.55, byte_time=11 / 2400)
    found, printed = scan_output([slow], [], timeout=0.6, request_gap=0.1, heard_at=heard)
    assert found == [ADDRESS]
    assert f"read address: the meter alone on the bus is {ADDRESS}" in printed
    assert "up to 0.6 s each" in printed.splitlines()[0]
    assert len(heard) == 3  # read address, total energy, phase B voltage
    assert min(b - a for a, b in itertools.pairwise(heard)) >= 0.1


def test_a_scan_of_an_empty_bus_says_what_to_check() -> None:
    found, printed = scan_output([a_meter(alive=False)], [ADDRESS])
    assert found == []
    assert printed.splitlines()[-1] == NO_METER.format(line="2400 8N1")
    assert "(this bus: 2400 8N1; the standard's default is 2400 8E1)" in printed


def test_a_scan_refuses_a_bad_target_address() -> None:
    with pytest.raises(ValueError, match='"12" is not a meter address'):
        scan_output([], [], "12")


def test_check_read_and_scan_from_the_command_line(tmp_path: Path) -> None:
    """What a technician types: the driver found by its entry point, the meter checked, read
    and found."""
    meter = a_meter()

    async def edge_agent(*args: str) -> tuple[int, str, str]:
        async with PtyLink() as link, Dlt645Bus(link.paths[1], [meter]):
            path = tmp_path / "site.toml"
            path.write_text(
                config_text(parity="N", point='di = "02010100"\n  unit = "V"').replace(
                    "/dev/ttyUSB0", link.paths[0]
                )
            )
            return await cli_async(*args, "-c", str(path), timeout=30)

    async def scenario() -> list[tuple[int, str, str]]:
        return [
            await edge_agent(*command)
            for command in (("check",), ("read", "house"), ("scan", "meters"))
        ]

    (check, out_c, err_c), (read, out, err), (scan, scanned, err_s) = run(scenario(), timeout=60)
    assert (check, err_c) == (0, ""), err_c
    assert "ok (1 bus(es), 1 device(s), 1 point(s)" in out_c
    assert read == 0, err
    assert out.splitlines()[-1].split() == ["voltage", "230.4", "V"]
    assert scan == 0, err_s
    assert f"read address: the meter alone on the bus is {ADDRESS}" in scanned
    assert scanned.splitlines()[-1] == f"found meter(s): {ADDRESS}"


def test_check_refuses_a_mistake_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(config_text(device="address = 12345678"))

    async def scenario() -> tuple[int, str, str]:
        return await cli_async("check", "-c", str(path), timeout=30)

    code, out, err = run(scenario(), timeout=40)
    assert (code, out) == (2, "")
    assert err.splitlines()[0].endswith(
        'device.house.address: write the address as a string: address = "000012345678" '
        "(a number loses the leading zeros the nameplate prints)"
    )
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("written", "line"),
    [
        ("", (2400, "E", 8, 1)),  # the standard's line, where the bus says nothing
        ("baudrate = 9600\n", (9600, "E", 8, 1)),  # a meter set to 9600 in its menu
        ('parity = "N"\nstopbits = 2\n', (2400, "N", 8, 2)),
    ],
)
def test_a_bus_of_meters_speaks_the_standards_line_unless_its_table_says(
    tmp_path: Path, written: str, line: tuple[int, str, int, int]
) -> None:
    text = config_text().replace('baudrate = 2400\nparity = "E"\n', written)
    path = tmp_path / "site.toml"
    path.write_text(text)
    bus = load_config(path, environ={})[0].bus("meters")
    assert (bus.baudrate, bus.parity, bus.bytesize, bus.stopbits) == line
