"""Configuration: what is accepted, and every kind of mistake with its message and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent.api.keys import parse_duration, parse_size
from agent.config import load_config
from agent.errors import ConfigError, Problem
from drivers.modbus.schema import ModbusPoint

BASE = """
[agent]
id = "gw1"
data_dir = "data"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
"""

DEVICE = """
[[device]]
name = "meter"
bus = "plc"
interval = "10s"
  [[device.point]]
  name = "volts"
  table = "input"
  address = 0
  type = "float32"
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[Problem]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env or {})
    return caught.value.problems


def only_error(tmp_path: Path, text: str) -> str:
    errors = [str(p) for p in problems(tmp_path, text) if not p.warning]
    assert len(errors) == 1, errors
    return errors[0]


def test_valid_config_becomes_frozen_typed_objects(tmp_path: Path) -> None:
    config, warnings = load_config(write(tmp_path, BASE + DEVICE), {})
    assert warnings == []
    device = config.device("meter")
    assert device.interval == 10.0
    assert device.driver == "modbus"
    point = device.points[0]
    assert isinstance(point, ModbusPoint)  # what the modbus driver makes of its points
    assert point.type == "float32"
    assert config.agent.data_dir == tmp_path / "data"
    assert config.mqtt.host == "127.0.0.1"
    assert config.mqtt.port == 1883
    assert config.mqtt.client_id == "gw1"
    with pytest.raises(AttributeError):
        device.interval = 5.0  # type: ignore[misc]


def test_demo_config_is_valid() -> None:
    config, warnings = load_config(Path(__file__).parents[2] / "config.toml", {})
    assert config.devices
    assert not warnings


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("10s", 10), ("5m", 300), ("1h", 3600), ("1h30m", 5400), (2, 2.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("200MB", 200_000_000), ("1GiB", 2**30), ("512kB", 512_000), (4096, 4096)]
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_bad_duration_names_the_key_and_the_fix(tmp_path: Path) -> None:
    text = BASE + DEVICE.replace('interval = "10s"', 'interval = "10 sec"')
    assert only_error(tmp_path, text) == (
        f'{tmp_path}/config.toml:17: device.meter.interval: "10 sec" is not a duration: '
        'write e.g. "250ms", "10s", "5m" or "1h"'
    )


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    text = BASE + DEVICE.replace('type = "float32"', 'type = "float32"\n  scael = 2')
    assert only_error(tmp_path, text).endswith(
        ':23: device.meter.point.volts.scael: unknown key (did you mean "scale"?)'
    )


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    assert 'mqqt: unknown key (did you mean "mqtt"?)' in only_error(tmp_path, BASE + "[mqqt]\n")


def test_environment_substitution(tmp_path: Path) -> None:
    text = BASE.replace('id = "gw1"', 'id = "${GW_ID}"') + DEVICE
    config, _ = load_config(write(tmp_path, text), {"GW_ID": "farm-7"})
    assert config.agent.id == "farm-7"
    message = [str(p) for p in problems(tmp_path, text, {})]
    assert message == [
        f"{tmp_path}/config.toml:3: agent.id: environment variable GW_ID is not set (used as ${{GW_ID}})"
    ]


def test_unknown_bus_with_suggestion(tmp_path: Path) -> None:
    text = BASE + DEVICE.replace('bus = "plc"', 'bus = "plcc"')
    assert only_error(tmp_path, text).endswith(
        ':16: device.meter.bus: no bus named "plcc" (did you mean "plc"?)'
    )


def test_duplicate_names(tmp_path: Path) -> None:
    found = [str(p) for p in problems(tmp_path, BASE + DEVICE + DEVICE)]
    assert any('device.meter: two [[device]] tables are named "meter"' in m for m in found), found
    point_twice = DEVICE + '  [[device.point]]\n  name = "volts"\n  address = 4\n'
    found = [str(p) for p in problems(tmp_path, BASE + point_twice)]
    assert any(
        ':24: device.meter.point.volts.name: another point of device.meter is named "volts"' in m
        for m in found
    ), found


def test_point_past_the_end_of_the_address_space(tmp_path: Path) -> None:
    text = BASE + DEVICE.replace("address = 0", "address = 65535")
    assert only_error(tmp_path, text).endswith(
        ":21: device.meter.point.volts.address: float32 at 65535 needs 2 registers and runs past the end "
        "of the address space (last would be 65536, the highest is 65535)"
    )


