"""The `iec62056` driver: its protocol against bytes written out from IEC 62056-21, and the driver
against emulated meters on real pseudo-terminals (8N1: a pty ignores parity and refuses CS7
once configured), through the CLI and under the scheduler."""

from __future__ import annotations

import asyncio
import functools
import io
import operator
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.aio import cancel_and_wait
from agent.api import BusConfig, DeviceConfig, PointConfig, Poll
from agent.cli.simulate import serve
from agent.cli.tools import plan_lines
from agent.config import Config, load_config
from agent.errors import ConfigError, DeviceError
from agent.poll.scheduler import BusPoller
from agent.testkit import run, until
from agent.testkit.process import cli_async
from drivers.iec62056 import Iec62056Driver
from drivers.iec62056 import protocol as p
from drivers.iec62056.emulator import MeterBus, SimulatedMeter
from drivers.iec62056.scan import NO_METER, scan_iec62056_bus

STX, ETX, ACK = b"\x02", b"\x03", b"\x06"

# --- the protocol, against bytes written out by hand


def xor(data: bytes) -> int:
    return functools.reduce(operator.xor, data, 0)


def test_the_bcc_is_the_xor_after_stx_through_etx() -> None:
    # The break message of the standard, SOH B0 ETX BCC, is "\x01B0\x03q": 'B'^'0'^ETX = 'q'.
    assert p.bcc(b"B0\x03") == ord("q") == 0x71
    assert p.BREAK == b"\x01B0\x03q"
    body = b"1.8.0(00012.345*kWh)\r\n!\r\n\x03"
    assert p.bcc(body) == xor(body)
    block = STX + body + bytes([xor(body)])
    assert p.frame_block(["1.8.0(00012.345*kWh)"]) == block
    assert p.unframe_block(block) == "1.8.0(00012.345*kWh)\r\n!\r\n"
    with pytest.raises(p.BccError, match="does not match"):
        p.unframe_block(block[:-1] + bytes([block[-1] ^ 1]))
    with pytest.raises(p.ProtocolError, match="not a data message"):
        p.unframe_block(body)  # no STX


def test_sign_on_and_option_select_are_the_standard_s_bytes() -> None:
    assert p.sign_on() == b"/?!\r\n"
    assert p.sign_on("12345678") == b"/?12345678!\r\n"
    assert p.option_select("5") == b"\x06050\r\n"  # ACK, normal, 9600 baud, data readout
    assert p.option_select(p.baud_character(300)) == b"\x06000\r\n"
    assert [p.baud_character(r) for r in (600, 1200, 2400, 4800, 19200)] == list("12346")


def test_identification_with_an_enhanced_character_keeps_it_in_the_ident() -> None:
    ident = p.Identification.parse("/LGZ5\\2ZMD3104407.B32")
    assert (ident.manufacturer, ident.baud, ident.mode) == ("LGZ", "5", "C")
    assert ident.ident == "\\2ZMD3104407.B32"
    assert ident.enhanced == ("2",)
    assert ident.model == "ZMD3104407.B32"
    assert ident.max_baudrate == 9600
    assert str(ident) == "/LGZ5\\2ZMD3104407.B32"


def test_identification_modes_and_speeds() -> None:
    itron = p.Identification.parse("/ISk5MT174-0001")  # lower-case third letter: 20 ms meter
    assert (itron.manufacturer, itron.max_baudrate, itron.enhanced) == ("ISk", 9600, ())
    assert p.Identification.parse("/ABC0X").max_baudrate == 300
    assert p.Identification.parse("/ABC6X").max_baudrate == 19200
    mode_b = p.Identification.parse("/XYZEmeter")
    assert (mode_b.mode, mode_b.max_baudrate) == ("B", 9600)
    mode_a = p.Identification.parse("/XYZ?meter")
    assert (mode_a.mode, mode_a.max_baudrate) == ("A", None)


@pytest.mark.parametrize(
    "line", ["//LLGGZZ55", "/LG", "LGZ5meter", "/12A5meter", "/LGZ5met/er", "/?!"]
)
def test_what_is_not_an_identification_is_refused(line: str) -> None:
    with pytest.raises(p.ProtocolError, match="not an identification"):
        p.Identification.parse(line)


