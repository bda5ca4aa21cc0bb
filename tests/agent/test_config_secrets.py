"""No message ever holds a secret: a canary password, planted everywhere a secret can live and
surrounded by every kind of mistake, appears in no output of `edge-agent check` or `run`."""

from __future__ import annotations

import os
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.config import load_config
from agent.config.units import substitute_env
from agent.errors import ConfigError
from agent.testkit.broker import Broker
from agent.testkit.process import AgentProcess, cli

#: What must never be printed; every planted secret starts with it.
CANARY = "S3cr3t-canary"
SECRET = f"{CANARY}-7f3a"
#: A secret holding the characters that end a URL's user info early.
URL_SECRET = f"{CANARY}/with:colon@and-at"
#: ``os.environ``'s form of a variable whose bytes are the secret and 0xff (surrogateescape).
UNDECODABLE_SECRET = SECRET + os.fsdecode(b"\xff")


@dataclass(frozen=True)
class Case:
    """One config around a planted secret; ``key``: where check must say something is wrong."""

    mqtt: str
    key: str
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    agent: str = ""


CASES = {
    "password, bad port": Case(
        f'url = "mqtt://127.0.0.1:notaport"\nusername = "gw"\npassword = "{SECRET}"',
        "mqtt.url",
    ),
    "URL user info, bad port": Case(
        f'url = "mqtt://gwuser:{SECRET}@127.0.0.1:notaport"', "mqtt.url"
    ),
    "URL user info, bad scheme": Case(f'url = "http://gwuser:{SECRET}@127.0.0.1"', "mqtt.url"),
    "URL user info, a path": Case(f'url = "mqtt://gw:{SECRET}@127.0.0.1/x?y"', "mqtt.url"),
    "URL user info holding / : @": Case(
        f'url = "mqtt://gw:{URL_SECRET}@127.0.0.1:1883"', "mqtt.url"
    ),
    "URL user info, no scheme": Case(f'url = "gw:{SECRET}@127.0.0.1:1883"', "mqtt.url"),
    "URL user info, invalid": Case(f'url = "mqtt://gw:{SECRET}@[::1"', "mqtt.url"),
    "password holding ${, unset": Case(
        f'username = "gw"\npassword = "ab${{{SECRET}}}"', "mqtt.password"
    ),
    "password holding ${:-, the rest": Case(
        f'username = "gw"\npassword = "${{{SECRET}:-x}}${{{SECRET}}}"', "mqtt.password"
    ),
    "variable holding the password, bad port": Case(
        'url = "mqtt://127.0.0.1:99999"\nusername = "gw"\npassword = "${MQTT_PW}"',
        "mqtt.url",
        env={"MQTT_PW": SECRET},
    ),
    "variable holding an undecodable password": Case(
        'username = "gw"\npassword = "${MQTT_PW}"',
        "mqtt.password",
        env={"MQTT_PW": UNDECODABLE_SECRET},
    ),
    "URL user info holding ${, unset": Case(
        f'url = "mqtt://gw:ab${{{SECRET}}}@127.0.0.1"', "mqtt.url"
    ),
    "variable holding the password in the URL": Case(
        'url = "mqtt://gw:${MQTT_PW}@127.0.0.1:1883"', "mqtt.url", env={"MQTT_PW": SECRET}
    ),
    "a variable's value that another key cannot take": Case(
        'keepalive = "${MQTT_PW}"', "mqtt.keepalive", env={"MQTT_PW": SECRET}
    ),
    "password too long": Case(f'username = "gw"\npassword = "{SECRET * 4000}"', "mqtt.password"),
    "password not a string": Case(f'username = "gw"\npassword = ["{SECRET}"]', "mqtt.password"),
    "password under a misspelt key": Case(
        f'username = "gw"\npasswrod = "{SECRET}"', "mqtt.passwrod"
    ),
    "password unquoted": Case(f"username = 'gw'\npassword = {SECRET}", "(syntax)"),
    "password unterminated": Case(f'username = "gw"\npassword = "{SECRET}', "(syntax)"),
    "password file not UTF-8": Case(
        'username = "gw"\npassword_file = "secret"',
        "mqtt.password_file",
        files={"secret": SECRET.encode() + b"\xff\xfe\n"},
    ),
    "password file empty, password in the URL": Case(
        f'url = "mqtt://gw:{SECRET}@127.0.0.1"\nusername = "gw"\npassword_file = "secret"',
        "mqtt.password_file",
        files={"secret": b"\n"},
    ),
    "password file missing, and a password": Case(
        f'username = "gw"\npassword = "{SECRET}"\npassword_file = "missing"',
        "mqtt.password_file",
    ),
    "password file a directory": Case('username = "gw"\npassword_file = "."', "mqtt.password_file"),
    "password file too long": Case(
        'username = "gw"\npassword_file = "secret"',
        "mqtt.password_file",
        files={"secret": SECRET.encode() * 4000},
    ),
    "password without username": Case(f'password = "{SECRET}"', "mqtt.password"),
    "password file without username": Case(
        'password_file = "secret"', "mqtt.password_file", files={"secret": SECRET.encode()}
    ),
    "password over mqtt:// to another host": Case(
        f'url = "mqtt://broker.example.net"\nusername = "gw"\npassword = "{SECRET}"',
        "mqtt.password",
    ),
    "password file over mqtt:// to another host": Case(
        'url = "mqtt://broker.example.net"\nusername = "gw"\npassword_file = "secret"',
        "mqtt.password_file",
        files={"secret": SECRET.encode()},
    ),
    "password in an included file": Case(
        "",
        "mqtt",
        files={"more.toml": f'[mqtt]\npassword = "{SECRET}"\n'.encode()},
        agent='include = ["more.toml"]',
    ),
}


