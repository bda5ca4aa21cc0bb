"""The pieces of a configuration push: the transaction a ``kill -9`` cannot split, what a push
may name, what is redacted, the overlay ``check`` reads a push through, and the hash."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.config import Config, load_config
from agent.config.push import (
    CONFIRMING,
    MAX_STARTS,
    Journal,
    config_hash,
    file_problem,
    finish_interrupted,
    journal_path,
    read_journal,
    redacted,
    secret_values,
)
from agent.config.secrets import REDACTED, known_secrets, scrubbed
from agent.config.source import glob_match
from agent.errors import ConfigError
from agent.testkit import until
from agent.uplink.remote import PushRefused, parse_push

FILES = 40
MINIMAL = '[agent]\nid = "gw"\ndata_dir = "data"\n'

# The child writes a push of FILES files (the agent's own code path) over and over, each round
# from one whole set to the other; the test kills it at a random moment.
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.config.push import Journal, apply_journal, remove_journal

    config, files = Path(sys.argv[1]), int(sys.argv[2])
    sets = [{f"conf.d/{i}.toml": f"# {tag} {i}\\n" + "x" * 4000 for i in range(files)}
            for tag in ("old", "new")]
    sets[0]["site.toml"], sets[1]["site.toml"] = "# old\\n", "# new\\n"
    round = 0
    print("writing", flush=True)
    while True:
        new, old = sets[round % 2], sets[(round + 1) % 2]
        apply_journal(config, Journal(round, "applying", dict(new), dict(old), "a", "b"))
        remove_journal(config)
        round += 1
    """
)


def _tags(folder: Path) -> set[str]:
    texts = [(folder / "site.toml").read_text()]
    texts += [(folder / "conf.d" / f"{i}.toml").read_text() for i in range(FILES)]
    return {text.split()[1] for text in texts}


@pytest.mark.parametrize("seed", range(12))
def test_a_kill_9_while_writing_leaves_all_old_or_all_new_once_finished(
    tmp_path: Path, seed: int
) -> None:
    config = tmp_path / "site.toml"
    (tmp_path / "conf.d").mkdir()
    config.write_text("# old\n")
    for i in range(FILES):
        (tmp_path / "conf.d" / f"{i}.toml").write_text(f"# old {i}\n")
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config), str(FILES)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"writing\n"  # started: now a random moment in it
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=random.Random(seed).uniform(0.01, 0.5))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    said = finish_interrupted(config)  # what `edge-agent run` does before reading the config
    assert len(_tags(tmp_path)) == 1, (said, sorted(_tags(tmp_path)))
    if said is not None:
        assert read_journal(config) is not None
        assert read_journal(config).phase == CONFIRMING  # type: ignore[union-attr]


def test_a_damaged_journal_is_said_not_guessed(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text("")
    journal_path(config).write_text('{"version": 1, "id": 1}')
    with pytest.raises(ValueError, match="not the journal of a pushed configuration"):
        finish_interrupted(config)


def test_a_journal_names_only_what_it_holds(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    journal = Journal("p", "confirming", {"site.toml": "a"}, {"site.toml": None}, "h1", "h2")
    journal_path(config).write_text(json.dumps(journal.to_json()))
    assert read_journal(config) == journal
    assert finish_interrupted(config) is None  # confirming: nothing to finish before reading


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("conf.d/pumps.toml", None),
        ("a.toml", None),
        ("../evil.toml", "below the configuration's folder"),
        ("conf.d/../../x.toml", "below the configuration's folder"),
        ("/etc/passwd.toml", "relative path"),
        (".hidden.toml", "below the configuration's folder"),
        ("conf.d//x.toml", "below the configuration's folder"),
        ("x.txt", ".toml file"),
        ("a\\b.toml", "relative path"),
        ("", "relative path"),
        ("nul\0.toml", "relative path"),
    ],
)
def test_what_a_pushed_file_may_be_called(name: str, problem: str | None) -> None:
    found = file_problem(name)
    assert found is None if problem is None else problem in str(found)


