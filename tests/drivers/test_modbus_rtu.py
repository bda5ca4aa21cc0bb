"""ModbusDriver on RTU lines: real pymodbus slaves on pseudo-terminals and RTU over TCP.

The faults of a real RS-485 line (bad CRC, a cut-off frame, a slave answering for another unit, a
lost answer, an unplugged adapter) come from ``agent.testkit.serial.SerialProxy``, which sits between
the agent's port and the slaves' port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import itertools
import os
import re
import termios
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from agent.aio import cancel_and_wait
from agent.api import BusConfig, DeviceConfig
from agent.cli.simulate import serve
from agent.errors import BusError, DeviceError
from agent.model import Poll, Value
from agent.poll.scheduler import BusPoller
from agent.testkit import run
from agent.testkit.serial import Fault, SerialProxy, pty_pair
from drivers.modbus import ModbusDriver
from drivers.modbus.frames import rtu_crc_ok
from drivers.modbus.ports import port_problem_message
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

TIMEOUT = 0.3  # the bus timeout: short, since fault tests wait for it once each

POINTS = (
    ModbusPoint("voltage", table="holding", address=0, type="float32"),
    ModbusPoint("status", table="holding", address=2, type="uint16"),
    ModbusPoint("count", table="input", address=0, type="uint32"),
)


def rtu_bus(
    port: str | Path, baudrate: int = 9600, timeout: float = TIMEOUT, request_gap: float = 0.0
) -> BusConfig:
    return BusConfig(
        name="line",
        type="modbus-rtu",
        serial_port=str(port),
        baudrate=baudrate,
        timeout=timeout,
        request_gap=request_gap,
    )


def device(unit: int, name: str | None = None, interval: float = 1.0) -> DeviceConfig:
    return DeviceConfig(
        name=name or f"meter-{unit}",
        bus="line",
        driver="modbus",
        interval=interval,
        unit=unit,
        points=POINTS,
    )


def expected(unit: int) -> dict[str, Value]:
    return {"voltage": 230.0 + unit, "status": unit, "count": 1000 * unit}


def slave(unit: int) -> SimulatedSlave:
    simulated = SimulatedSlave(unit, POINTS)
    for name, value in expected(unit).items():
        simulated.set_value(name, value)
    return simulated


@contextlib.asynccontextmanager
async def line(
    tmp_path: Path, *units: int, baudrate: int = 9600
) -> AsyncIterator[tuple[SerialProxy, ModbusSimulator]]:
    """Slaves ``units`` on one RTU line, behind a proxy; the agent's port is ``proxy.agent_path``."""
    async with (
        SerialProxy(tmp_path) as proxy,
        ModbusSimulator(
            [slave(u) for u in units], serial_port=proxy.device_path, baudrate=baudrate
        ) as sim,
    ):
        yield proxy, sim


