"""Two tables of one name: the later is reported, naming where the first is, and what is wrong
inside either is reported in the same run, at its own lines."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError

HEAD = """\
[agent]
id = "gw1"
data_dir = "data"
"""

BUS = """
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
"""

METER = """
[[device]]
name = "meter"
bus = "plc"
  [[device.point]]
  name = "volts"
  address = 0
"""

#: A second meter with a bad duration and a misspelt point key.
SECOND_METER = """
[[device]]
name = "meter"
bus = "plc"
interval = "10 sec"
  [[device.point]]
  name = "amps"
  address = 2
  sacle = 0.1
"""


def found(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> list[str]:
    """Every problem as ``NAME:LINE: path: message``, NAME relative to ``tmp_path``."""
    for name, content in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(content))
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    return [str(p).replace(f"{tmp_path}/", "") for p in caught.value.problems]


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """The 1-based line of the ``occurrence``-th line that is ``needle`` (stripped)."""
    lines = [n for n, line in enumerate(text.splitlines(), 1) if line.strip() == needle]
    return lines[occurrence - 1]


def test_a_duplicate_device_is_reported_at_the_second_and_its_contents_checked(
    tmp_path: Path,
) -> None:
    text = HEAD + BUS + METER + SECOND_METER
    first, second = line_of(text, "[[device]]"), line_of(text, "[[device]]", 2)
    assert found(tmp_path, text) == [
        f'config.toml:{second}: device.meter: two [[device]] tables are named "meter"; the '
        f"first is at config.toml:{first}: rename or remove one",
        f'config.toml:{second + 3}: device.meter.interval: "10 sec" is not a duration: write '
        'e.g. "250ms", "10s", "5m" or "1h"',
        f"config.toml:{second + 7}: device.meter.point.amps.sacle: unknown key (did you mean "
        '"scale"?)',
    ]


def test_a_duplicate_in_an_included_file_names_the_main_one(tmp_path: Path) -> None:
    text = HEAD + 'include = ["conf.d/*.toml"]\n' + BUS + METER
    listed = found(tmp_path, text, {"conf.d/meter.toml": SECOND_METER})
    assert listed == [
        'conf.d/meter.toml:2: device.meter: two [[device]] tables are named "meter"; the first '
        f"is at config.toml:{line_of(text, '[[device]]')}: rename or remove one",
        'conf.d/meter.toml:5: device.meter.interval: "10 sec" is not a duration: write e.g. '
        '"250ms", "10s", "5m" or "1h"',
        'conf.d/meter.toml:9: device.meter.point.amps.sacle: unknown key (did you mean "scale"?)',
    ]


def test_a_file_matched_twice_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "meter.toml").write_text(METER)
    patterns = 'include = ["conf.d/*.toml", "conf.d/meter.toml", "*.toml"]\n'
    config, _ = load_config(_written(tmp_path, HEAD + patterns + BUS), {})
    assert [d.name for d in config.devices] == ["meter"]


def test_a_duplicate_bus_that_fails_to_load_is_still_reported(tmp_path: Path) -> None:
    text = HEAD + BUS + '\n[[bus]]\nname = "plc"\ntype = "modbus-tcp"\nhots = "x"\n'
    second = line_of(text, "[[bus]]", 2)
    assert found(tmp_path, text) == [
        f'config.toml:{second}: bus.plc: two [[bus]] tables are named "plc"; the first is at '
        f"config.toml:{line_of(text, '[[bus]]')}: rename or remove one",
        f"config.toml:{second}: bus.plc.host: is required",
        f'config.toml:{second + 3}: bus.plc.hots: unknown key (did you mean "host"?)',
    ]


def test_a_duplicate_template_and_its_exponent_check(tmp_path: Path) -> None:
    template = '\n[[template]]\nname = "probe"\n  [[template.point]]\n  name = "m"\n  address = 0\n'
    broken = template + '  scale_exponent = "nope"\n'
    text = HEAD + template + broken
    second = line_of(text, "[[template]]", 2)
    assert found(tmp_path, text) == [
        f'config.toml:{second}: template.probe: two [[template]] tables are named "probe"; the '
        f"first is at config.toml:{line_of(text, '[[template]]')}: rename or "
        "remove one",
        f'config.toml:{second + 5}: template.probe.point.m.scale_exponent: "nope" is not an '
        "int16, uint16 or int32 point of template.probe",
    ]


def test_a_user_template_may_replace_a_built_in_one(tmp_path: Path) -> None:
    own = '\n[[template]]\nname = "eastron-sdm120"\n  [[template.point]]\n  name = "v"\n'
    config, _ = load_config(_written(tmp_path, HEAD + own + "  address = 0\n"), {})
    (template,) = [t for t in config.templates if t.name == "eastron-sdm120"]
    assert [p.name for p in template.points] == ["v"]


def test_a_duplicate_point_names_the_first_even_when_it_has_problems(tmp_path: Path) -> None:
    text = HEAD + BUS + METER + '  [[device.point]]\n  name = "volts"\n  adress = 4\n'
    first, second = line_of(text, "[[device.point]]"), line_of(text, "[[device.point]]", 2)
    assert found(tmp_path, text) == [
        f"config.toml:{second + 1}: device.meter.point.volts.name: another point of device.meter "
        f'is named "volts", at config.toml:{first}: rename or remove one',
        f"config.toml:{second}: device.meter.point.volts.address: is required",
        f"config.toml:{second + 2}: device.meter.point.volts.adress: unknown key (did you mean "
        '"address"?)',
    ]


def test_a_drivers_findings_point_at_the_table_they_are_about(tmp_path: Path) -> None:
    """A driver checks devices by name (here: gpio-counter's pin): each of two devices named
    alike is checked, and what is wrong with the second is said at the second."""
    counter = '\n[[device]]\nname = "{name}"\ndriver = "gpio-counter"\n{pin}'
    counter += '  [[device.point]]\n  name = "n"\n  measure = "total"\n'
    text = (
        HEAD
        + counter.format(name="c", pin="pin = 17\n")
        + counter.format(name="other", pin="pin = 27\n")
        + counter.format(name="c", pin="")
    )
    second = line_of(text, 'name = "c"', 2) - 1
    listed = found(tmp_path, text)
    assert listed == [
        f'config.toml:{second}: device.c: two [[device]] tables are named "c"; the first is at '
        f"config.toml:{line_of(text, '[[device]]')}: rename or remove one",
        f'config.toml:{second}: device.c.pin: is required: the GPIO, e.g. 17 or "GPIO17"',
    ]


def _written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path
