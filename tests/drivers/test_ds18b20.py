"""The `ds18b20` driver against a directory laid out like the kernel's w1 sysfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.api import local_bus
from agent.config import load_config
from agent.errors import ConfigError, DeviceError
from agent.testkit import run
from drivers.ds18b20.driver import Ds18b20Driver

GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
BAD_CRC = "72 01 4b 46 7f ff 0e 10 57 : crc=58 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
POWER_ON = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n"
ZEROS = "00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n"

CONFIG = """
[agent]
id = "gw"
data_dir = "data"
[[device]]
name = "tank-temps"
driver = "ds18b20"
w1_dir = "{w1}"
  [[device.point]]
  name = "water"
  sensor = "28-0316a2790aff"
  [[device.point]]
  name = "air"
  sensor = "28-000005e2fdc3"
  offset = -0.5
"""


def w1_tree(tmp_path: Path, **probes: str) -> Path:
    root = tmp_path / "w1"
    for sensor, content in probes.items():
        (root / sensor).mkdir(parents=True)
        (root / sensor / "w1_slave").write_text(content)
    return root


def load(tmp_path: Path, w1: Path, text: str = CONFIG):  # type: ignore[no-untyped-def]
    path = tmp_path / "site.toml"
    path.write_text(text.replace("{w1}", str(w1)))
    config, _ = load_config(path, {})
    return config.device("tank-temps")


def test_probes_in_degrees_with_offset(tmp_path: Path) -> None:
    w1 = w1_tree(tmp_path, **{"28-0316a2790aff": GOOD, "28-000005e2fdc3": GOOD})
    device = load(tmp_path, w1)
    poll = run(Ds18b20Driver(local_bus(device)).read(device))
    assert poll.values == {"water": 23.125, "air": 22.625}
    assert poll.errors == ()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (BAD_CRC, "CRC check failed"),
        (POWER_ON, "85.0 °C is the power-on value"),
        (ZEROS, "all-zero data"),
    ],
)
def test_bad_reads_are_errors_not_temperatures(tmp_path: Path, content: str, why: str) -> None:
    w1 = w1_tree(tmp_path, **{"28-0316a2790aff": GOOD, "28-000005e2fdc3": content})
    device = load(tmp_path, w1)
    poll = run(Ds18b20Driver(local_bus(device)).read(device))
    assert poll.values == {"water": 23.125}
    assert poll.errors[0].startswith("device tank-temps: probe 28-000005e2fdc3: ")
    assert why in poll.errors[0]


def test_all_probes_gone_is_a_device_error(tmp_path: Path) -> None:
    device = load(tmp_path, w1_tree(tmp_path))
    with pytest.raises(DeviceError, match=r"not found under .* \(unplugged, or a wrong id\?\)"):
        run(Ds18b20Driver(local_bus(device)).read(device))


def test_a_malformed_id_and_a_missing_one_are_config_problems(tmp_path: Path) -> None:
    text = CONFIG.replace('sensor = "28-0316a2790aff"', 'sensor = "28-XYZ"').replace(
        '  sensor = "28-000005e2fdc3"\n', ""
    )
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, tmp_path, text)
    found = sorted(f"{p.path}: {p.message}" for p in caught.value.problems)
    assert found == [
        "device.tank-temps.point.air.sensor: is required: the probe's 1-Wire id",
        'device.tank-temps.point.water.sensor: "28-xyz" is not a 1-Wire id such as "28-0316a2790aff"',
    ]
