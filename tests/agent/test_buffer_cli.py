"""`edge-agent buffer stats|export|purge`, and one agent per data dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.service.lock import DataDirBusy, data_dir_lock
from agent.store.buffer import Buffer
from agent.testkit.process import cli

CONFIG = """
[agent]
id = "gw"
data_dir = "data"
[buffer]
max_size = "5MB"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
[[device]]
name = "meter"
bus = "plc"
  [[device.point]]
  name = "v"
  address = 0
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    config = tmp_path / "site.toml"
    config.write_text(CONFIG)
    with Buffer(tmp_path / "data" / "buffer.sqlite", 5_000_000, 1.0) as buffer:
        for i in range(3):
            buffer.add("meter", 1_795_000_000_000 + i, {"v": i})
    return config


def test_stats_reports_depth_size_and_next_id(site: Path) -> None:
    result = cli("buffer", "stats", "-c", str(site))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "  waiting samples:  3 (3 committed)"
    assert lines[2].startswith("  oldest sample:    1795000000000 (")
    assert "bound 5000000" in lines[3]
    assert lines[4] == "  dropped (ever):   0"
    assert lines[5] == "  lost to damage:   0"
    assert lines[6] == "  next id:          4"


def test_export_prints_json_lines(site: Path) -> None:
    result = cli("buffer", "export", "-c", str(site))
    assert result.returncode == 0, result.stderr
    samples = [json.loads(line) for line in result.stdout.splitlines()]
    assert [s["id"] for s in samples] == [1, 2, 3]
    assert samples[0] == {"id": 1, "device": "meter", "ts": 1_795_000_000_000, "values": {"v": 0}}


def test_purge_empties_it_and_ids_go_on(site: Path, tmp_path: Path) -> None:
    result = cli("buffer", "purge", "-c", str(site))
    assert result.returncode == 0, result.stderr
    assert "purged 3 sample(s); ids continue from 4" in result.stdout
    assert cli("buffer", "export", "-c", str(site)).stdout == ""


def test_purge_refuses_while_an_agent_holds_the_data_dir(site: Path, tmp_path: Path) -> None:
    with data_dir_lock(tmp_path / "data"):
        result = cli("buffer", "purge", "-c", str(site))
    assert result.returncode == 1
    assert "is in use by another edge-agent" in result.stderr
    assert "Traceback" not in result.stderr


def test_one_agent_per_data_dir(tmp_path: Path) -> None:
    busy = pytest.raises(DataDirBusy, match="stop it, or give this one")
    with data_dir_lock(tmp_path), busy, data_dir_lock(tmp_path):
        pass


def test_stats_without_a_buffer_says_so(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(CONFIG)
    result = cli("buffer", "stats", "-c", str(config))
    assert result.returncode == 1
    assert "no buffer at" in result.stderr
    assert "has not run with this data_dir yet" in result.stderr