def test_data_lines_with_and_without_prefix_and_several_values() -> None:
    text = (
        "0.0.0(12345678)\r\n"
        "1-0:1.8.0*255(00012.345*kWh)\r\n"
        "1.8.1(00010.000*kWh)1.8.2(00002.345*kWh)\r\n"  # two data sets on one line
        "1.6.0(0.512*kW)(24-01-31 12:15)\r\n"  # maximum demand and its time
        "1-0:32.7.0(229.8*V)\r\n"
        "F.F(00000000)\r\n"
        "P.01(2401311200)(0.1*kW)\r\n"
        "(0.2*kW)\r\n"  # a profile line continues the set before it
        "garbage without parentheses\r\n"
        "!\r\n"
        "9.9.9(after the end)\r\n"
    )
    sets, bad = p.data_sets(text)
    assert [(s.address, s.values) for s in sets] == [
        ("0.0.0", (("12345678", ""),)),
        ("1-0:1.8.0*255", (("00012.345", "kWh"),)),
        ("1.8.1", (("00010.000", "kWh"),)),
        ("1.8.2", (("00002.345", "kWh"),)),
        ("1.6.0", (("0.512", "kW"), ("24-01-31 12:15", ""))),
        ("1-0:32.7.0", (("229.8", "V"),)),
        ("F.F", (("00000000", ""),)),
        ("P.01", (("2401311200", ""), ("0.1", "kW"), ("0.2", "kW"))),
    ]
    assert bad == ["garbage without parentheses"]


def obis(text: str) -> p.Obis:
    parsed = p.Obis.parse(text)
    assert parsed is not None, text
    return parsed


def test_obis_codes_match_by_cde_or_exactly_when_given_whole() -> None:
    short, whole = obis("1.8.0"), obis("1-0:1.8.0")
    for line in ("1.8.0", "1-0:1.8.0", "1-0:1.8.0*255", "0-1:1.8.0"):
        assert short.matches(obis(line)), line
    for line in ("1.8.1", "1.8.0*01", "1.8.0&01", "11.8.0"):
        assert not short.matches(obis(line)), line
    assert whole.matches(obis("1-0:1.8.0*255"))
    assert not whole.matches(obis("1.8.0"))
    assert not whole.matches(obis("0-0:1.8.0"))
    assert obis("1.8.0&01").matches(obis("1-0:1.8.0&01"))
    assert not obis("1.8.0&01").matches(obis("1.8.0*01"))
    assert obis("F.F").matches(obis("F.F"))
    assert p.Obis.parse("1.8.0 kWh") is None


# --- the driver on a wire

READOUT = [
    "0.0.0(12345678)",
    "1-0:1.8.0(00012.345*kWh)",
    "1-0:2.8.0(00001.000*kWh)",
    "1.6.0(0.512*kW)(24-01-31 12:15)",
    "1-0:32.7.0(229.8*V)",
    "F.F(00000000)",
]


def point(name: str, code: str, **keys: Any) -> PointConfig:
    options = {"obis": code}
    options.update({k: keys.pop(k) for k in ("index", "type") if k in keys})
    return PointConfig(name, options=options, **keys)


def meter_device(
    name: str, points: Sequence[PointConfig], address: str | None = None, **options: Any
) -> DeviceConfig:
    keys: dict[str, Any] = {"reaction_time": 0.01, **options}
    if address is not None:
        keys["address"] = address
    return DeviceConfig(name, "optical", "iec62056", 1.0, points=tuple(points), options=keys)


ENERGY = point("energy", "1.8.0", unit="kWh")


@asynccontextmanager
async def wired(
    meters: Sequence[SimulatedMeter], timeout: float = 0.3
) -> AsyncIterator[tuple[Iec62056Driver, MeterBus]]:
    """A driver on the agent's end of the emulator's pseudo-terminal, at 300 8N1."""
    async with MeterBus(meters) as far:
        bus = BusConfig("optical", "serial", serial_port=far.port, baudrate=300, timeout=timeout)
        async with Iec62056Driver(bus) as driver:
            yield driver, far


def heard(meter: SimulatedMeter) -> list[bytes]:
    return [message for _, message in meter.heard]