@pytest.mark.parametrize(
    ("name", "pattern", "matches"),
    [
        ("a.toml", "*.toml", True),
        ("conf.d/a.toml", "*.toml", False),
        ("conf.d/a.toml", "conf.d/*.toml", True),
        ("conf.d/x/a.toml", "conf.d/*.toml", False),
        ("conf.d/x/a.toml", "**/*.toml", True),
        ("a.toml", "**/*.toml", True),
        ("conf.d/a.toml", "conf.d/?.toml", True),
        ("conf.d/ab.toml", "conf.d/?.toml", False),
        (".site.toml.push.json", "*", False),  # never a hidden file: the push's own journal
        ("conf.d/.pumps.toml", "conf.d/*.toml", False),
    ],
)
def test_includes_match_pushed_names_as_they_match_files(
    tmp_path: Path, name: str, pattern: str, matches: bool
) -> None:
    assert glob_match(name, pattern) is matches
    main = MINIMAL.replace("[agent]", f"[agent]\ninclude = [{pattern!r}]")
    pushed = dict(load_config(tmp_path / "site.toml", texts={"site.toml": main, name: ""})[0].files)
    assert (name in pushed) is matches  # a push's includes
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("")
    (tmp_path / "site.toml").write_text(main)
    included = dict(load_config(tmp_path / "site.toml", environ={})[0].files)
    assert (name in included) is matches  # what the disk's includes take, too


def test_a_push_is_checked_where_it_will_be_written_not_where_it_is_read(
    tmp_path: Path,
) -> None:
    (tmp_path / "password").write_text("pw\n")
    config = tmp_path / "site.toml"
    main = textwrap.dedent(
        """
        [agent]
        id = "gw"
        data_dir = "data"
        include = ["conf.d/*.toml"]
        [mqtt]
        url = "mqtt://127.0.0.1:1"
        username = "u"
        password_file = "password"
        """
    )
    device = '[[device]]\nname = "d"\ndriver = "system"\n  [[device.point]]\n  name = "uptime"\n'
    texts = {"site.toml": main, "conf.d/d.toml": device}
    loaded, _ = load_config(config, environ={}, texts=texts)
    assert [d.name for d in loaded.devices] == ["d"]
    assert loaded.mqtt.password == "pw"  # the password file beside where it will be
    assert dict(loaded.files) == texts
    assert not config.exists()  # nothing written
    with pytest.raises(ConfigError) as refused:
        load_config(config, environ={}, texts={"site.toml": main + "[[device]]\n"})
    assert str(config) in str(refused.value)


def test_redaction_hides_secret_values_and_keeps_their_files() -> None:
    text = textwrap.dedent(
        """\
        password = "p@ss\\"word"
        mqtt = {password = 'inline1', token = bare-token}
        password_file = "/etc/edge-agent/mqtt-password"
        api_secret = "s3cr3t"  # a comment
        username = "${USER_NAME}"
        """
    )
    shown = redacted(text)
    assert 'password = "<redacted>"' in shown
    assert "inline1" not in shown
    assert "bare-token" not in shown
    assert "s3cr3t" not in shown
    assert "# a comment" in shown
    assert "/etc/edge-agent/mqtt-password" in shown
    assert "${USER_NAME}" in shown
    assert secret_values(text) == ['p@ss"word', "inline1", "bare-token", "s3cr3t"]