def write_case(directory: Path, case: Case, broken: bool) -> Path:
    """The case's config in ``directory``; ``broken`` adds an error elsewhere, so that `run`
    exits at once even when the case alone is only a warning."""
    directory.mkdir()
    for name, content in case.files.items():
        (directory / name).write_bytes(content)
    level = "loud" if broken else "info"
    text = f'[agent]\nid = "gw"\ndata_dir = "data"\nlog_level = "{level}"\n{case.agent}\n'
    path = directory / "config.toml"
    path.write_text(text + f"[mqtt]\n{case.mqtt}\n", encoding="utf-8")
    return path


def failures(tmp_path: Path, name: str, case: Case) -> list[str]:
    """What is wrong with what `check` prints for the case, and `run` for it made invalid."""
    slug = "".join(c if c.isalnum() else "-" for c in name)
    config = write_case(tmp_path / slug, case, broken=False)
    checked = cli("check", "-c", str(config), env=case.env, timeout=30)
    broken = write_case(tmp_path / f"{slug}-broken", case, broken=True)
    ran = cli("run", "-c", str(broken), env=case.env, timeout=30)
    said = {"check": checked.stdout + checked.stderr, "run": ran.stdout + ran.stderr}
    wrong = [
        f"{name}: `{command}` shows the secret" for command, out in said.items() if CANARY in out
    ]
    wrong += [
        f"{name}: `{command}` traceback" for command, out in said.items() if "Traceback" in out
    ]
    if f": {case.key}:" not in checked.stderr:
        wrong.append(f"{name}: check says nothing at {case.key}:\n{checked.stderr}")
    if ran.returncode != 2 or "invalid configuration" not in ran.stderr:
        wrong.append(f"{name}: run did not refuse the config ({ran.returncode}):\n{ran.stderr}")
    return wrong