def test_a_readout_switches_speed_and_maps_the_lines_to_points() -> None:
    meter = SimulatedMeter(lines=READOUT)
    device = meter_device(
        "house",
        [
            ENERGY,
            point("export", "1-0:2.8.0", unit="kWh"),
            point("demand", "1.6.0", unit="kW"),
            point("demand_at", "1.6.0", index=2, type="string"),
            point("voltage", "32.7.0", unit="V"),
            point("serial", "0.0.0", type="string"),
            point("error", "F.F"),
            point("wh", "1.8.0", scale=1000.0),
        ],
    )

    async def scenario() -> None:
        async with wired([meter]) as (driver, far):
            poll = await driver.read(device)
            assert far.agent_baud() == 300  # back at the sign-on speed for the next one
            assert (await driver.read(device)).values == poll.values
        assert poll.errors == ()
        assert poll.values == {
            "energy": 12.345,
            "export": 1.0,
            "demand": 0.512,
            "demand_at": "24-01-31 12:15",
            "voltage": 229.8,
            "serial": "12345678",
            "error": 0,
            "wh": 12345.0,
        }
        assert heard(meter) == [b"/?!\r\n", ACK + b"050\r\n"] * 2
        assert meter.switched_to == [9600, 9600]  # the agent's port, as the block went out
        assert far.noise == []
        assert driver.counters["house"]["readouts"] == 2

    run(scenario())


def test_a_readout_larger_than_a_line_buffer_arrives_whole() -> None:
    lines = [f"C.{n // 100}.{n % 100}({n:08d}*Wh)" for n in range(400)]  # about 9 kB at once
    meter = SimulatedMeter(lines=[*lines, "1.8.0(7.5*kWh)"])

    async def scenario() -> None:
        async with wired([meter]) as (driver, _):
            poll = await driver.read(meter_device("big", [ENERGY, point("last", "C.3.99")]))
        assert poll.values == {"energy": 7.5, "last": 399}

    run(scenario())


@pytest.mark.parametrize(
    ("offered", "allowed", "select", "rate"),
    [("5", 2400, b"030", 2400), ("3", 9600, b"030", 2400), ("0", 9600, b"000", 300)],
)
def test_the_speed_is_the_lower_of_the_meter_s_and_the_device_s(
    offered: str, allowed: int, select: bytes, rate: int
) -> None:
    meter = SimulatedMeter(baud=offered, lines=READOUT)
    device = meter_device("house", [ENERGY], max_baudrate=allowed)

    async def scenario() -> None:
        async with wired([meter]) as (driver, _):
            assert (await driver.read(device)).values == {"energy": 12.345}

    run(scenario())
    assert heard(meter)[1] == ACK + select + b"\r\n"
    assert meter.switched_to == [rate]


def test_a_mode_b_meter_switches_without_an_option_select() -> None:
    meter = SimulatedMeter(baud="E", lines=READOUT)

    async def scenario() -> None:
        async with wired([meter]) as (driver, _):
            assert (await driver.read(meter_device("b", [ENERGY]))).values == {"energy": 12.345}

    run(scenario())
    assert heard(meter) == [b"/?!\r\n"]
    assert meter.switched_to == [9600]


def test_meters_sharing_a_bus_are_signed_on_by_address() -> None:
    first = SimulatedMeter(address="00012345", ident="FIRST", lines=["1.8.0(1.5*kWh)"])
    second = SimulatedMeter(address="67890", ident="SECOND", lines=["1.8.0(2.5*kWh)"])

    async def scenario() -> None:
        async with wired([first, second]) as (driver, _):
            one = await driver.read(meter_device("one", [ENERGY], "00012345"))
            two = await driver.read(meter_device("two", [ENERGY], "67890"))
            assert (one.values, two.values) == ({"energy": 1.5}, {"energy": 2.5})
            assert str(driver.identities["two"]) == "/EAG5SECOND"

    run(scenario())
    assert heard(first) == [b"/?00012345!\r\n", ACK + b"050\r\n"]
    assert heard(second) == [b"/?67890!\r\n", ACK + b"050\r\n"]


# --- faults: one line naming the device and the thing; the next poll works