def test_every_known_secret_is_scrubbed_wherever_it_is(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    config_path.write_text(
        '[agent]\nid = "gw"\ndata_dir = "data"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
        'username = "${WHO}"\npassword = "hunter2-long"\n'
    )
    config, _ = load_config(config_path, environ={"WHO": "the-user-is-secret"})
    secrets = known_secrets(
        config, ['token = "from-a-push"'], environ={"WHO": "the-user-is-secret"}
    )
    message = {
        "a": ["x hunter2-long y", {"b": "the-user-is-secret"}],
        "c": "from-a-push",
        "short": 'say "hunter2-long"',
    }
    clean = scrubbed(message, secrets)
    assert clean == {
        "a": [f"x {REDACTED} y", {"b": REDACTED}],
        "c": REDACTED,
        "short": f'say "{REDACTED}"',
    }


def test_the_hash_changes_with_any_file_and_not_with_their_order() -> None:
    a = [("site.toml", "x"), ("conf.d/a.toml", "y")]
    assert config_hash(a) == config_hash(list(reversed(a)))
    assert config_hash(a) != config_hash([("site.toml", "x"), ("conf.d/a.toml", "y ")])
    assert config_hash(a) != config_hash([("site.toml", "x"), ("conf.d/b.toml", "y")])
    assert config_hash([("ab", "c")]) != config_hash([("a", "bc")])
    assert config_hash(a).startswith("sha256:")


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json", "not JSON"),
        (b'{"ts": 1, "config": "x"}', 'usable "id"'),
        (b'{"id": "p", "config": "x"}', '"ts"'),
        (b'{"id": "p", "ts": true, "config": "x"}', '"ts"'),
        (b'{"id": "p", "ts": 1, "config": ""}', '"config"'),
        (b'{"id": "p", "ts": 1, "config": "x", "ttl": 0}', '"ttl"'),
        (b'{"id": "p", "ts": 1, "config": "x", "ttl": "1h"}', '"ttl"'),
        (b'{"id": "p", "ts": 1, "config": "x", "files": ["a"]}', '"files"'),
        (b'{"id": "p", "ts": 1, "config": "x", "files": {"a.toml": 1}}', '"files"'),
        (b'{"id": "p", "ts": 1, "config": "x", "remote_off": "yes"}', '"remote_off"'),
        (b'{"id": "p", "ts": 1, "config": "x", "surprise": 1}', "unknown key"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_a_malformed_push_is_refused_saying_what(payload: bytes, why: str) -> None:
    with pytest.raises(PushRefused, match=why.replace('"', ".").replace("(", ".")):
        parse_push(payload, 3600)


def test_a_push_takes_its_own_ttl_else_the_configured_one() -> None:
    base = {"id": 7, "ts": 5, "config": "x"}
    assert parse_push(json.dumps(base).encode(), 3600).ttl == 3600
    assert parse_push(json.dumps({**base, "ttl": 90}).encode(), 3600).ttl == 90
    push = parse_push(json.dumps({**base, "files": {"c/a.toml": "y"}}).encode(), 1)
    assert push.texts("site.toml") == {"site.toml": "x", "c/a.toml": "y"}
    with pytest.raises(PushRefused, match="is the main file"):
        parse_push(json.dumps({**base, "files": {"site.toml": "y"}}).encode(), 1).texts("site.toml")


def test_an_agent_that_keeps_starting_with_a_push_unconfirmed_rolls_it_back(
    tmp_path: Path,
) -> None:
    """No crash loop: a push the agent dies with (systemd restarts it) is confirmed within
    its window or rolled back by the ``MAX_STARTS``-th start after it, before the config is
    read, whatever makes the agent die."""
    config = tmp_path / "site.toml"
    config.write_text("# new\n")
    journal = Journal("p", CONFIRMING, {"site.toml": "# new\n"}, {"site.toml": "# old\n"}, "a", "b")
    journal_path(config).write_text(json.dumps(journal.to_json()))
    said = [finish_interrupted(config) for _ in range(MAX_STARTS + 1)]
    assert said[:MAX_STARTS] == [None] * MAX_STARTS
    assert f"started {MAX_STARTS} times" in str(said[-1])
    assert config.read_text() == "# old\n"
    left = read_journal(config)
    assert left is not None
    assert left.phase == "rolling back"
    assert left.reply is not None
    assert left.reply["state"] == "rolled_back"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('password = """pw1"""\n', "pw1"),
        ("password = '''it's\"pw2'''\n", "it's\"pw2"),
        ('password = """\nline-one\nline-two\n"""\n', "line-one\nline-two\n"),
        ("'password' = 'pw3'\n", "pw3"),
        ('[mqtt]\n"pass" = 1\n"password" = "pw4"\n', "pw4"),
    ],
    ids=["multi-line basic", "multi-line literal", "over lines", "literal key", "quoted key"],
)
def test_redaction_hides_every_way_toml_writes_a_string(text: str, value: str) -> None:
    shown = redacted(text)
    assert "pw" not in shown, shown
    assert "line-" not in shown, shown
    assert "<redacted>" in shown
    assert value in secret_values(text)


