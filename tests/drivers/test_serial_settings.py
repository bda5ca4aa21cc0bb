"""A line setting the port refuses (7 data bits on a pseudo-terminal, even parity on some USB
adapters) is one line naming the setting, the port and the fix: in ``read``, ``write``,
``scan`` and ``run`` (there once while it persists), for Modbus RTU and the serial drivers."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial  # type: ignore[import-untyped]

from agent.config import load_config
from agent.poll.scheduler import BusPoller
from agent.registry import load_driver
from agent.testkit import run, until
from agent.testkit.process import cli


@pytest.fixture
def port() -> Iterator[str]:
    """A pseudo-terminal that refuses 7 data bits: once configured (opened at 8N1 here), Linux's
    refuses CS7 with EINVAL; only the very first configuration of a fresh one passes."""
    master, slave = os.openpty()
    serial.Serial(port=os.ttyname(slave), timeout=0).close()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def site(tmp_path: Path, port: str, kind: str) -> Path:
    devices = {
        "modbus": """
[[bus]]
name = "rs485"
type = "modbus-rtu"
port = "{port}"
bytesize = 7
timeout = "200ms"
[[device]]
name = "meter"
bus = "rs485"
unit = 1
interval = "1s"
  [[device.point]]
  name = "relay"
  table = "coil"
  address = 0
  writable = true
""",
        "serial-line": """
[[bus]]
name = "rs485"
type = "serial"
port = "{port}"
bytesize = 7
timeout = "200ms"
[[device]]
name = "meter"
bus = "rs485"
driver = "serial-line"
interval = "1s"
delimiter = ","
  [[device.point]]
  name = "level"
  field = 0
""",
    }[kind]
    path = tmp_path / "config.toml"
    head = f'[agent]\nid = "gw"\ndata_dir = "{tmp_path / "data"}"\n'
    path.write_text(head + devices.format(port=port), encoding="utf-8")
    return path


def said(port: str) -> str:
    return f"bus rs485: {port} refuses bytesize = 7 (Invalid argument): the adapter cannot do it"


@pytest.mark.parametrize("kind", ["modbus", "serial-line"])
def test_read_says_which_setting_in_one_line(tmp_path: Path, port: str, kind: str) -> None:
    result = cli("read", "-c", str(site(tmp_path, port, kind)), "meter", timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert said(port) in line
    assert line.endswith("set the bus's bytesize to one it supports (and the devices to match)")


def test_write_and_scan_say_it_too(tmp_path: Path, port: str) -> None:
    config = str(site(tmp_path, port, "modbus"))
    for args in (
        ("write", "-c", config, "meter", "relay", "true"),
        ("scan", "-c", config, "rs485", "--units", "1-2"),
    ):
        result = cli(*args, timeout=30)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr, args
        assert said(port) in result.stderr, (args, result.stderr)


def test_run_says_it_once_while_it_persists(
    tmp_path: Path, port: str, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = load_config(site(tmp_path, port, "modbus"), {})
    bus = config.bus("rs485")
    poller = BusPoller(bus, config.devices_on("rs485"), load_driver("modbus"), lambda *_: None)
    caplog.set_level(logging.DEBUG)

    async def body() -> None:
        task = asyncio.create_task(poller.run())
        try:
            await until(lambda: poller.health["meter"].errors >= 3, 20, "three attempts")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body(), timeout=30)
    lines = [r for r in caplog.records if said(port) in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_the_probe_leaves_the_port_as_found_and_never_touches_a_held_one(port: str) -> None:
    from dataclasses import replace

    from agent.api import BusConfig
    from agent.api.serial import refused_line_setting

    bus = replace(BusConfig("rs485", "serial", serial_port=port), bytesize=7)
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        attrs = termios.tcgetattr(fd)
        attrs[6][termios.VMIN] = 7  # a mark of the settings the port had
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        assert refused_line_setting(bus) == ("bytesize", 7)
        assert termios.tcgetattr(fd)[6][termios.VMIN] == 7  # put back as it was
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another program holds it now
        assert refused_line_setting(bus) is None
    finally:
        os.close(fd)