def test_a_bad_bcc_fails_the_readout_sends_the_break_and_the_next_one_reads() -> None:
    meter = SimulatedMeter(lines=READOUT, bad_bcc=1)
    device = meter_device("house", [ENERGY])

    async def scenario() -> None:
        async with wired([meter]) as (driver, far):
            with pytest.raises(DeviceError) as failed:
                await driver.read(device)
            assert far.agent_baud() == 300
            assert (await driver.read(device)).values == {"energy": 12.345}
            assert driver.counters["house"]["bcc"] == 1
            assert driver.counters["house"]["breaks"] == 1
            # the break went out after the meter had gone idle: it ended no session (heard as
            # noise, or as a break, by when the emulator looks at the port's speed); the next
            # sign-on came at 300 and was answered
            assert meter.breaks == 0
            assert set(far.noise) <= {p.BREAK}
        assert str(failed.value).startswith("device house: BCC 0x")
        assert "does not match" in str(failed.value)

    run(scenario())


def test_a_silent_meter_fails_within_its_timeout() -> None:
    meter = SimulatedMeter(lines=READOUT, alive=False)
    device = meter_device("house", [ENERGY], line_timeout=0.1)

    async def scenario() -> float:
        async with wired([meter]) as (driver, _):
            started = time.monotonic()
            with pytest.raises(DeviceError) as failed:
                await driver.read(device)
            took = time.monotonic() - started
            assert driver.counters["house"]["no_answer"] == 1
            assert driver.counters["house"]["breaks"] == 0  # no session to end
        assert str(failed.value).startswith(
            "device house: no identification within 0.1s of the sign-on /?! on /dev/pts/"
        )
        return took

    assert run(scenario()) < 0.5


def test_two_meters_answering_one_sign_on_collide_into_a_refused_identification() -> None:
    deaf = SimulatedMeter(address="2", ident="DEAF", answers_any_address=True, lines=READOUT)
    mine = SimulatedMeter(address="1", ident="MINE", lines=READOUT)

    async def scenario() -> None:
        async with wired([deaf, mine]) as (driver, _):
            with pytest.raises(DeviceError, match=r"^device house: .* is not an identification"):
                await driver.read(meter_device("house", [ENERGY], "1"))
            assert driver.counters["house"]["garbled"] == 1
            assert driver.counters["house"]["breaks"] == 1

    run(scenario())


def test_a_second_identification_after_the_first_fails_the_readout() -> None:
    deaf = SimulatedMeter(ident="DEAF", answers_any_address=True, reaction=0.05, lines=READOUT)
    mine = SimulatedMeter(address="1", ident="MINE", lines=READOUT)
    device = meter_device("house", [ENERGY], "1", reaction_time=0.15)

    async def scenario() -> None:
        async with wired([deaf, mine]) as (driver, _):
            with pytest.raises(DeviceError, match=r"^device house: a second identification came"):
                await driver.read(device)
            assert driver.counters["house"]["garbled"] == 1

    run(scenario())


def test_a_meter_answering_another_s_address_is_refused_by_its_identification() -> None:
    deaf = SimulatedMeter(address="2", ident="DEAF", answers_any_address=True, lines=READOUT)
    device = meter_device("house", [ENERGY], "1", identification="MINE")

    async def scenario() -> None:
        async with wired([deaf]) as (driver, _):
            with pytest.raises(DeviceError) as failed:
                await driver.read(device)
            assert driver.counters["house"]["wrong_meter"] == 1
            await until(lambda: deaf.breaks, 2, "the meter hears the break")
        assert str(failed.value) == (
            'device house: the meter that answered is /EAG5DEAF, not identification = "MINE": '
            "another meter answered (check the address; if the meter was replaced, set "
            "identification to the new one's)"
        )

    run(scenario())
    # refused at its identification, and its session ended by the break: no readout
    assert heard(deaf) == [b"/?1!\r\n", p.BREAK]
    assert deaf.breaks == 1


def test_an_identification_that_changes_between_polls_is_refused() -> None:
    meter = SimulatedMeter(lines=READOUT)
    device = meter_device("house", [ENERGY])

    async def scenario() -> None:
        async with wired([meter]) as (driver, _):
            await driver.read(device)
            meter.ident = "OTHER"  # the head moved to the neighbour's meter
            with pytest.raises(DeviceError, match="is /EAG5OTHER, not /EAG5EDGE62056 as at its"):
                await driver.read(device)

    run(scenario())