def test_a_push_written_but_that_cannot_be_applied_is_rolled_back_at_once(
    tmp_path: Path,
) -> None:
    """Whatever makes applying fail once the files are written (a file changed under it, a
    bug), the push is rolled back then and there, its reply says why, and no journal is left
    to refuse every later push."""
    import asyncio

    from agent.service.app import restart_sections
    from agent.testkit import run
    from agent.uplink.remote import RemotePushes

    config_path = tmp_path / "site.toml"
    main = MINIMAL + '[remote]\nconfig = true\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
    config_path.write_text(main)
    running = [load_config(config_path, environ={})[0]]
    replies: list[dict[str, object]] = []
    applied: list[str] = []

    async def apply(new: Config) -> None:
        applied.append(dict(new.files)["site.toml"])
        if len(applied) == 1:
            raise RuntimeError("the driver could not be loaded")

    async def publish(reply: dict[str, object], topic: str) -> bool:
        replies.append(reply)
        return True

    async def scenario() -> None:
        published = asyncio.Event()
        published.set()
        pushes = RemotePushes(
            lambda: running[0], apply, publish, published, lambda: int(time.time() * 1000),
            restart_sections,
        )  # fmt: skip
        task = asyncio.create_task(pushes.run())
        pushed = main + "# a change\n"
        payload = {"id": "p", "ts": int(time.time() * 1000), "config": pushed}
        await pushes.arrived("config/set", json.dumps(payload).encode())
        await until(lambda: replies, 10, "the reply")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    run(scenario(), timeout=20)
    [reply] = replies
    assert reply["state"] == "rolled_back"
    assert "could not be applied (RuntimeError: the driver could not be loaded)" in str(
        reply["error"]
    )
    assert applied == [main + "# a change\n", main]  # the push, then the previous files
    assert config_path.read_text() == main
    assert not journal_path(config_path).exists()


def test_a_push_never_writes_through_a_symbolic_link_out_of_the_folder(tmp_path: Path) -> None:
    import asyncio

    from agent.service.app import restart_sections
    from agent.testkit import run
    from agent.uplink.remote import RemotePushes

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "conf.d").symlink_to(elsewhere)
    config_path = site / "site.toml"
    main = MINIMAL + '[remote]\nconfig = true\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
    config_path.write_text(main)
    config = load_config(config_path, environ={})[0]
    replies: list[dict[str, object]] = []

    async def publish(reply: dict[str, object], topic: str) -> bool:
        replies.append(reply)
        return True

    async def nothing(new: Config) -> None:
        raise AssertionError("not to be applied")

    async def scenario() -> None:
        published = asyncio.Event()
        published.set()  # online: replies go out
        pushes = RemotePushes(
            lambda: config, nothing, publish, published, lambda: int(time.time() * 1000),
            restart_sections,
        )  # fmt: skip
        task = asyncio.create_task(pushes.run())
        payload = {
            "id": "p",
            "ts": int(time.time() * 1000),
            "config": main.replace("[agent]", '[agent]\ninclude = ["conf.d/*.toml"]'),
            "files": {"conf.d/x.toml": ""},
        }
        await pushes.arrived("config/set", json.dumps(payload).encode())
        await until(lambda: replies, 10, "the reply")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    run(scenario(), timeout=20)
    [reply] = replies
    assert reply["state"] == "refused"
    assert "through a symbolic link" in str(reply["error"])
    assert list(elsewhere.iterdir()) == []