def line_speed(path: str | Path) -> int:
    """The output baud rate the port is set to, as termios reports it."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        speed: int = termios.tcgetattr(fd)[5]
        return speed
    finally:
        os.close(fd)


# --- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("baudrate", "speed"), [(9600, termios.B9600), (19200, termios.B19200)])
def test_several_units_on_one_line(tmp_path: Path, baudrate: int, speed: int) -> None:
    async def body() -> None:
        async with line(tmp_path, 1, 2, 7, baudrate=baudrate) as (proxy, _):
            async with ModbusDriver(rtu_bus(proxy.agent_path, baudrate)) as driver:
                # pymodbus defaults to 19200: the configured rate must reach the port.
                assert line_speed(proxy.agent_path) == speed
                for unit in (7, 1, 2, 1):
                    poll = await driver.read(device(unit))
                    assert poll.values == expected(unit)
                    assert poll.errors == ()
            assert driver.counters == {
                "meter-1": {"ok": 4},
                "meter-2": {"ok": 2},
                "meter-7": {"ok": 2},
            }

    run(body(), timeout=10)


def test_rtu_over_tcp() -> None:
    async def body() -> None:
        async with ModbusSimulator([slave(1), slave(2)], rtu=True) as sim:
            bus = BusConfig(
                "line", "modbus-rtu-over-tcp", host="127.0.0.1", port=sim.port, timeout=TIMEOUT
            )
            async with ModbusDriver(bus) as driver:
                assert (await driver.read(device(2))).values == expected(2)
                assert (await driver.read(device(1))).values == expected(1)
            # RTU frames crossed the socket: unit id first, CRC last, no MBAP header.
            request = next(frame.data for frame in sim.frames if not frame.sending)
            assert request[0] == 2
            assert rtu_crc_ok(request)

    run(body(), timeout=10)


def test_request_gap_is_kept_between_devices(tmp_path: Path) -> None:
    gap = 0.05

    async def body() -> None:
        async with line(tmp_path, 1, 2, 3) as (proxy, sim):
            bus = rtu_bus(proxy.agent_path, request_gap=gap)
            async with ModbusDriver(bus) as driver:
                for _ in range(3):
                    for unit in (1, 2, 3):
                        await driver.read(device(unit))
        # Seen from the slaves: from the end of each answer to the next request's first byte.
        frames = list(sim.frames)
        gaps = [
            later.time - earlier.time
            for earlier, later in itertools.pairwise(frames)
            if earlier.sending and not later.sending
        ]
        assert len(gaps) == 3 * 3 * 2 - 1  # two requests per poll
        assert min(gaps) >= gap, gaps

    run(body(), timeout=10)


def test_request_gap_does_not_wait_when_the_bus_was_quiet(tmp_path: Path) -> None:
    gap = 0.2

    async def body() -> None:
        async with line(tmp_path, 1) as (proxy, _):
            driver = ModbusDriver(rtu_bus(proxy.agent_path, request_gap=gap))
            async with driver:
                first = time.monotonic()
                await driver.read(device(1))  # two requests: one gap inside the poll
                assert time.monotonic() - first >= gap
                await asyncio.sleep(gap)  # the bus stays quiet for the whole gap
                second = time.monotonic()
                await driver.read(device(1))
                assert time.monotonic() - second < 2 * gap  # one gap inside, none before

    run(body(), timeout=10)


# --- faults ------------------------------------------------------------------------------------

FAULTS: list[tuple[Fault, str, str]] = [
    ("crc", "crc", "the answer failed its CRC check"),
    ("truncate", "garbled", "truncated answer (8 of 11 bytes)"),
    ("unit", "wrong_unit", "an answer came from unit 2 instead (not taken)"),
    ("drop", "timeout", f"no response within {TIMEOUT:g} s"),
]


@pytest.mark.parametrize(("fault", "category", "cause"), FAULTS)
def test_a_spoilt_answer_is_counted_and_the_next_poll_succeeds(
    tmp_path: Path, fault: Fault, category: str, cause: str
) -> None:
    async def body() -> None:
        async with line(tmp_path, 1, 2) as (proxy, _):
            async with ModbusDriver(rtu_bus(proxy.agent_path)) as driver:
                proxy.corrupt(fault)
                with pytest.raises(DeviceError) as caught:
                    await driver.read(device(1))
                assert proxy.faults_pending == 0
                message = str(caught.value)
                assert "\n" not in message
                assert message.startswith(
                    f"bus line, device meter-1 (unit 1): holding 0-2: {cause}"
                ), message
                assert message.endswith("device meter-1: 1 more request(s) not sent")
                frames = caught.value.frames
                # the frame, and when nothing usable came back, what was wrong beside it
                assert frames[0].startswith("sent 01 03 00 00 00 03 05 cb")
                if fault != "drop":  # what the slave really sent, as the agent saw it
                    assert frames[1].startswith("received 0")
                assert (await driver.read(device(1))).values == expected(1)
                assert (await driver.read(device(2))).values == expected(2)
            assert driver.counters["meter-1"] == {category: 1, "ok": 2}
            assert driver.counters["meter-2"] == {"ok": 2}

    run(body(), timeout=10)


def test_the_frame_ring_keeps_the_last_eight(tmp_path: Path) -> None:
    async def body() -> None:
        async with line(tmp_path, 1) as (proxy, _):
            driver = ModbusDriver(rtu_bus(proxy.agent_path))
            async with driver:
                for _ in range(5):
                    await driver.read(device(1))
                assert len(driver.frames("meter-1")) == 8
                assert driver.frames("meter-1")[-1].startswith("received 01 04 04 ")
                assert driver.frames("meter-2") == ()

    run(body(), timeout=10)


def test_exception_responses_and_slow_slaves(tmp_path: Path) -> None:
    async def body() -> None:
        async with line(tmp_path, 1, 2) as (proxy, sim):
            async with ModbusDriver(rtu_bus(proxy.agent_path)) as driver:
                sim.slaves[1].exception = 6
                with pytest.raises(DeviceError) as caught:
                    await driver.read(device(1))
                assert str(caught.value) == (
                    "bus line, device meter-1 (unit 1): holding 0-2: Modbus exception 6 "
                    "(device busy); bus line, device meter-1 (unit 1): input 0-1: Modbus "
                    "exception 6 (device busy)"
                )
                sim.slaves[1].exception = None
                sim.slaves[2].slow = TIMEOUT / 3  # late, but within the timeout
                assert (await driver.read(device(2))).values == expected(2)
                assert (await driver.read(device(1))).values == expected(1)
            assert driver.counters["meter-1"] == {"exception": 2, "ok": 2}
            assert driver.counters["meter-2"] == {"ok": 2}

    run(body(), timeout=10)


def test_a_slave_that_does_not_answer_times_out_quietly(tmp_path: Path) -> None:
    async def body() -> None:
        async with line(tmp_path, 1) as (proxy, _):
            async with ModbusDriver(rtu_bus(proxy.agent_path, timeout=0.1)) as driver:
                # pymodbus gives up on TCP after 4 silent requests; a serial port is kept open.
                for _ in range(5):
                    with pytest.raises(DeviceError, match=r"no response within 0\.1 s"):
                        await driver.read(device(9))
                assert (await driver.read(device(1))).values == expected(1)
            assert driver.counters["meter-9"] == {"timeout": 5}

    run(body(), timeout=10)


def test_a_late_tcp_answer_costs_its_device_a_poll_not_the_connection() -> None:
    async def body() -> None:
        late = slave(1)
        late.slow = 1.5 * TIMEOUT  # its answer comes during the next request
        async with ModbusSimulator([late]) as sim:
            bus = BusConfig("plc", "modbus-tcp", host="127.0.0.1", port=sim.port, timeout=TIMEOUT)
            one = DeviceConfig("meter", "plc", "modbus", 1.0, unit=1, points=POINTS[:1])
            async with ModbusDriver(bus) as driver:
                with pytest.raises(DeviceError, match="no response"):
                    await driver.read(one)
                with pytest.raises(DeviceError) as caught:
                    await driver.read(one)
                late.slow = 0.0
                assert (await driver.read(one)).values == {"voltage": 231.0}  # the same link
            assert str(caught.value) == (
                "bus plc, device meter (unit 1): holding 0-1: an answer carried transaction id 1 "
                "instead of 2 (not taken)"
            )
            assert driver.counters["meter"] == {"timeout": 1, "out_of_step": 1, "ok": 1}

    run(body(), timeout=10)


# --- the port ----------------------------------------------------------------------------------


def test_a_busy_port_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        async with line(tmp_path, 1) as (proxy, _):
            bus = rtu_bus(proxy.agent_path)
            async with ModbusDriver(bus):
                with pytest.raises(BusError) as caught:
                    async with ModbusDriver(bus):
                        pass
            assert str(caught.value) == (
                f"bus line: {proxy.agent_path} is busy: another program (another edge-agent?) "
                "has it open; retrying"
            )
            async with ModbusDriver(bus) as driver:  # free again
                assert (await driver.read(device(1))).values == expected(1)

    run(body(), timeout=10)


def test_a_missing_port_or_a_file_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        missing = tmp_path / "ttyUSB9"
        with pytest.raises(BusError) as caught:
            async with ModbusDriver(rtu_bus(missing)):
                pass
        assert str(caught.value) == f"bus line: {missing} is gone (adapter unplugged?); retrying"
        plain = tmp_path / "notes.txt"
        plain.write_text("not a tty")
        with pytest.raises(BusError, match=f"cannot open {plain}: it is not a serial port"):
            async with ModbusDriver(rtu_bus(plain)):
                pass

    run(body(), timeout=10)


def test_permission_denied_says_what_to_do() -> None:
    # Tests run as root here, which no file mode stops: the message is checked on its own.
    message = port_problem_message("line", "/dev/ttyUSB0", errno.EACCES, "Permission denied")
    assert message == (
        "bus line: no permission to open /dev/ttyUSB0: add the agent's user to the dialout "
        "group; retrying"
    )


class _Watched(ModbusDriver):
    """The real driver, also telling the test each BusError it raised."""

    errors: asyncio.Queue[str]

    async def __aenter__(self) -> _Watched:
        try:
            await super().__aenter__()
        except BusError as exc:
            self.errors.put_nowait(str(exc))
            raise
        return self

    async def read(self, device: DeviceConfig) -> Poll:
        try:
            return await super().read(device)
        except BusError as exc:
            self.errors.put_nowait(str(exc))
            raise


class _Samples:
    """The scheduler's sink: signals each sample."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.values: list[Mapping[str, Value]] = []

    def __call__(self, name: str, ts: int, mono: float, values: Mapping[str, Value]) -> None:
        self.values.append(values)
        self.arrived.set()

    async def next(self) -> Mapping[str, Value]:
        self.arrived.clear()
        await asyncio.wait_for(self.arrived.wait(), 10)
        return self.values[-1]