def test_an_identification_configured_with_or_without_its_enhanced_character_matches() -> None:
    meter = SimulatedMeter(ident="\\2ZMD3104407.B32", lines=READOUT)

    async def scenario() -> None:
        async with wired([meter]) as (driver, _):
            for ident in ("\\2ZMD3104407.B32", "ZMD3104407.B32", "/EAG5\\2ZMD3104407.B32"):
                device = meter_device("house", [ENERGY], identification=ident)
                assert (await driver.read(device)).values == {"energy": 12.345}

    run(scenario())


def test_a_garbled_data_block_fails_the_readout() -> None:
    meter = SimulatedMeter(lines=READOUT, garble=1)
    device = meter_device("house", [ENERGY])

    async def scenario() -> None:
        async with wired([meter]) as (driver, _):
            with pytest.raises(DeviceError, match=r"^device house: the data block holds no data"):
                await driver.read(device)
            assert driver.counters["house"]["garbled"] == 1
            assert (await driver.read(device)).values == {"energy": 12.345}

    run(scenario())


def test_a_truncated_data_block_fails_within_the_line_timeout() -> None:
    meter = SimulatedMeter(lines=READOUT, truncate=1)
    device = meter_device("house", [ENERGY], line_timeout=0.1)

    async def scenario() -> None:
        async with wired([meter]) as (driver, far):
            started = time.monotonic()
            with pytest.raises(DeviceError) as failed:
                await driver.read(device)
            assert time.monotonic() - started < 0.6
            assert driver.counters["house"]["truncated"] == 1
            assert driver.counters["house"]["breaks"] == 1
            assert far.agent_baud() == 300
            assert (await driver.read(device)).values == {"energy": 12.345}
        assert str(failed.value).startswith("device house: data block truncated: ")
        assert "no ETX" in str(failed.value)

    run(scenario())


def test_a_readout_that_never_ends_is_cut_at_the_readout_timeout() -> None:
    meter = SimulatedMeter(lines=READOUT, truncate=1)
    device = meter_device("house", [ENERGY], line_timeout=5, readout_timeout=0.1)

    async def scenario() -> None:
        async with wired([meter]) as (driver, _):
            with pytest.raises(DeviceError, match=r"longer than 0\.1s in all \(readout_timeout\)"):
                await driver.read(device)

    run(scenario(), timeout=3)


def test_points_absent_or_wrong_are_errors_of_their_own_and_the_rest_arrive() -> None:
    meter = SimulatedMeter(lines=READOUT)
    device = meter_device(
        "house",
        [
            ENERGY,
            point("reactive", "3.8.0"),
            point("in_wh", "1.8.0", unit="Wh"),
            point("third", "1.6.0", index=3),
            point("date", "1.6.0", index=2),
            point("whole", "0-0:1.8.0"),
        ],
    )

    async def scenario() -> None:
        async with wired([meter]) as (driver, _):
            poll = await driver.read(device)
        assert poll.values == {"energy": 12.345}
        assert poll.errors == (
            "device house: reactive: OBIS 3.8.0 is not in the readout",
            "device house: in_wh: 1-0:1.8.0 is in kWh, the point's unit is Wh",
            "device house: third: 1.6.0 has 2 value(s), none at index 3",
            'device house: date: 1.6.0 reads "24-01-31 12:15", not a number (type = "string" '
            "reads it as text)",
            "device house: whole: OBIS 0-0:1.8.0 is not in the readout",
        )

    run(scenario())


def test_nothing_read_is_a_device_error() -> None:
    meter = SimulatedMeter(lines=READOUT)
    device = meter_device("house", [point("reactive", "3.8.0"), point("q", "4.8.0")])

    async def scenario() -> None:
        async with wired([meter]) as (driver, _):
            with pytest.raises(DeviceError) as failed:
                await driver.read(device)
        assert str(failed.value) == (
            "device house: reactive: OBIS 3.8.0 is not in the readout; "
            "device house: q: OBIS 4.8.0 is not in the readout"
        )

    run(scenario())


