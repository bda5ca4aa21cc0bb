"""ModbusDriver.write against real pymodbus slaves: over TCP, RTU on a pseudo-terminal line and
RTU over TCP. What went out is checked on the wire (the simulator's frame log), what was set in
the slave's register image, and what the driver's own ``read`` then gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import struct
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from pymodbus.constants import ExcCodes

from agent.api import BusConfig, DeviceConfig, PointConfig
from agent.config import load_config
from agent.errors import BusError, ConfigError, DeviceError
from agent.model import Value
from agent.testkit import run
from agent.testkit.serial import SerialProxy
from drivers.modbus import ModbusDriver
from drivers.modbus.codec import decode, encode
from drivers.modbus.frames import rtu_crc_ok
from drivers.modbus.schema import ModbusPoint, modbus_bus, write_multiple
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave, _SlaveContext
from drivers.modbus.writes import encode_write, plan_write

TIMEOUT = 0.3  # the bus timeout: short, since a few tests wait for it once

RELAY = ModbusPoint("relay", table="coil", address=0, type="bool", writable=True)
ALARM = ModbusPoint("alarm", table="coil", address=1, type="bool")  # not writable
SPEED = ModbusPoint(
    "speed", table="holding", address=0, type="uint16", writable=True, min=0, max=3000
)
SETPOINT = ModbusPoint(
    "setpoint", table="holding", address=2, type="float32", order="CDAB", scale=0.1, writable=True
)
TRIM = ModbusPoint(
    "trim", table="holding", address=4, type="int16", scale=0.1, writable=True, min=-50, max=21.37
)
LABEL = ModbusPoint("label", table="holding", address=10, type="string", length=8, writable=True)
FLAGS = ModbusPoint("flags", table="holding", address=20, type="uint16")
RUN = ModbusPoint("run", table="holding", address=20, type="bool", bit=3, writable=True)
RAW = ModbusPoint(
    "raw", table="holding", address=21, type="uint16", writable=True, not_available=(0xFFFF,)
)
LEVEL = ModbusPoint(
    "level", table="input", address=0, type="uint16", writable=True
)  # the loader refuses this
DOOR = ModbusPoint("door", table="discrete", address=0, type="bool", writable=True)  # and this
POINTS = (RELAY, ALARM, SPEED, SETPOINT, TRIM, LABEL, FLAGS, RUN, RAW, LEVEL, DOOR)
#: A point the device config has but the slave does not: writing it gets exception 2.
GHOST = ModbusPoint("ghost", table="holding", address=100, type="uint16", writable=True)


def device(unit: int = 1, points: tuple[PointConfig, ...] = (*POINTS, GHOST)) -> DeviceConfig:
    return DeviceConfig("pump", "field", "modbus", 1.0, unit=unit, points=points)


def slave(unit: int = 1) -> SimulatedSlave:
    simulated = SimulatedSlave(unit, POINTS)
    simulated.set_registers("holding", 20, [0x0081])  # bits 0 and 7 of flags: not ours
    return simulated


def tcp_bus(port: int, **options: object) -> BusConfig:
    return modbus_bus(
        "field", "modbus-tcp", host="127.0.0.1", port=port, timeout=TIMEOUT, **options
    )


def functions(sim: ModbusSimulator) -> list[int]:
    """The function code of every request the simulator received, in order."""
    at = 1 if sim.rtu else 7  # after the unit id, or after the 7-byte MBAP header
    return [frame.data[at] for frame in sim.frames if not frame.sending]


def registers(simulated: SimulatedSlave, point: ModbusPoint) -> list[int]:
    return [int(r) for r in simulated.registers(point.table, point.address, point.count)]


# --- what goes out: function codes and raw registers ---------------------------------------------


def test_a_coil_is_switched_with_fc5_and_reads_back() -> None:
    async def body() -> None:
        simulated = slave()
        coils = device(points=(RELAY, ALARM))
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(tcp_bus(sim.port)) as driver:
            await driver.write(coils, RELAY, True)
            assert simulated.value("relay") is True
            assert (await driver.read(coils)).values == {"relay": True, "alarm": False}
            await driver.write(coils, RELAY, 0)  # 0 and 1 are taken for false and true
            assert simulated.value("relay") is False
            assert functions(sim) == [5, 1, 5]  # the write, the poll, the write
            # FC 5 carries ff00 for on, 0000 for off
            writes = [f.data for f in sim.frames if not f.sending and f.data[7] == 5]
            assert [w[10:12] for w in writes] == [b"\xff\x00", b"\x00\x00"]
        assert driver.counters["pump"] == {"ok": 3}  # writes are counted like reads

    run(body(), timeout=10)


def test_a_single_register_goes_with_fc6() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(tcp_bus(sim.port)) as driver:
            await driver.write(device(), SPEED, 1500)
            assert registers(simulated, SPEED) == [1500]
            assert functions(sim) == [6]
            # the trace ring has the write and its echo, for error reports
            assert driver.frames("pump")[-2].endswith("01 06 00 00 05 dc")
            assert driver.frames("pump")[-1].endswith("01 06 00 00 05 dc")

    run(body(), timeout=10)


def test_a_scaled_float_setpoint_is_written_as_its_raw_registers() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(tcp_bus(sim.port)) as driver:
            await driver.write(device(), SETPOINT, 21.37)
            # raw = 21.37 / 0.1 = 213.7 as a float32, words swapped (CDAB)
            high, low = struct.unpack(">HH", struct.pack(">f", 213.7))
            assert registers(simulated, SETPOINT) == [low, high]
            assert high == 0x4355  # not the unscaled 21.37 (0x41AA...)
            assert functions(sim) == [16]
            assert (await driver.read(device())).values["setpoint"] == 21.37
            assert simulated.value("setpoint") == 21.37

    run(body(), timeout=10)


def test_a_negative_int16_is_twos_complement_and_rounds_half_away_from_zero() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(tcp_bus(sim.port)) as driver:
            await driver.write(device(), TRIM, -12.5)
            assert registers(simulated, TRIM) == [0x10000 - 125]
            assert (await driver.read(device())).values["trim"] == -12.5
            # -12.35 / 0.1 is -123.49999999999999 in binary floats: -124 as a person means it
            await driver.write(device(), TRIM, -12.35)
            assert registers(simulated, TRIM) == [0x10000 - 124]
            assert simulated.value("trim") == -12.4
            assert functions(sim)[-1] == 6

    run(body(), timeout=10)


def test_a_string_fills_its_registers_with_nul_padding() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(tcp_bus(sim.port)) as driver:
            await driver.write(device(), LABEL, "PUMP-7")
            assert registers(simulated, LABEL) == [0x5055, 0x4D50, 0x2D37, 0x0000]
            await driver.write(device(), LABEL, "P2")  # a shorter one leaves nothing behind
            assert registers(simulated, LABEL) == [0x5032, 0, 0, 0]
            assert (await driver.read(device())).values["label"] == "P2"
            assert functions(sim)[:2] == [16, 16]

    run(body(), timeout=10)


def test_a_bit_is_written_read_modify_write() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(tcp_bus(sim.port)) as driver:
            await driver.write(device(), RUN, True)
            assert registers(simulated, FLAGS) == [0x0089]  # bits 0 and 7 kept
            simulated.set_registers("holding", 20, [0xFFFF])  # the device changed the others
            await driver.write(device(), RUN, False)
            assert registers(simulated, FLAGS) == [0xFFF7]
            assert functions(sim) == [3, 6, 3, 6]
            assert driver.counters["pump"] == {"ok": 4}

    run(body(), timeout=10)


def test_write_multiple_sends_fc15_and_fc16_for_single_items() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim:
            async with ModbusDriver(tcp_bus(sim.port, write_multiple=True)) as driver:
                await driver.write(device(), RELAY, True)
                await driver.write(device(), SPEED, 2500)
                await driver.write(device(), RUN, True)
            assert functions(sim) == [15, 16, 3, 16]
            assert simulated.value("relay") is True
            assert registers(simulated, SPEED) == [2500]
            assert registers(simulated, FLAGS) == [0x0089]

    run(body(), timeout=10)


def test_write_multiple_reaches_a_slave_that_lacks_fc5_and_fc6() -> None:
    async def body() -> None:
        simulated = slave()
        simulated.unsupported = {5, 6}
        sim = ModbusSimulator([simulated])
        async with sim:
            async with ModbusDriver(tcp_bus(sim.port)) as driver:
                with pytest.raises(DeviceError) as caught:
                    await driver.write(device(), SPEED, 2500)
                assert str(caught.value) == (
                    "device pump: speed: the slave refused the write: illegal function "
                    "(exception 1)"
                )
            assert registers(simulated, SPEED) == [0]
            async with ModbusDriver(tcp_bus(sim.port, write_multiple=True)) as driver:
                await driver.write(device(), SPEED, 2500)
                await driver.write(device(), RELAY, True)
            assert registers(simulated, SPEED) == [2500]
            assert simulated.value("relay") is True

    run(body(), timeout=10)


# --- faults ------------------------------------------------------------------------------------


def test_an_exception_response_names_device_point_and_exception() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(tcp_bus(sim.port)) as driver:
            with pytest.raises(DeviceError) as caught:
                await driver.write(device(), GHOST, 7)
            assert str(caught.value) == (
                "device pump: ghost: the slave refused the write: illegal data address "
                "(exception 2)"
            )
            assert caught.value.frames[-1].endswith("01 86 02")  # the exception response
            simulated.exception = 6
            with pytest.raises(
                DeviceError, match=r"refused the write: device busy \(exception 6\)"
            ):
                await driver.write(device(), SPEED, 10)
            # a bit's register cannot be read: nothing is written
            with pytest.raises(DeviceError) as caught:
                await driver.write(device(), RUN, True)
            assert str(caught.value) == (
                "device pump: run: cannot read holding 20 to change bit 3: the slave refused: "
                "device busy (exception 6); nothing was written"
            )
            assert functions(sim) == [6, 6, 3]
            simulated.exception = None
            await driver.write(device(), SPEED, 10)  # the connection is fine
            assert registers(simulated, SPEED) == [10]
        assert driver.counters["pump"] == {"exception": 3, "ok": 1}

    run(body(), timeout=10)


def test_a_dead_unit_gives_device_error_after_the_timeout() -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(tcp_bus(sim.port)) as driver:
            simulated.dead = True
            started = time.monotonic()
            with pytest.raises(DeviceError) as caught:
                await driver.write(device(), SPEED, 1200)
            elapsed = time.monotonic() - started
            assert TIMEOUT * 0.9 <= elapsed < 3 * TIMEOUT
            assert str(caught.value) == (
                "device pump: speed: the write was not confirmed by unit 1 on bus field: no "
                f"response within {TIMEOUT:g} s; it may or may not have been made"
            )
            assert caught.value.frames  # what was sent, for the technician
            assert registers(simulated, SPEED) == [0]
            simulated.dead = False
            await driver.write(device(), SPEED, 1200)
            assert registers(simulated, SPEED) == [1200]
        assert driver.counters["pump"] == {"timeout": 1, "ok": 1}

    run(body(), timeout=10)


class _Clamping(_SlaveContext):
    """A slave that keeps register values within 0..3000 and echoes what it kept."""

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        if func_code == 6:
            values = [min(int(v), 3000) for v in values]
        return await super().async_setValues(device_id, func_code, address, values)


def test_an_answer_confirming_another_value_fails_the_write() -> None:
    async def body() -> None:
        simulated = slave()
        sim = ModbusSimulator([simulated])
        sim._context = _Clamping(sim.slaves)  # noqa: SLF001 (a slave that clamps: no option for it)
        async with sim, ModbusDriver(tcp_bus(sim.port)) as driver:
            await driver.write(device(), RAW, 2999)
            with pytest.raises(DeviceError) as caught:
                await driver.write(device(), RAW, 5000)
            assert str(caught.value) == (
                "device pump: raw: the write failed: the answer confirms value 3000, not 5000; "
                "it may or may not have been made"
            )
        assert driver.counters["pump"] == {"ok": 1, "garbled": 1}

    run(body(), timeout=10)


def test_a_stopped_server_gives_bus_error() -> None:
    async def body() -> None:
        async with ModbusSimulator([slave()]) as sim, ModbusDriver(tcp_bus(sim.port)) as driver:
            await driver.write(device(), SPEED, 1)
            await sim.__aexit__(None, None, None)
            with pytest.raises(BusError, match=r"bus field: connection to 127\.0\.0\.1:\d+ lost"):
                await driver.write(device(), SPEED, 2)

    run(body(), timeout=10)


# --- refusals: ValueError, nothing sent ----------------------------------------------------------

REFUSED: list[tuple[PointConfig, Value, str]] = [
    (LEVEL, 1, "input registers cannot be written"),
    (DOOR, True, "discrete inputs cannot be written"),
    (ALARM, True, r"not writable \(writable = true is not set on the point\)"),
    (RAW, 65536, r"65536 is out of range for uint16 \(raw 65536, allowed 0\.\.65535\)"),
    (RAW, -1, r"-1 is out of range for uint16 \(raw -1, allowed 0\.\.65535\)"),
    (TRIM, -3276.9, r"-3276.9 is out of range for int16 \(raw -32769, .*\)"),
    (SPEED, "fast", "expected a number, got 'fast'"),
    (SETPOINT, True, "expected a number, got True"),
    (SETPOINT, math.nan, "nan is not a finite number"),
    (SETPOINT, math.inf, "inf is not a finite number"),
    (SETPOINT, 1e40, "1e\\+40 does not fit float32"),
    (RELAY, 2, "expected a boolean, got 2"),
    (RELAY, "on", "expected a boolean, got 'on'"),
    (RUN, 0.5, r"expected a boolean, got 0\.5"),
    (LABEL, "PUMP-1234", "'PUMP-1234' is longer than 8 characters"),
    (LABEL, "Pumpe Süd", "'Pumpe Süd' is not ASCII"),
    (LABEL, 7, "expected a string, got 7"),
    # within max as sent, beyond it once rounded to the register's resolution
    (TRIM, 21.36, r"21\.36 would be 21\.4 on the device, above max 21\.37"),
    (RAW, 0xFFFF, r'65535 is the device\'s own "not available" value'),
    (
        ModbusPoint("other", table="holding", address=0, writable=True),
        1,
        "not a point of device pump",
    ),
]


@pytest.mark.parametrize(("point", "value", "message"), REFUSED)
def test_what_cannot_be_written_is_refused_before_anything_is_sent(
    point: PointConfig, value: Value, message: str
) -> None:
    async def body() -> None:
        simulated = slave()
        async with ModbusSimulator([simulated]) as sim, ModbusDriver(tcp_bus(sim.port)) as driver:
            with pytest.raises(ValueError, match=f"^{message}$") as caught:
                await driver.write(device(), point, value)
            assert "\n" not in str(caught.value)
            await asyncio.sleep(0.02)  # a request, had one gone out, would have arrived by now
            assert not sim.frames
        assert not driver.counters

    run(body(), timeout=10)


def test_a_sunspec_scaled_point_is_refused() -> None:
    power = ModbusPoint(
        "power", table="holding", address=0, type="int16", writable=True, scale_exponent="power_sf"
    )
    with pytest.raises(
        ValueError, match=r"^its scale comes from point power_sf \(scale_exponent\)"
    ):
        encode_write(power, 100)


def test_a_string_longer_than_one_write_is_refused() -> None:
    long = ModbusPoint("text", table="holding", address=0, type="string", length=250, writable=True)
    with pytest.raises(
        ValueError, match=r"125 registers are more than one write can carry \(123\)"
    ):
        encode_write(long, "x")
    assert len(encode_write(replace(long, length=246), "x")) == 123


# --- RTU: a pseudo-terminal line and RTU over TCP ----------------------------------------------


@contextlib.asynccontextmanager
async def rtu_line(tmp_path: Path) -> AsyncIterator[tuple[SerialProxy, ModbusSimulator]]:
    async with (
        SerialProxy(tmp_path) as proxy,
        ModbusSimulator([slave(1), slave(2)], serial_port=proxy.device_path) as sim,
    ):
        yield proxy, sim


def rtu_bus(path: Path, request_gap: float = 0.0) -> BusConfig:
    return BusConfig(
        "field",
        "modbus-rtu",
        serial_port=str(path),
        timeout=TIMEOUT,
        request_gap=request_gap,
    )


def test_rtu_writes_on_a_serial_line(tmp_path: Path) -> None:
    async def body() -> None:
        async with rtu_line(tmp_path) as (proxy, sim):
            async with ModbusDriver(rtu_bus(proxy.agent_path)) as driver:
                await driver.write(device(2), RELAY, True)
                await driver.write(device(2), SETPOINT, -5.5)
                await driver.write(device(2), RUN, True)
                poll = await driver.read(device(2))
            assert (poll.values["relay"], poll.values["setpoint"], poll.values["run"]) == (
                True,
                -5.5,
                True,
            )
            one, two = sim.slaves[1], sim.slaves[2]
            assert (one.value("relay"), one.value("setpoint")) == (False, 0.0)  # unit 1 untouched
            assert two.value("setpoint") == -5.5
            requests = [f.data for f in sim.frames if not f.sending]
            assert [r[:2] for r in requests[:4]] == [
                b"\x02\x05",
                b"\x02\x10",
                b"\x02\x03",
                b"\x02\x06",
            ]
            assert all(rtu_crc_ok(r) for r in requests)

    run(body(), timeout=10)


def test_rtu_a_spoilt_answer_to_a_write_is_counted(tmp_path: Path) -> None:
    async def body() -> None:
        async with rtu_line(tmp_path) as (proxy, sim):
            async with ModbusDriver(rtu_bus(proxy.agent_path)) as driver:
                proxy.corrupt("crc")
                with pytest.raises(DeviceError) as caught:
                    await driver.write(device(1), SPEED, 42)
                assert str(caught.value) == (
                    "device pump: speed: the write was not confirmed by unit 1 on bus field: the "
                    "answer failed its CRC check (noise, or wrong baud rate or parity?); it may "
                    "or may not have been made"
                )
                # ...and here it was: the slave took the value, its answer was lost on the line.
                assert registers(sim.slaves[1], SPEED) == [42]
                await driver.write(device(1), SPEED, 43)
            assert driver.counters["pump"] == {"crc": 1, "ok": 1}
            assert registers(sim.slaves[1], SPEED) == [43]

    run(body(), timeout=10)


def test_rtu_request_gap_applies_to_writes(tmp_path: Path) -> None:
    gap = 0.05

    async def body() -> None:
        async with (
            rtu_line(tmp_path) as (proxy, sim),
            ModbusDriver(rtu_bus(proxy.agent_path, request_gap=gap)) as driver,
        ):
            await driver.read(device(1))
            await driver.write(device(2), SPEED, 5)
            await driver.write(device(1), RUN, True)  # two transactions
            await driver.write(device(2), RELAY, True)
        frames = list(sim.frames)
        gaps = [
            later.time - earlier.time
            for earlier, later in itertools.pairwise(frames)
            if earlier.sending and not later.sending
        ]
        assert len(gaps) == len([f for f in frames if not f.sending]) - 1
        assert functions(sim)[-4:] == [6, 3, 6, 5]
        assert min(gaps) >= gap, gaps

    run(body(), timeout=10)


def test_rtu_over_tcp_writes() -> None:
    async def body() -> None:
        simulated = slave(3)
        async with ModbusSimulator([simulated], rtu=True) as sim:
            bus = replace(tcp_bus(sim.port), type="modbus-rtu-over-tcp")
            async with ModbusDriver(bus) as driver:
                await driver.write(device(3), LABEL, "RTU")
                await driver.write(device(3), SPEED, 7)
            assert simulated.value("label") == "RTU"
            assert registers(simulated, SPEED) == [7]
            assert functions(sim) == [16, 6]
            assert all(rtu_crc_ok(f.data) for f in sim.frames)

    run(body(), timeout=10)


# --- planning and encoding, no I/O -------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "raw", "multiple", "function"),
    [
        (RELAY, [True], False, 5),
        (RELAY, [True], True, 15),
        (SPEED, [1], False, 6),
        (SPEED, [1], True, 16),
        (RUN, [8], False, 6),
        (SETPOINT, [0, 0], False, 16),
        (LABEL, [0, 0, 0, 0], False, 16),
        (
            ModbusPoint("id", table="holding", address=0, type="string", length=2),
            [0x4142],
            False,
            6,
        ),
    ],
)
def test_plan_write_picks_the_function_code(
    point: ModbusPoint, raw: list[int], multiple: bool, function: int
) -> None:
    write = plan_write(point, raw, multiple)
    assert write.function == function
    assert list(write.values) == raw


def test_plan_write_describes_itself() -> None:
    assert plan_write(SETPOINT, encode(SETPOINT, 21.5)).describe() == (
        "FC 16 holding 2-3: setpoint = 0x0000 0x4357"
    )
    assert plan_write(RELAY, [True], True).describe() == "FC 15 coil 0: relay = on"


@pytest.mark.parametrize(
    ("value", "raw"),
    [(21.37, 214), (21.35, 214), (21.34, 213), (-21.35, -214), (0.05, 1), (-0.05, -1), (3, 30)],
)
def test_scaled_integers_round_to_the_nearest_raw_value_halves_away_from_zero(
    value: float, raw: int
) -> None:
    point = ModbusPoint("t", table="holding", address=0, type="int16", scale=0.1)
    assert encode(point, value) == [raw & 0xFFFF]


def test_rounding_uses_offset_and_scale_as_written() -> None:
    kelvin = ModbusPoint("k", table="holding", address=0, type="uint16", scale=0.01, offset=273.15)
    assert encode(kelvin, 293.155) == [2001]  # 20.005 / 0.01 = 2000.5 -> 2001
    big = ModbusPoint("e", table="holding", address=0, type="uint64")
    assert encode(big, 2**64 - 1) == [0xFFFF] * 4  # ints stay exact
    assert decode(big, encode(big, 2**53 + 1)) == 2**53 + 1


@pytest.mark.parametrize("bit", [0, 7, 15])
def test_bit_points_round_trip(bit: int) -> None:
    point = ModbusPoint("b", table="holding", address=0, type="bool", bit=bit, writable=True)
    assert encode_write(point, True) == [1 << bit]
    assert encode_write(point, False) == [0]
    assert decode(point, [0xFFFF & ~(1 << bit)]) is False
    assert decode(point, [1 << bit]) is True


# --- configuration ------------------------------------------------------------------------------

CONFIG = """
[agent]
id = "gw1"
data_dir = "data"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
{plc}