def test_an_unplugged_adapter_is_reopened_when_it_returns(tmp_path: Path) -> None:
    async def body() -> None:
        _Watched.errors = asyncio.Queue()
        samples = _Samples()
        async with line(tmp_path, 1) as (proxy, _):
            bus = rtu_bus(proxy.agent_path)
            poller = BusPoller(bus, [device(1, interval=0.05)], _Watched, samples)
            task = asyncio.create_task(poller.run())
            try:
                assert await samples.next() == expected(1)
                proxy.unplug()
                gone = f"bus line: {proxy.agent_path} is gone (adapter unplugged?); retrying"
                assert await asyncio.wait_for(_Watched.errors.get(), 10) == gone
                assert not poller.connected
                proxy.replug()
                assert await samples.next() == expected(1)
                assert poller.connected
            finally:
                await cancel_and_wait(task)

    run(body(), timeout=20)


# --- edge-agent simulate --pty -----------------------------------------------------------------


def test_simulate_pty_serves_a_path_a_driver_can_read(tmp_path: Path) -> None:
    from agent.config import load_config

    config_file = tmp_path / "c.toml"
    config_file.write_text(
        '[agent]\nid = "gw"\ndata_dir = "data"\n'
        '[[bus]]\nname = "rs485"\ntype = "modbus-rtu"\nport = "/dev/ttyUSB0"\nbaudrate = 19200\n'
        '[[device]]\nname = "soil"\nbus = "rs485"\nunit = 4\n'
        '  [[device.point]]\n  name = "moisture"\n  address = 3\n'
    )
    config, _ = load_config(config_file, {})

    async def body() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            server = asyncio.create_task(serve(config, None, stop, ready, pty=True))
            try:
                await ready.wait()
            finally:
                if not ready.is_set():
                    await cancel_and_wait(server)
        try:
            printed = out.getvalue()
            found = re.fullmatch(r"bus rs485: point a modbus-rtu bus at (/dev/pts/\d+)\n", printed)
            assert found, printed
            bus = BusConfig("rs485", "modbus-rtu", serial_port=found[1], baudrate=19200)
            async with ModbusDriver(bus) as driver:
                poll = await driver.read(config.device("soil"))
            assert set(poll.values) == {"moisture"}
            assert poll.errors == ()
        finally:
            stop.set()
            await cancel_and_wait(server)

    run(body(), timeout=10)