def test_type_that_does_not_fit_its_table(tmp_path: Path) -> None:
    text = BASE + DEVICE.replace('table = "input"', 'table = "coil"')
    assert only_error(tmp_path, text).endswith(
        ":22: device.meter.point.volts.type: a coil holds single bits: its type must be bool, not float32"
    )


def test_writable_read_only_table(tmp_path: Path) -> None:
    text = BASE + DEVICE.replace('type = "float32"', 'type = "float32"\n  writable = true')
    assert only_error(tmp_path, text).endswith(
        "device.meter.point.volts.writable: input registers are read-only"
    )


def test_string_needs_a_length(tmp_path: Path) -> None:
    text = BASE + DEVICE.replace('type = "float32"', 'type = "string"')
    assert only_error(tmp_path, text).endswith(
        "device.meter.point.volts.length: is required for a string point (its number of characters)"
    )


def test_timeout_longer_than_interval_is_a_warning_not_an_error(tmp_path: Path) -> None:
    text = BASE.replace(
        'host = "127.0.0.1"', 'host = "127.0.0.1"\ntimeout = "5s"'
    ) + DEVICE.replace('"10s"', '"2s"')
    config, warnings = load_config(write(tmp_path, text), {})
    assert config.devices
    assert [str(w) for w in warnings] == [
        f"{tmp_path}/config.toml:18: device.meter.interval: warning: bus plc timeout (5s) is longer "
        "than the interval (2s): a silent device will make polls overrun"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = BASE.replace(
        'url = "mqtt://127.0.0.1:1883"', 'url = "http://x"\nqos = 2'
    ) + DEVICE.replace('table = "input"', 'table = "inputs"')
    found = [f"{p.line}: {p.path}" for p in problems(tmp_path, text)]
    assert found == ["7: mqtt.url", "8: mqtt.qos", "21: device.meter.point.volts.table"]


def test_template_supplies_points(tmp_path: Path) -> None:
    text = (
        BASE
        + """
[[device]]
name = "soil"
bus = "plc"
template = "probe"

[[template]]
name = "probe"
  [[template.point]]
  name = "moisture"
  address = 0
"""
    )
    config, _ = load_config(write(tmp_path, text), {})
    assert [p.name for p in config.device("soil").points] == ["moisture"]
    wrong = text.replace('template = "probe"', 'template = "prob"')
    assert only_error(tmp_path, wrong).endswith(
        ':17: device.soil.template: no template named "prob" (did you mean "probe"?)'
    )


def test_included_files_add_devices(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    write(tmp_path, DEVICE, "conf.d/meter.toml")
    text = BASE.replace('data_dir = "data"', 'data_dir = "data"\ninclude = ["conf.d/*.toml"]')
    config, _ = load_config(write(tmp_path, text), {})
    assert [d.name for d in config.devices] == ["meter"]
    write(tmp_path, DEVICE.replace('bus = "plc"', 'bus = "nope"'), "conf.d/meter.toml")
    assert f"{tmp_path}/conf.d/meter.toml:4: device.meter.bus: no bus named" in only_error(
        tmp_path, text
    )


def test_toml_syntax_error_has_a_line(tmp_path: Path) -> None:
    assert only_error(tmp_path, BASE + "[[device]\n").startswith(
        f"{tmp_path}/config.toml:13: (syntax): invalid TOML"
    )


def test_password_is_never_printed(tmp_path: Path) -> None:
    text = (
        BASE.replace(
            'url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://127.0.0.1"\npassword = "s3cret"'
        )
        + DEVICE
    )
    config, _ = load_config(write(tmp_path, text), {})
    assert config.mqtt.password == "s3cret"
    assert "s3cret" not in repr(config)


def test_a_missing_data_dir_is_no_config_problem(tmp_path: Path) -> None:
    """The agent makes it when it starts (and says so if it cannot): not check's business."""
    config, _ = load_config(write(tmp_path, BASE.replace('"data"', '"not/yet/made"')), {})
    assert config.agent.data_dir == tmp_path / "not/yet/made"


def test_an_include_pattern_pathlib_refuses_is_a_problem(tmp_path: Path) -> None:
    text = BASE.replace('data_dir = "data"', 'data_dir = "data"\ninclude = ["/etc/*.toml", ""]')
    found = [str(p) for p in problems(tmp_path, text)]
    assert found == [
        f'{tmp_path}/config.toml:5: agent.include: "/etc/*.toml": is absolute: write the '
        "pattern relative to the config file's directory",
        f'{tmp_path}/config.toml:5: agent.include: "": an empty pattern matches nothing: write '
        'e.g. "conf.d/*.toml"',
    ]


def test_the_link_keys_default_to_mqtt_5_a_short_window_and_a_kept_session(tmp_path: Path) -> None:
    config, _ = load_config(write(tmp_path, BASE + DEVICE), {})
    mqtt = config.mqtt
    assert (mqtt.protocol, mqtt.reconnect_window, mqtt.session_expiry) == ("5", 0.5, 300.0)
    assert mqtt.compression == "none"


@pytest.mark.parametrize(
    ("written", "protocol"), [('"3.1.1"', "3.1.1"), ('"5"', "5"), ('"5.0"', "5"), ("5", "5")]
)
def test_the_protocol_may_be_written_as_a_field_user_would(
    tmp_path: Path, written: str, protocol: str
) -> None:
    text = BASE.replace("[mqtt]", f"[mqtt]\nprotocol = {written}") + DEVICE
    config, _ = load_config(write(tmp_path, text), {})
    assert config.mqtt.protocol == protocol


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('protocol = "3.1"', 'mqtt.protocol: "3.1" is not "5" or "3.1.1"'),
        ("protocol = 4", 'mqtt.protocol: "4" is not "5" or "3.1.1"'),
        ('reconnect_window = "2h"', "mqtt.reconnect_window: must be at most 3600s"),
        ('reconnect_window = "soon"', "mqtt.reconnect_window:"),
        ('session_expiry = "2000000h"', "mqtt.session_expiry: must be at most 4294967294s"),
        ('compression = "gzip"', 'mqtt.compression: "gzip" is not one of none, zlib'),
    ],
)
def test_a_bad_link_key_is_one_line_naming_it(tmp_path: Path, line: str, message: str) -> None:
    text = BASE.replace("[mqtt]", f"[mqtt]\n{line}") + DEVICE
    assert message in only_error(tmp_path, text)


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".example"])
def test_a_broker_host_the_resolver_cannot_take_is_refused_by_check(
    tmp_path: Path, host: str
) -> None:
    text = BASE.replace("mqtt://127.0.0.1:1883", f"mqtt://{host}:1883") + DEVICE
    assert "has a host name that is not valid" in only_error(tmp_path, text)


