"""The plugin API for real: the example driver package under examples/ installed with pip, as a
third party's would be, and found by its entry point by `edge-agent` in fresh processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.testkit import run
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from agent.testkit.process import AgentProcess, cli

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "edge-agent-textfile"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed by pip into a directory of its own: built by setuptools
    from the test venv (no build isolation, no index: nothing is fetched, CI may be offline),
    with its dist-info and entry point as any installed package has them."""
    work = tmp_path_factory.mktemp("plugin")
    # setuptools builds in the source tree (build/, *.egg-info): a copy keeps the repo clean
    source = shutil.copytree(
        EXAMPLE,
        work / "source",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    site = work / "site"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--no-deps", "--no-build-isolation", "--no-index", "--target", str(site)),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # (No module named 'setuptools', or invalid command 'bdist_wheel': the venv lacks the test
    # extras' setuptools>=70.1; run scripts/setup.sh)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}{result.stderr}"
    entry_points = site / "edge_agent_textfile-0.1.0.dist-info" / "entry_points.txt"
    assert "textfile = edge_agent_textfile.driver:TextFileDriver" in entry_points.read_text()
    return site


@pytest.fixture
def with_plugin(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes (`cli`, `AgentProcess` inherit the environment) see the installed plugin."""
    paths = [str(plugin_site), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


def write_config(tmp_path: Path, devices: str, mqtt: str = "") -> Path:
    config = tmp_path / "site.toml"
    head = f'[agent]\nid = "gw"\ndata_dir = "data"\n{mqtt}'
    config.write_text(head + textwrap.dedent(devices))
    return config


def adc_device(tmp_path: Path, interval: str = "10s") -> str:
    """A device of two files in a directory laid out like an IIO ADC's, and one by full path."""
    adc = tmp_path / "iio:device0"
    adc.mkdir()
    (adc / "in_voltage0_raw").write_text("2048\n")
    (adc / "in_voltage1_raw").write_text("17\n")
    (tmp_path / "temp1_input").write_text("23125\n")
    return f"""
        [[device]]
        name = "adc"
        driver = "textfile"
        directory = "{adc}"
        interval = "{interval}"
          [[device.point]]
          name = "battery"
          path = "in_voltage0_raw"
          scale = 0.00125
          unit = "V"
          [[device.point]]
          name = "count"
          path = "in_voltage1_raw"
          [[device.point]]
          name = "temp"
          path = "{tmp_path / "temp1_input"}"
          scale = 0.001
        """


def test_without_the_plugin_installed_the_driver_is_unknown(tmp_path: Path) -> None:
    """The control: what the tests below see comes from the installed package's entry point."""
    config = write_config(tmp_path, adc_device(tmp_path))
    result = cli("check", "-c", str(config), timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unknown driver 'textfile'; known drivers: " in result.stderr


def test_check_accepts_the_plugin_device(tmp_path: Path, with_plugin: None) -> None:
    config = write_config(tmp_path, adc_device(tmp_path))
    result = cli("check", "-c", str(config), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(
        f"{config}: ok (0 bus(es), 1 device(s), 3 point(s), 0 warning(s))"
    )


def test_check_refuses_bad_keys_one_line_each(tmp_path: Path, with_plugin: None) -> None:
    """A converter's refusal, an unknown key and the driver's own validate, each located."""
    config = write_config(
        tmp_path,
        """
        [[device]]
        name = "adc"
        driver = "textfile"
        directory = 5
          [[device.point]]
          name = "battery"
          pth = "in_voltage0_raw"
        [[device]]
        name = "solar"
        driver = "textfile"
          [[device.point]]
          name = "panel"
          unit = "V"
          [[device.point]]
          name = "temp"
          path = "temp1_input"
        """,
    )
    result = cli("check", "-c", str(config), timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{config}:8: device.adc.directory: must be a string, got a number",
        f'{config}:11: device.adc.point.battery.pth: unknown key (did you mean "path"?)',
        f"{config}:15: device.solar.point.panel.path: is required: the file to read",
        f'{config}:20: device.solar.point.temp.path: "temp1_input" is relative: make it '
        "absolute, or set the device's directory",
        f"{config}: 4 problem(s)",
    ]


def test_read_prints_the_numbers_in_the_files(tmp_path: Path, with_plugin: None) -> None:
    config = write_config(tmp_path, adc_device(tmp_path))
    result = cli("read", "-c", str(config), "adc", "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    poll = json.loads(result.stdout)
    assert poll["device"] == "adc"
    assert poll["errors"] == []
    assert poll["values"] == {
        "battery": pytest.approx(2.56),
        "count": 17,  # no scale nor offset: an integer stays one
        "temp": pytest.approx(23.125),
    }
    assert isinstance(poll["values"]["count"], int)

    table = cli("read", "-c", str(config), "adc", "battery", timeout=30)
    assert table.returncode == 0, table.stderr
    assert table.stdout.split("\n")[1].split() == ["battery", "2.56", "V"]


def test_a_bad_file_is_an_error_for_its_point_only(tmp_path: Path, with_plugin: None) -> None:
    config = write_config(tmp_path, adc_device(tmp_path))
    adc = tmp_path / "iio:device0"
    (adc / "in_voltage0_raw").unlink()
    (adc / "in_voltage1_raw").write_text("busy\n")

    result = cli("read", "-c", str(config), "adc", "--json", timeout=30)
    assert result.returncode == 1  # a poll with errors
    poll = json.loads(result.stdout)
    assert poll["values"] == {"temp": pytest.approx(23.125)}
    assert poll["errors"] == [
        f"device adc: {adc / 'in_voltage0_raw'}: no such file",
        f"device adc: {adc / 'in_voltage1_raw'}: not a number: 'busy'",
    ]

    (tmp_path / "temp1_input").unlink()
    nothing = cli("read", "-c", str(config), "adc", timeout=30)
    assert nothing.returncode == 1
    assert nothing.stdout == ""
    assert nothing.stderr.startswith(
        f"edge-agent read: device adc: {adc / 'in_voltage0_raw'}: no such file; "
    )
    assert f"device adc: {tmp_path / 'temp1_input'}: no such file" in nothing.stderr


def test_the_agent_publishes_what_the_plugin_reads(
    tmp_path: Path, broker: Broker, with_plugin: None
) -> None:
    """`edge-agent run` with the plugin's device: its readings arrive at a real broker, read
    fresh at every poll (a value another program writes)."""
    mqtt = f'[mqtt]\nurl = "{broker.url}"\ntopic_prefix = "fields"\nbatch_interval = "100ms"\n'
    config = write_config(tmp_path, adc_device(tmp_path, interval="500ms"), mqtt)
    count = tmp_path / "iio:device0" / "in_voltage1_raw"

    async def body() -> None:
        async with Subscriber(broker.host, broker.port, "fields/gw/#") as sub:
            agent = AgentProcess(config)
            agent.start()
            try:
                first = (await sub.wait_samples(1, "adc"))[0]
                assert first["values"] == {
                    "battery": pytest.approx(2.56),
                    "count": 17,
                    "temp": pytest.approx(23.125),
                }
                count.write_text("18\n")
                await sub.wait_for(
                    lambda _: any(s["values"].get("count") == 18 for s in sub.samples("adc"))
                )
            finally:
                assert agent.stop() == 0, agent.output()
            meta = sub.payloads("meta")[0]
            assert meta["devices"]["adc"]["driver"] == "textfile"

    run(body(), timeout=60)
