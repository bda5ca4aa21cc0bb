"""`edge-agent run` against a disk that refuses: a read-only data dir at start, a killed agent
whose samples were in memory only; files private outside systemd; the buffer commands from a
relative config. All with the real agent, a real broker and a real slave."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.clock import kernel_clock_synced
from agent.store.buffer import Buffer
from agent.store.ids import PER_MS
from agent.testkit.faults import MountError, ReadOnlyMount, account, drained
from agent.testkit.modbus import ModbusBus
from agent.testkit.process import cli
from agent.testkit.runner import AgentRunner
from drivers.modbus.schema import ModbusPoint

LEVEL = ModbusPoint("level", table="holding", address=0, type="uint16")
SITE = """
[agent]
id = "disk"
[buffer]
flush_interval = "400ms"
[mqtt]
topic_prefix = "dk"
batch_interval = "100ms"
reconnect_max = "1s"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
timeout = "300ms"
[[device]]
name = "tank"
bus = "plc"
interval = "200ms"
  [[device.point]]
  name = "level"
  address = 0
"""


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[ReadOnlyMount]:
    data = tmp_path / "ro-data"
    data.mkdir(mode=0o700)
    mount = ReadOnlyMount(data)
    try:
        mount.bind()
        mount.read_only()
    except MountError as exc:
        pytest.skip(str(exc))
    yield mount
    mount.release()


def test_a_read_only_data_dir_at_start_loses_nothing_and_repeats_nothing(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], read_only_dir: ReadOnlyMount
) -> None:
    bus = modbus_bus("tcp")
    bus.add(1, points=[LEVEL])
    edge_agent.data_dir = read_only_dir.path
    edge_agent.start(SITE, buses={"plc": bus})  # READY: no traceback, no exit
    if kernel_clock_synced():  # nothing can be reserved on disk: ids from the clock
        samples = edge_agent.telemetry.wait_samples(10, "tank", timeout=20)
        ids = [s["id"] for s in samples]
        assert ids == sorted(set(ids))
        assert min(ids) >= 1_700_000_000_000 * PER_MS
        edge_agent.wait_log(r"ids come from the clock until a reservation can be recorded")
    else:  # a clock that could repeat itself after a reboot is not used for ids: samples wait
        edge_agent.wait_log(r"samples wait for an id")
        assert edge_agent.samples() == []
    read_only_dir.writable()  # the card is back: the reservation is recorded, samples numbered
    edge_agent.telemetry.wait_samples(15, "tank", timeout=30)
    assert edge_agent.term() == 0
    log = edge_agent.log
    assert "Traceback" not in log
    # one line for the status socket it could not make, not one per retry
    assert log.count("cannot serve the status socket") == 1
    result = account(edge_agent)
    assert result.ok, result
    if not kernel_clock_synced():  # held, never dropped: every sample taken got its id in turn
        ids = sorted(s["id"] for s in edge_agent.samples())
        assert ids == list(range(1, ids[-1] + 1))


def test_a_kill_loses_none_of_the_samples_that_were_in_memory_only(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus]
) -> None:
    bus = modbus_bus("tcp")
    bus.add(1, points=[LEVEL])
    edge_agent.start(SITE, buses={"plc": bus})
    edge_agent.telemetry.wait_samples(5, "tank")
    broker = edge_agent.broker
    assert broker is not None
    broker.stop()  # samples wait; those younger than ¾ flush_interval are in memory only
    edge_agent.wait_log(r"link lost|connection refused", timeout=10)
    waiting_now(edge_agent, 2)  # the link's loss is seen at once: let samples pile up
    edge_agent.kill()
    exported = cli("buffer", "export", "-c", str(edge_agent.config_path))
    assert exported.returncode == 0, exported.stderr
    waiting = [json.loads(line)["id"] for line in exported.stdout.splitlines()]
    assert waiting, "the outage left nothing waiting: the test proves nothing"
    broker.start()
    edge_agent.start(SITE, buses={"plc": bus})
    assert drained(edge_agent, 30)
    assert edge_agent.term() == 0
    result = account(edge_agent)
    assert result.ok, result
    delivered = {s["id"] for s in edge_agent.samples()}
    assert set(waiting) <= delivered
    ids = sorted(delivered)
    assert ids == list(range(ids[0], ids[-1] + 1)), "a gap after the kill"


def waiting_now(runner: AgentRunner, depth: int, timeout: float = 15.0) -> None:
    """Until the running agent's buffer holds ``depth`` samples (asked on its status socket)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):  # not answering yet: asked again
            if runner.status()["buffer"]["depth"] >= depth:
                return
        assert time.monotonic() < deadline, f"not {depth} samples waiting within {timeout:g}s"
        time.sleep(0.1)  # another process's state: asked, not awaited


def test_outside_systemd_the_readings_are_the_agents_alone(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus]
) -> None:
    bus = modbus_bus("tcp")
    bus.add(1, points=[LEVEL])
    old = os.umask(0o022)  # a login shell's: what the agent inherits outside systemd
    try:
        edge_agent.start(SITE, buses={"plc": bus})
    finally:
        os.umask(old)
    edge_agent.telemetry.wait_samples(3, "tank")
    assert edge_agent.term() == 0
    data = edge_agent.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [f for f in data.iterdir() if f.is_file()]
    assert {f.name for f in files} >= {"buffer.sqlite", "buffer.ids"}
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, file


def test_the_buffer_commands_take_a_relative_config_and_data_dir(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "config.toml").write_text(SITE.replace('id = "disk"', 'id = "disk"\ndata_dir = "data"'))
    with Buffer(site / "data" / "buffer.sqlite", 1_000_000, 1.0) as buffer:
        buffer.add("tank", 1_800_000_000_000, {"level": 1})
    for action in ("stats", "export"):
        done = cli("buffer", action, "-c", "config.toml", cwd=site)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert "relative path" not in done.stderr
    assert json.loads(cli("buffer", "export", "-c", "config.toml", cwd=site).stdout)["id"] == 1