def test_a_meter_polled_by_the_scheduler_after_a_fault() -> None:
    """Under the scheduler: a readout that fails (bad BCC) is followed by ones that read."""
    meter = SimulatedMeter(lines=READOUT, bad_bcc=1)
    device = meter_device("house", [ENERGY])
    got: list[Any] = []

    async def scenario() -> None:
        async with MeterBus([meter]) as far:
            bus = BusConfig("optical", "serial", serial_port=far.port, baudrate=300, timeout=0.3)
            done = asyncio.Event()

            def sink(name: str, ts: int, mono: float, values: Any) -> None:
                got.append(values["energy"])
                if len(got) >= 2:
                    done.set()

            poller = BusPoller(bus, [device], Iec62056Driver, sink)
            task = asyncio.create_task(poller.run())
            try:
                await asyncio.wait_for(done.wait(), 10)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    run(scenario(), timeout=15)
    assert got[:2] == [12.345, 12.345]
    assert meter.breaks == 0  # the block had ended: the meter was idle again (break unheard)
    assert len(meter.switched_to) >= 3


# --- configuration

CONFIG = """
[agent]
id = "gw"
data_dir = "data"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[bus]]
name = "optical"
type = "serial"
port = "/dev/ttyUSB0"
{bus}
[[device]]
name = "house"
bus = "optical"
driver = "iec62056"
interval = "1m"
{device}
  [[device.point]]
  name = "energy"
  {point}
"""
GOOD_BUS = 'baudrate = 300\nbytesize = 7\nparity = "E"\ntimeout = "2s"'


def load(
    tmp_path: Path, bus: str = GOOD_BUS, device: str = "", point: str = 'obis = "1.8.0"'
) -> Config:
    path = tmp_path / "site.toml"
    path.write_text(CONFIG.format(bus=bus, device=device, point=point))
    return load_config(path, environ={})[0]


def problems_of(tmp_path: Path, **parts: str) -> list[str]:
    with pytest.raises(ConfigError) as failed:
        load(tmp_path, **parts)
    return [f"{p.path}: {p.message}" for p in failed.value.problems if not p.warning]


def test_a_meter_loads_with_its_keys(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        device='address = "00012345"\nmax_baudrate = 4800\nbreak_on_failure = false',
        point='obis = "1-0:1.6.0"\n  index = 2\n  type = "string"',
    )
    house = config.device("house")
    assert house.options == {"address": "00012345", "max_baudrate": 4800, "break_on_failure": False}
    assert house.points[0].options == {"obis": "1-0:1.6.0", "index": 2, "type": "string"}


def test_bad_keys_are_problems_at_their_keys_with_the_fix(tmp_path: Path) -> None:
    assert problems_of(tmp_path, point='obis = "1.8.0 kWh"') == [
        'device.house.point.energy.obis: "1.8.0 kWh" is not an OBIS identifier: write C.D.E as '
        'the meter\'s readout does ("1.8.0", "0.9.1", "F.F"), or with medium and channel '
        '("1-0:1.8.0")'
    ]
    assert problems_of(tmp_path, point="") == [
        'device.house.point.energy.obis: is required: the OBIS code of its line, "1.8.0"'
    ]
    assert problems_of(tmp_path, device="max_baudrate = 115200") == [
        "device.house.max_baudrate: 115200 is not a mode C speed: one of 300, 600, 1200, 2400, "
        "4800, 9600, 19200"
    ]
    assert problems_of(tmp_path, device='address = "12/34"') == [
        'device.house.address: "12/34" is not a device address: 1 to 32 digits, letters or '
        'spaces (write it as a string, "00012345", to keep leading zeros)'
    ]
    assert problems_of(tmp_path, bus="baudrate = 115200") == [
        "bus.optical.baudrate: is the sign-on speed: IEC 62056-21 mode C signs on at 300 (set "
        'baudrate = 300, bytesize = 7, parity = "E")'
    ]
    assert problems_of(tmp_path, point='obis = "F.F"\n  type = "string"\n  scale = 2.0') == [
        "device.house.point.energy.type: scale and offset apply to numbers, not to string"
    ]
    assert problems_of(tmp_path, point='obis = "1.8.0"\n  indx = 2') == [
        'device.house.point.energy.indx: unknown key (did you mean "index"?)'
    ]


@pytest.mark.parametrize(
    ("written", "line"),
    [
        ("", (300, 7, "E", 1)),  # mode C's sign-on line, where the bus says nothing
        ("baudrate = 9600", (9600, 7, "E", 1)),  # a meter set to sign on faster
        ('bytesize = 8\nparity = "N"', (300, 8, "N", 1)),  # an adapter that needs 8N1
    ],
)
def test_a_bus_of_meters_speaks_mode_c_s_line_unless_its_table_says(
    tmp_path: Path, written: str, line: tuple[int, int, str, int]
) -> None:
    bus = load(tmp_path, bus=written).bus("optical")
    assert (bus.baudrate, bus.bytesize, bus.parity, bus.stopbits) == line