def test_simulate_refuses_a_real_serial_port(tmp_path: Path) -> None:
    from agent.cli.tools import UsageError
    from agent.config import load_config

    config_file = tmp_path / "c.toml"
    config_file.write_text(
        '[agent]\nid = "gw"\ndata_dir = "data"\n'
        '[[bus]]\nname = "rs485"\ntype = "modbus-rtu"\nport = "/dev/ttyUSB0"\n'
    )
    config, _ = load_config(config_file, {})

    async def body() -> None:
        with pytest.raises(UsageError) as caught:
            await serve(config, None, asyncio.Event())
        assert str(caught.value) == (
            "bus rs485 is a modbus-rtu bus on the real serial port /dev/ttyUSB0: simulate it on "
            "a pseudo-terminal with --pty, or with --tcp HOST:PORT"
        )

    run(body(), timeout=10)


def test_pty_pair_is_a_cable() -> None:
    async def body() -> None:
        async with pty_pair() as (a, b):
            ends = [os.open(p, os.O_RDWR | os.O_NOCTTY) for p in (a, b)]
            try:
                os.write(ends[0], b"\x01\x03ping")
                loop = asyncio.get_running_loop()
                readable = asyncio.Event()
                loop.add_reader(ends[1], readable.set)
                try:
                    await readable.wait()
                finally:
                    loop.remove_reader(ends[1])
                assert os.read(ends[1], 100) == b"\x01\x03ping"
            finally:
                for fd in ends:
                    os.close(fd)

    run(body(), timeout=10)


def test_cancellation_is_never_swallowed_on_a_serial_line(tmp_path: Path) -> None:
    async def body() -> None:
        async with line(tmp_path, 1) as (proxy, _):
            driver = ModbusDriver(rtu_bus(proxy.agent_path, timeout=5.0))  # never waited for
            async with driver:
                proxy.corrupt("drop")
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(driver.read(device(1)), timeout=0.1)
                assert (await driver.read(device(1))).values == expected(1)

    run(body(), timeout=10)