def test_no_output_of_check_or_run_holds_the_secret(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = pool.map(lambda item: failures(tmp_path, *item), CASES.items())
        assert [failure for listed in found for failure in listed] == []


def test_a_running_agent_refused_by_the_broker_does_not_log_the_password(
    tmp_path: Path,
) -> None:
    broker = Broker(tmp_path / "broker", users={"gw": "the-right-one"})
    broker.workdir.mkdir()
    broker.start()
    try:
        (tmp_path / "secret").write_text(SECRET)
        config = tmp_path / "agent.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [agent]
                id = "gw"
                data_dir = "data"
                [mqtt]
                url = "{broker.secure_url}"
                username = "gw"
                password_file = "secret"
                reconnect_max = "1s"
                """
            )
        )
        agent = AgentProcess(config)
        agent.start()
        try:
            agent.wait_notified("READY=1")
            deadline = time.monotonic() + 15
            while "refused" not in agent.output() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            agent.stop()
        assert "refused" in agent.output()
        assert CANARY not in agent.output()
    finally:
        broker.stop()


def test_a_password_file_that_is_not_utf8_is_one_line_and_exit_2(tmp_path: Path) -> None:
    case = CASES["password file not UTF-8"]
    config = write_case(tmp_path / "case", case, broken=False)
    for command in ("check", "run"):
        result = cli(command, "-c", str(config), timeout=30)
        assert result.returncode == 2, result.stderr
        problems = [line for line in result.stderr.splitlines() if ": mqtt." in line]
        assert problems == [
            f"{config}:8: mqtt.password_file: secret is not UTF-8 text (its content is not "
            "shown): write the password in UTF-8"
        ]


def test_a_url_with_user_info_says_so_and_what_else_is_wrong(tmp_path: Path) -> None:
    config = write_case(tmp_path / "case", CASES["URL user info, bad port"], broken=False)
    with pytest.raises(ConfigError) as caught:
        load_config(config, {})
    assert [f"{p.path}: {p.message}" for p in caught.value.problems] == [
        "mqtt.url: holds a user name or password: put them in [mqtt] username and "
        "password/password_file instead",
        "mqtt.url: the URL (not shown: it holds a password) has a port that is not a number: "
        'write e.g. "mqtts://broker.example.net:8883"',
    ]


def test_a_url_without_user_info_is_shown(tmp_path: Path) -> None:
    case = Case('url = "mqtt://127.0.0.1:notaport"', "mqtt.url")
    config = write_case(tmp_path / "case", case, broken=False)
    with pytest.raises(ConfigError) as caught:
        load_config(config, {})
    assert [p.message for p in caught.value.problems] == [
        '"mqtt://127.0.0.1:notaport" has a port that is not a number: '
        'write e.g. "mqtts://broker.example.net:8883"'
    ]


def test_an_unset_variable_in_a_password_is_not_named(tmp_path: Path) -> None:
    config = write_case(tmp_path / "case", CASES["password holding ${, unset"], broken=False)
    with pytest.raises(ConfigError) as caught:
        load_config(config, {})
    assert [str(p) for p in caught.value.problems] == [
        f"{config}:8: mqtt.password: names an environment variable (${{…}}) that is not set; "
        'not shown, as the text is secret: set the variable, or write a literal "${" as "$${"'
    ]


def test_double_dollar_writes_a_literal_dollar_brace(tmp_path: Path) -> None:
    assert substitute_env("ab$${cd}", {}) == "ab${cd}"
    assert substitute_env("$${X}${X}$$", {"X": "1"}) == "${X}1$$"
    assert substitute_env("$$", {}) == "$$"  # only "$${" is an escape
    case = Case('username = "gw"\npassword = "ab$${xyz}$${"', "")
    config = write_case(tmp_path / "case", case, broken=False)
    assert load_config(config, {})[0].mqtt.password == "ab${xyz}${"
    case = Case('username = "gw"\npassword_file = "secret"', "", files={"secret": b"ab$${x}"})
    config = write_case(tmp_path / "file", case, broken=False)
    assert load_config(config, {})[0].mqtt.password == "ab$${x}"  # a file's text is as written