def test_meters_sharing_a_bus_need_distinct_addresses() -> None:
    bus = BusConfig("optical", "serial", serial_port="/dev/ttyUSB0", baudrate=300)
    devices = [
        meter_device("a", [ENERGY], "0012"),
        meter_device("b", [ENERGY], "12"),
        meter_device("c", [ENERGY]),
    ]
    assert Iec62056Driver.validate(bus, devices) == [
        (
            "device.b.address",
            "12 is also device a's: two meters on one bus need different addresses",
        ),
        (
            "device.c.address",
            "is required when meters share a bus: without one every meter answers",
        ),
    ]


def test_check_plan_shows_the_readout(tmp_path: Path) -> None:
    config = load(tmp_path, device='address = "42"')
    assert plan_lines(config) == [
        "device house (bus optical, every 60s): 1 request(s) for 1 point(s)",
        "  /?42! then the data readout up to 9600 baud, for 1 point(s): 1.8.0",
    ]


# --- scanning


def scan_output(
    meters: Sequence[SimulatedMeter],
    devices: Sequence[DeviceConfig] = (),
    targets: str | None = None,
) -> tuple[list[str], str]:
    out = io.StringIO()

    async def scenario() -> list[str]:
        async with MeterBus(meters) as far:
            bus = BusConfig("optical", "serial", serial_port=far.port, baudrate=300, timeout=0.2)
            return await scan_iec62056_bus(bus, devices, targets, out)

    found = run(scenario(), timeout=10)
    return found, out.getvalue()


def test_a_scan_reads_the_meter_and_proposes_a_device_that_loads(tmp_path: Path) -> None:
    found, printed = scan_output([SimulatedMeter(lines=READOUT)])
    assert found == ["/?!"]
    lines = printed.splitlines()
    assert lines[1] == (
        "/?!: /EAG5EDGE62056 (manufacturer EAG, offers 9600 baud): 6 data set(s), read at 9600 baud"
    )
    proposal = printed[printed.index("[[device]]") :]
    assert proposal.count("[[device.point]]") == 6  # a line per numeric first value
    assert 'obis = "1-0:1.8.0"\n  unit = "kWh"' in proposal
    head = CONFIG[: CONFIG.index("[[device]]")].format(bus=GOOD_BUS)
    path = tmp_path / "scanned.toml"
    path.write_text(head + proposal)
    config = load_config(path, environ={})[0]
    assert [p.options["obis"] for p in config.device("meter").points] == [
        "0.0.0",
        "1-0:1.8.0",
        "1-0:2.8.0",
        "1.6.0",
        "1-0:32.7.0",
        "F.F",
    ]
    # the serial number and the error register are digits, not quantities: kept as text
    types = {
        p.options["obis"]: p.options.get("type", "number") for p in config.device("meter").points
    }
    assert (types["0.0.0"], types["F.F"], types["1-0:1.8.0"]) == ("string", "string", "number")


def test_a_scan_signs_on_with_the_addresses_asked() -> None:
    meters = [
        SimulatedMeter(address="11", ident="ELEVEN", lines=["1.8.0(1*kWh)"]),
        SimulatedMeter(address="22", ident="TWENTYTWO", lines=["1.8.0(2*kWh)"]),
    ]
    found, printed = scan_output(meters, targets="11,22,33")
    assert found == ["/?11!", "/?22!"]
    lines = printed.splitlines()
    assert lines[0].endswith("with /?!, /?11!, /?22!, /?33!")
    assert lines[1].startswith("/?!: ")  # both answered at once
    assert "is not an identification" in lines[1]
    assert lines[4].startswith("/?33!: no identification within 2.57s")  # 300 baud, 1.5 s
    assert 'name = "meter-22"\nbus = "optical"\ndriver = "iec62056"\naddress = "22"' in printed


def test_a_scan_asks_the_configured_addresses_and_proposes_a_meter_once() -> None:
    meter = SimulatedMeter(address="7", lines=["1.8.0(1*kWh)"])
    found, printed = scan_output([meter], [meter_device("m", [ENERGY], "7")])
    assert found == ["/?!", "/?7!"]
    assert printed.count("[[device]]") == 1
    assert 'address = "7"' in printed