def test_remote_is_off_by_default_and_its_limits_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    base = '[agent]\nid = "gw"\ndata_dir = "data"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
    path.write_text(base)
    config, _ = load_config(path, environ={})
    assert not config.remote.config
    assert config.remote.diagnostics == ()
    path.write_text(base + '[remote]\nconfig = true\nconfirm_within = "5s"\nlogs = true\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    said = str(refused.value)
    assert "remote.confirm_within: 5s: write between 10s" in said
    assert 'remote.logs: unknown key (did you mean "log"?)' in said
    path.write_text(base + '[remote]\nconfig = true\nconfirm_within = "30s"\nlog = true\n')
    config, _ = load_config(path, environ={})
    assert (config.remote.confirm_within, config.remote.diagnostics) == (30.0, ("log",))


def test_sparkplug_needs_a_group_and_names_its_node_after_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    base = '[agent]\nid = "gw-7"\ndata_dir = "data"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
    path.write_text(base + "[sparkplug]\nenabled = true\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    assert "sparkplug.group_id: is required with [sparkplug] enabled" in str(refused.value)
    path.write_text(base + '[sparkplug]\nenabled = true\ngroup_id = "a/b"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    assert "sparkplug.group_id:" in str(refused.value)
    path.write_text(base + '[sparkplug]\nenabled = true\ngroup_id = "farm"\n')
    config, warnings = load_config(path, environ={})
    assert (config.sparkplug.edge_node_id, config.sparkplug.primary_host_id) == ("gw-7", None)
    assert warnings == []
    path.write_text(base + '[sparkplug]\nenabled = true\ngroup_id = "farm"\n[remote]\nlog = true\n')
    _, warnings = load_config(path, environ={})
    assert [w.path for w in warnings] == ["remote"]
