"""The command line: exit codes and one-line errors, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import main
from agent.testkit.process import cli

ROOT = Path(__file__).parents[2]


def test_check_accepts_the_demo_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(ROOT / "config.toml")]) == 0
    out = capsys.readouterr().out
    assert "ok (1 bus(es), 2 device(s), 8 point(s), 0 warning(s))" in out


def test_check_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[agent]\nid = "gw"\nlog_levle = "info"\n[mqtt]\nqos = 5\n')
    result = cli("check", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f'{config}:3: agent.log_levle: unknown key (did you mean "log_level"?)',
        f"{config}:5: mqtt.qos: 5 is out of range 0..1",
        f"{config}: 2 problem(s)",
    ]
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = cli("run", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert f"{tmp_path}/nope.toml:0: (file): no such file: create it or pass -c" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_defaults_to_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "site.toml"
    config.write_text((ROOT / "config.toml").read_text())
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(config))
    assert main(["check"]) == 0
    assert str(config) in capsys.readouterr().out


def test_simulate_refuses_a_bad_address(capsys: pytest.CaptureFixture[str]) -> None:
    result = cli("simulate", "-c", str(ROOT / "config.toml"), "--tcp", "localhost")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        'simulate: "localhost" is not HOST:PORT, e.g. 127.0.0.1:5020'
    )
    assert "Traceback" not in result.stderr


def test_a_data_dir_that_is_a_file_is_a_config_problem(tmp_path: Path) -> None:
    """Not a FileExistsError traceback at `run`: one line at agent.data_dir, exit 2."""
    (tmp_path / "state").write_text("not a directory")
    for data_dir, where in (
        ("state", "state"),
        ("state/buffer", "state (part of {dir}/state/buffer)"),
    ):
        config = tmp_path / "config.toml"
        config.write_text(f'[agent]\nid = "gw"\ndata_dir = "{data_dir}"\n')
        expected = (
            f"{config}:3: agent.data_dir: is a file, not a directory: {tmp_path}/"
            + where.format(dir=tmp_path)
        )
        for command in ("check", "run"):
            result = cli(command, "-c", str(config), timeout=30)
            assert result.returncode == 2, result.stderr
            assert result.stderr.splitlines()[0] == expected
            assert "Traceback" not in result.stderr