def test_a_scan_of_a_silent_bus_says_what_to_check() -> None:
    found, printed = scan_output([SimulatedMeter(alive=False)])
    assert found == []
    assert printed.splitlines()[-1] == NO_METER


# --- the command line


def test_check_read_and_scan_from_the_command_line(tmp_path: Path) -> None:
    """What a technician types: the driver found by its entry point, the meter read and found."""
    meter = SimulatedMeter(lines=READOUT)

    async def scenario() -> list[tuple[int, str, str]]:
        async with MeterBus([meter]) as far:
            path = tmp_path / "site.toml"
            path.write_text(
                CONFIG.format(
                    bus='baudrate = 300\nbytesize = 8\nparity = "N"\ntimeout = "500ms"',
                    device='reaction_time = "20ms"',
                    point='obis = "1.8.0"\n  unit = "kWh"',
                ).replace("/dev/ttyUSB0", far.port)
            )
            return [
                await cli_async(*args, "-c", str(path), timeout=30)
                for args in (("check",), ("read", "house"), ("scan", "optical"))
            ]

    (check, _, check_err), (code, out, err), (scan_code, scanned, scan_err) = run(
        scenario(), timeout=60
    )
    assert check == 0, check_err
    assert code == 0, err
    assert out.splitlines()[-1].split() == ["energy", "12.345", "kWh"]
    assert scan_code == 0, scan_err
    assert "/?!: /EAG5EDGE62056 (manufacturer EAG, offers 9600 baud)" in scanned
    assert 'obis = "1-0:1.8.0"' in scanned
    assert meter.switched_to == [9600, 9600]


def test_a_read_of_a_silent_meter_from_the_command_line_is_one_line(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, str, str]:
        async with MeterBus([SimulatedMeter(alive=False)]) as far:
            path = tmp_path / "site.toml"
            path.write_text(
                CONFIG.format(
                    bus='baudrate = 300\nbytesize = 8\nparity = "N"',
                    device='line_timeout = "200ms"',
                    point='obis = "1.8.0"',
                ).replace("/dev/ttyUSB0", far.port)
            )
            return await cli_async("read", "house", "-c", str(path), timeout=30)

    code, _, err = run(scenario(), timeout=40)
    assert code == 1
    assert "Traceback" not in err
    assert "device house: no identification within 0.2s of the sign-on /?!" in err


# --- simulation


def test_simulate_serves_the_configured_meters_on_a_pty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edge-agent simulate`: each meter answers its address with a line per OBIS code."""
    path = tmp_path / "site.toml"
    path.write_text(
        CONFIG.format(
            bus='baudrate = 300\nbytesize = 8\nparity = "N"',
            device='address = "17"\nreaction_time = "10ms"',
            point='obis = "1-0:1.8.0"\n  unit = "kWh"\n  scale = 0.001',
        )
        + '  [[device.point]]\n  name = "serial"\n  obis = "0.0.0"\n  type = "string"\n'
    )
    config, _ = load_config(path, {})

    async def body() -> Poll:
        stop, ready = asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(serve(config, None, stop, ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            line = next(x for x in capsys.readouterr().out.splitlines() if "bus optical:" in x)
            bus = BusConfig(
                "optical", "serial", serial_port=line.rpartition(" at ")[2], baudrate=300
            )
            async with Iec62056Driver(bus) as driver:
                return await driver.read(config.device("house"))
        finally:
            stop.set()
            await cancel_and_wait(server)

    poll = run(body(), timeout=20)
    # each point answers its position among the device's points, scale undone
    assert (dict(poll.values), poll.errors) == ({"energy": 1.0, "serial": "2"}, ())


def test_a_meter_taking_the_reaction_time_the_standard_allows_is_read_by_default() -> None:
    """Up to 1.5 s before it answers, and then its identification's time on a 300 baud line:
    the default waits cover both, whatever the bus's shorter timeout."""
    meter = SimulatedMeter(lines=READOUT, reaction=1.4)
    device = meter_device("house", [ENERGY])

    async def scenario() -> Poll:
        async with wired([meter], timeout=0.3) as (driver, _):
            return await driver.read(device)

    assert run(scenario(), timeout=15).values == {"energy": 12.345}