[[bus]]
name = "line"
type = "modbus-rtu"
port = "/dev/ttyUSB0"
{line}

[[bus]]
name = "gps"
type = "serial"
port = "/dev/ttyS0"
{gps}
"""


def load(tmp_path: Path, plc: str = "", line: str = "", gps: str = "") -> list[str] | None:
    """The buses' write_multiple, or the problems of the file."""
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(CONFIG.format(plc=plc, line=line, gps=gps)))
    try:
        config, _ = load_config(path, {})
    except ConfigError as exc:
        return [str(p) for p in exc.problems if not p.warning]
    assert write_multiple(config.bus("gps")) is False
    return [str(write_multiple(config.bus(name))) for name in ("plc", "line")]


def test_write_multiple_is_a_modbus_bus_key(tmp_path: Path) -> None:
    assert load(tmp_path) == ["False", "False"]
    assert load(tmp_path, plc="write_multiple = true") == ["True", "False"]
    assert load(tmp_path, line="write_multiple = true") == ["False", "True"]
    (problem,) = load(tmp_path, plc='write_multiple = "yes"') or []
    assert problem.endswith("bus.plc.write_multiple: must be true or false, got a string")
    (problem,) = load(tmp_path, gps="write_multiple = true") or []
    assert "bus.gps.write_multiple: unknown key" in problem
