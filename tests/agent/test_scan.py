"""`edge-agent scan`: which unit ids answer, on an RTU line (pseudo-terminals) and over TCP."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest

from agent.api import BusConfig
from agent.api.pty import PtyLink
from agent.errors import BusError
from agent.testkit import run
from agent.testkit.process import cli_async
from agent.testkit.serial import SerialProxy
from drivers.dlt645.emulator import Dlt645Bus, SimulatedMeter
from drivers.modbus.scan import NOTHING_FOUND, Probe, scan, scan_units
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

TIMEOUT = 0.1  # each silent unit id costs one


def slave(unit: int, address: int = 0) -> SimulatedSlave:
    return SimulatedSlave(
        unit, (ModbusPoint("status", table="holding", address=address, type="uint16"),)
    )


def rtu_bus(port: Path) -> BusConfig:
    return BusConfig("rs485", "modbus-rtu", serial_port=str(port), timeout=TIMEOUT)


class Terminal(io.StringIO):
    """Output that says it is a terminal, as stdout does when a person watches."""

    def isatty(self) -> bool:
        return True


def test_scan_finds_the_units_on_an_rtu_line(tmp_path: Path) -> None:
    async def body() -> None:
        dead = slave(3)
        dead.dead = True
        # Unit 5 has no register 0: its exception response still says it is there.
        slaves = [slave(2), dead, slave(5, address=100)]
        async with (
            SerialProxy(tmp_path) as proxy,
            ModbusSimulator(slaves, serial_port=proxy.device_path),
        ):
            out = io.StringIO()
            found = await scan_units(rtu_bus(proxy.agent_path), range(1, 7), out)
        assert found == [2, 5]
        assert out.getvalue().splitlines() == [
            f"scanning bus rs485 ({proxy.agent_path}) for unit(s) 1-6, up to 0.1 s each",
            "unit 2: answers",
            "unit 5: answers (Modbus exception 2 (illegal data address))",
            "found unit(s): 2, 5",
        ]

    run(body(), timeout=10)


def test_scan_finds_the_units_behind_tcp_and_keeps_the_request_gap() -> None:
    gap = 0.02

    async def body() -> None:
        gateway_silence = slave(3)
        gateway_silence.exception = 11  # "gateway target failed to respond": nobody there
        async with ModbusSimulator([slave(1), gateway_silence, slave(7)]) as sim:
            bus = BusConfig(
                "plc",
                "modbus-tcp",
                host="127.0.0.1",
                port=sim.port,
                timeout=TIMEOUT,
                request_gap=gap,
            )
            probes: list[Probe] = []
            found = await scan(bus, range(1, 9), probes.append)
        assert found == [1, 7]
        assert [p.outcome for p in probes] == ["ok", *["timeout"] * 5, "ok", "timeout"]
        assert [p.unit for p in probes] == list(range(1, 9))
        # Seen from the server: quiet for the gap before each probe that follows an answer.
        frames = list(sim.frames)
        gaps = [b.time - a.time for a, b in itertools.pairwise(frames) if a.sending]
        assert gaps
        assert min(gaps) >= gap

    run(body(), timeout=10)


def test_scan_says_what_to_check_when_nothing_answers(tmp_path: Path) -> None:
    async def body() -> None:
        async with (
            SerialProxy(tmp_path) as proxy,
            ModbusSimulator([slave(2)], serial_port=proxy.device_path),
        ):
            proxy.corrupt("crc", 10)  # as a wrong baud rate would
            out = io.StringIO()
            found = await scan_units(rtu_bus(proxy.agent_path), range(1, 4), out)
        assert found == []
        lines = out.getvalue().splitlines()
        assert lines[1:] == [
            "unit 2: the answer failed its CRC check (noise, or wrong baud rate or parity?)",
            NOTHING_FOUND,
        ]
        assert NOTHING_FOUND == "no unit answered — check wiring, baud rate and parity"

    run(body(), timeout=10)


def test_scan_on_a_terminal_updates_one_line_in_place(tmp_path: Path) -> None:
    async def body() -> None:
        async with (
            SerialProxy(tmp_path) as proxy,
            ModbusSimulator([slave(1)], serial_port=proxy.device_path),
        ):
            out = Terminal()
            await scan_units(rtu_bus(proxy.agent_path), range(1, 4), out)
        text = out.getvalue()
        assert "\runit 3 (3/3), found: 1" in text
        assert "each\nunit 1: answers\n\runit 1 (1/3), found: 1\runit 2 (2/3), found: 1\r" in text
        # The end blanks the progress line for the last line.
        assert text.endswith("\r" + " " * len("unit 3 (3/3), found: 1") + "\rfound unit(s): 1\n")

    run(body(), timeout=10)


def test_scan_of_a_missing_port_raises_a_clear_bus_error(tmp_path: Path) -> None:
    async def body() -> None:
        missing = tmp_path / "ttyUSB3"
        with pytest.raises(BusError) as caught:
            await scan_units(rtu_bus(missing), range(1, 3), io.StringIO())
        assert str(caught.value) == (f"bus rs485: {missing} is gone (adapter unplugged?); retrying")

    run(body(), timeout=10)


def test_a_serial_bus_without_devices_is_scanned_with_the_driver_named(tmp_path: Path) -> None:
    """A technician with a meter whose nameplate cannot be read: no device to configure yet."""
    meter = SimulatedMeter("000012345678", {0x02010100: 230.4})
    path = tmp_path / "site.toml"

    async def edge_agent(*args: str) -> tuple[int, str, str]:
        async with PtyLink() as link, Dlt645Bus(link.paths[1], [meter]):
            path.write_text(
                '[agent]\nid = "gw"\ndata_dir = "data"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
                f'[[bus]]\nname = "meters"\ntype = "serial"\nport = "{link.paths[0]}"\n'
                'timeout = "1s"\n'
            )
            return await cli_async("scan", "meters", *args, "-c", str(path), timeout=30)

    async def scenario() -> list[tuple[int, str, str]]:
        return [await edge_agent(*a) for a in ((), ("--driver", "modbus"), ("--driver", "dlt645"))]

    (unnamed, _, said), (modbus, _, refused), (named, found, err) = run(scenario(), timeout=90)
    assert (unnamed, said.splitlines()) == (
        2,
        [
            "edge-agent scan: bus meters has no devices to say which driver scans it: name one "
            "with --driver (dlt645, iec62056, sdi12)"
        ],
    )
    assert (modbus, refused.splitlines()) == (
        2,
        [
            "edge-agent scan: modbus cannot scan a serial bus (drivers that scan one: dlt645, "
            "iec62056, sdi12)"
        ],
    )
    assert named == 0, err
    assert found.splitlines()[-1] == "found meter(s): 000012345678"
