"""MQTT's own limits are `edge-agent check` problems: a topic, client id, user name or password
the broker would call malformed (or the client could not encode) never reaches a CONNECT."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from agent.config import load_config
from agent.config.mqtt_limits import MAX_AGENT_ID, MAX_MQTT_BYTES
from agent.errors import ConfigError

#: What ``os.environ`` holds for a variable whose value has the byte 0xff (surrogateescape).
UNDECODABLE = os.fsdecode(b"caf\xff")

CONFIG = """
[agent]
id = "${ID:-gw1}"
data_dir = "data"

[mqtt]
url = "mqtt://127.0.0.1:1883"
topic_prefix = "${PREFIX:-edge}"
client_id = "${CLIENT:-gw1}"
username = "${USER_NAME:-gw}"
password = "${PASSWORD:-pw}"
"""


def problems_at(tmp_path: Path, env: dict[str, str], text: str = CONFIG) -> dict[str, str]:
    """Key path → message of every error, for a config whose values come from ``env``."""
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text))
    try:
        load_config(path, env)
    except ConfigError as exc:
        errors = [p for p in exc.problems if not p.warning]
        assert len({p.path for p in errors}) == len(errors), errors  # one line per key
        return {p.path: p.message for p in errors}
    return {}


def test_the_defaults_and_ordinary_values_pass(tmp_path: Path) -> None:
    assert problems_at(tmp_path, {}) == {}
    unicode = {"ID": "Kläranlage-7", "PREFIX": "werk/süd", "CLIENT": "gw-ü", "USER_NAME": "jörg"}
    assert problems_at(tmp_path, unicode) == {}
    assert problems_at(tmp_path, {"ID": "a" * MAX_AGENT_ID}) == {}


def test_an_agent_id_has_a_sensible_length(tmp_path: Path) -> None:
    for length in (MAX_AGENT_ID + 1, 70_000):  # 70,000 was a struct.error at run
        found = problems_at(tmp_path, {"ID": "a" * length})
        assert found == {
            "agent.id": f"is {length} characters long: at most {MAX_AGENT_ID} (it names this "
            "gateway in every topic and on every dashboard)"
        }


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("ed\x00ge", "a NUL (character 3)"),
        ("ed\x01ge", "the control character U+0001 (character 3)"),
        ("edge\x1f", "the control character U+001F (character 5)"),
        ("e\x7fdge", "the control character U+007F (character 2)"),
        ("e\x85dge", "the control character U+0085 (character 2)"),
        ("e\x9fdge", "the control character U+009F (character 2)"),
        ("e\ufffedge", "the Unicode non-character U+FFFE (character 2)"),
        ("e\ufdd0dge", "the Unicode non-character U+FDD0 (character 2)"),
    ],
)
def test_no_nul_or_control_character_in_topics_client_id_or_user_name(
    tmp_path: Path, value: str, what: str
) -> None:
    env = {"PREFIX": value, "CLIENT": value, "USER_NAME": value}
    assert problems_at(tmp_path, env) == {
        "mqtt.topic_prefix": f"holds {what}, which MQTT brokers refuse in a topic: remove it",
        "mqtt.client_id": f"holds {what}, which MQTT brokers refuse in the client id: remove it",
        "mqtt.username": f"holds {what}, which MQTT brokers refuse in the user name: remove it",
    }


def test_a_nul_written_in_the_file_is_refused_too(tmp_path: Path) -> None:
    text = CONFIG.replace('"${PREFIX:-edge}"', r'"ed\u0000ge"')
    text = text.replace('"${CLIENT:-gw1}"', r'"gw\u0000"')
    assert set(problems_at(tmp_path, {}, text)) == {"mqtt.topic_prefix", "mqtt.client_id"}


def test_an_undecodable_byte_from_the_environment_is_not_utf8(tmp_path: Path) -> None:
    env = {"PREFIX": UNDECODABLE, "CLIENT": UNDECODABLE, "USER_NAME": UNDECODABLE}
    env["PASSWORD"] = UNDECODABLE
    found = problems_at(tmp_path, env)
    for key, used_as in (
        ("mqtt.topic_prefix", "a topic"),
        ("mqtt.client_id", "the client id"),
        ("mqtt.username", "the user name"),
    ):
        assert found.pop(key) == (
            "is not valid UTF-8: character 4 is an undecodable byte (from an environment "
            f"variable?), which MQTT cannot carry in {used_as}; write it in UTF-8"
        )
    assert found.pop("mqtt.password").startswith("is not valid UTF-8")
    assert found == {}
    found = problems_at(tmp_path, {"ID": UNDECODABLE})  # the name rule already refuses it
    assert found["agent.id"] == r'"caf\udcff" is not a valid name: use letters, digits, "_" and "-"'


@pytest.mark.parametrize("prefix", ["$SYS", "$share/group", "$"])
def test_a_prefix_cannot_start_with_a_dollar(tmp_path: Path, prefix: str) -> None:
    found = problems_at(tmp_path, {"PREFIX": prefix})
    assert found == {
        "mqtt.topic_prefix": f'"{prefix}" cannot be a topic prefix: topics that start with "$" '
        'are the broker\'s own ($SYS, $share): write e.g. "edge"'
    }


@pytest.mark.parametrize("prefix", ["a/+/b", "#", "edge/", "site#1"])
def test_a_prefix_holds_no_wildcard_nor_a_trailing_slash(tmp_path: Path, prefix: str) -> None:
    found = problems_at(tmp_path, {"PREFIX": prefix})
    assert found == {
        "mqtt.topic_prefix": f'"{prefix}" cannot be a topic prefix: no "+", "#" or trailing "/"'
    }


def test_the_longest_topic_fits_65535_bytes(tmp_path: Path) -> None:
    agent_id = "g" * MAX_AGENT_ID
    room = MAX_MQTT_BYTES - len(f"/{agent_id}/cmd/reply")
    assert problems_at(tmp_path, {"ID": agent_id, "PREFIX": "p" * room}) == {}
    found = problems_at(tmp_path, {"ID": agent_id, "PREFIX": "p" * (room + 1)})
    assert found == {
        "mqtt.topic_prefix": "makes the topic {topic_prefix}/{agent.id}/cmd/reply 65536 bytes "
        "long: MQTT carries at most 65535; shorten topic_prefix"
    }
    # bytes, not characters: "ü" is two
    found = problems_at(tmp_path, {"ID": agent_id, "PREFIX": "ü" * (room // 2 + 1)})
    assert "mqtt.topic_prefix" in found


def test_client_id_and_user_name_have_a_stated_limit(tmp_path: Path) -> None:
    found = problems_at(tmp_path, {"CLIENT": "c" * 257, "USER_NAME": "u" * 70_000})
    assert found == {
        "mqtt.client_id": "is 257 characters long: at most 256 (a sensible limit, well within "
        "MQTT's)",
        "mqtt.username": "is 70000 characters long: at most 256 (a sensible limit, well within "
        "MQTT's)",
    }
    assert problems_at(tmp_path, {"CLIENT": "c" * 256, "USER_NAME": "u" * 256}) == {}


def test_a_password_fits_65535_bytes_of_utf8(tmp_path: Path) -> None:
    assert problems_at(tmp_path, {"PASSWORD": "p" * MAX_MQTT_BYTES}) == {}
    assert problems_at(tmp_path, {"PASSWORD": "\x00\x01 any byte goes"}) == {}
    found = problems_at(tmp_path, {"PASSWORD": "€" * 21_846})  # 3 bytes each
    assert found == {"mqtt.password": "is 65538 bytes of UTF-8: MQTT carries at most 65535"}


def test_a_password_file_over_65535_bytes(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("p" * (MAX_MQTT_BYTES + 1))
    text = CONFIG.replace('password = "${PASSWORD:-pw}"', f'password_file = "{secret}"')
    assert problems_at(tmp_path, {}, text) == {
        "mqtt.password_file": "is 65536 bytes of UTF-8: MQTT carries at most 65535"
    }


def test_a_unit_is_sent_in_meta_and_must_be_utf8(tmp_path: Path) -> None:
    text = (
        CONFIG
        + """
[[device]]
name = "gateway"
driver = "system"
  [[device.point]]
  name = "load"
  metric = "load1"
  unit = "${UNIT}"
"""
    )
    assert problems_at(tmp_path, {"UNIT": "°C"}, text) == {}
    found = problems_at(tmp_path, {"UNIT": UNDECODABLE}, text)
    assert found == {
        "device.gateway.point.load.unit": "is not valid UTF-8: character 4 is an undecodable "
        "byte (from an environment variable?); write it in UTF-8"
    }
