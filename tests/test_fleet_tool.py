"""``examples/fleet/push.py`` against a real Mosquitto, with the gateways played by a paho client
that answers each push as docs/remote.md says a gateway does: one confirms it, one refuses it with
its problems, one rolls it back, one is offline and never answers. The tool runs as a subprocess,
as an operator runs it; its lines and exit status are the contract."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.testkit.broker import Broker

TOOL = Path(__file__).parents[1] / "examples" / "fleet" / "push.py"
MAIN = '[agent]\nid = "gw"\ninclude = ["conf.d/*.toml"]\n\n[remote]\nconfig = true\n'
PUMPS = '[[device]]\nname = "pump-1"\n'
PROBLEMS = [
    "config.toml:7: mqtt.url: must look like mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
    'conf.d/pumps.toml:2: device.bus: unknown bus "rs458" (did you mean "rs485"?)',
]
NEW, OLD = "sha256:" + "9c" * 32, "sha256:" + "1f" * 32


def answers(push_id: str) -> dict[str, list[dict[str, Any]]]:
    """What each gateway publishes on config/reply when the push arrives. gw-1 first answers an
    earlier push (another id), which the tool must not take for this one's answer."""
    return {
        "gw-1": [
            {"id": "push-earlier", "ok": False, "state": "refused", "error": "busy"},
            {"id": push_id, "ok": True, "state": "confirmed", "hash": NEW, "previous": OLD},
        ],
        "gw-2": [
            {
                "id": push_id,
                "ok": False,
                "state": "refused",
                "error": "the configuration has 2 problems",
                "problems": PROBLEMS,
            },
        ],
        "gw-3": [
            {
                "id": push_id,
                "ok": False,
                "state": "rolled_back",
                "hash": OLD,
                "error": "not back online within 120s: connection refused: not authorised",
            },
        ],
    }


class Gateways:
    """Plays the gateways on one paho connection: retained ``status`` for each, and the replies
    of ``answers`` sent the moment a push arrives on ``{prefix}/+/config/set``."""

    def __init__(self, broker: Broker, replies: dict[str, list[dict[str, Any]]]) -> None:
        self.replies = replies
        self.pushes: dict[str, dict[str, Any]] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, "test-gateways")
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def start(self, statuses: dict[str, str]) -> None:
        for gw, state in statuses.items():
            info = self.client.publish(
                f"edge/{gw}/status", json.dumps({"state": state}), qos=1, retain=True
            )
            info.wait_for_publish(timeout=10)
            assert info.is_published()
        self.client.subscribe("edge/+/config/set", qos=1)
        assert self.subscribed.wait(10), "the gateways' subscription was not acknowledged"

    def _on_message(self, client: mqtt.Client, _: Any, message: mqtt.MQTTMessage) -> None:
        gw = message.topic.split("/")[1]
        self.pushes[gw] = json.loads(message.payload)
        for reply in self.replies.get(gw, []):
            client.publish(f"edge/{gw}/config/reply", json.dumps(reply), qos=1)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A configuration and its include, as an operator has them in a checkout."""
    (tmp_path / "site" / "conf.d").mkdir(parents=True)
    (tmp_path / "site" / "conf.d" / "pumps.toml").write_text(PUMPS, encoding="utf-8")
    config = tmp_path / "site" / "config.toml"
    config.write_text(MAIN, encoding="utf-8")
    return config


@pytest.fixture
def gateways(broker: Broker) -> Iterator[Gateways]:
    fleet = Gateways(broker, answers("push-test-1"))
    yield fleet
    fleet.stop()


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_each_gateway_says_how_it_took_the_push(
    broker: Broker, gateways: Gateways, site: Path
) -> None:
    gateways.start({"gw-1": "online", "gw-2": "online", "gw-3": "online", "gw-4": "offline"})
    sent = int(time.time() * 1000)
    done = run_tool(
        "--broker", broker.url, "--timeout", "5", "--id", "push-test-1", "--ttl", "600",
        site, "--include", "conf.d/pumps.toml", "gw-1", "gw-2", "gw-3", "gw-4", "gw-9",
    )  # fmt: skip
    assert done.stdout.splitlines() == [
        f"gw-1: confirmed {NEW}",
        "gw-2: refused: the configuration has 2 problems",
        f"  {PROBLEMS[0]}",
        f"  {PROBLEMS[1]}",
        "gw-3: rolled back: not back online within 120s: connection refused: not authorised",
        "gw-4: no answer within 5 s (status: offline)",
        "gw-9: no answer within 5 s (no status seen: check the id and --prefix)",
    ], done.stderr
    assert done.returncode == 1
    assert done.stderr == "push.py: pushing push-test-1 to 5 gateway(s)\n"
    # Every gateway was sent the same whole push, stamped as it went.
    assert sorted(gateways.pushes) == ["gw-1", "gw-2", "gw-3", "gw-4", "gw-9"]
    for push in gateways.pushes.values():
        assert push.pop("ts") - sent in range(30_000)
        assert push == {
            "id": "push-test-1",
            "config": MAIN,
            "files": {"conf.d/pumps.toml": PUMPS},
            "ttl": 600,
        }


def test_all_confirmed_is_exit_0_and_the_password_is_never_shown(
    tmp_path: Path, site: Path
) -> None:
    secured = Broker(tmp_path / "secured", users={"fleet": "pw-Секрет-42"})
    (tmp_path / "secured").mkdir()
    secured.start()
    fleet = Gateways(secured, {})
    try:
        fleet.start({})
        password = tmp_path / "password"
        password.write_text("pw-Секрет-42\n", encoding="utf-8")
        fleet.replies = {
            "gw-1": [{"id": "p-2", "ok": True, "state": "confirmed", "hash": NEW, "previous": OLD}],
            "gw-2": [{"id": "p-2", "ok": True, "state": "unchanged", "hash": NEW}],
        }
        login = ["--broker", secured.secure_url, "--username=fleet", f"--password-file={password}"]
        ok = run_tool(*login, "--id=p-2", "--remote-off", "--timeout=20", site, "gw-1", "gw-2")
        assert (ok.returncode, ok.stdout) == (
            0,
            f"gw-1: confirmed {NEW}\ngw-2: unchanged {NEW}\n",
        ), ok.stderr
        assert fleet.pushes["gw-1"]["remote_off"] is True
        assert "files" not in fleet.pushes["gw-1"]
        password.write_text("not-it", encoding="utf-8")
        refused = run_tool(*login, site, "gw-1")
        assert refused.returncode == 1
        assert (
            refused.stderr.splitlines()[-1]
            == f"push.py: {secured.secure_url} refused the connection: Not authorized"
        )
        for said in (ok.stdout, ok.stderr, refused.stdout, refused.stderr):
            assert "Секрет" not in said
            assert "not-it" not in said
    finally:
        fleet.stop()
        secured.stop()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["{dir}/missing.toml", "gw-1"], "missing.toml: cannot be read: No such file or directory"),
        (
            ["{site}", "--include", "conf.d/valves.toml", "gw-1"],
            "conf.d/valves.toml: cannot be read: No such file or directory",
        ),
        (
            ["{site}", "--include", "../secrets.toml", "gw-1"],
            "--include ../secrets.toml: must stay below CONFIG's folder",
        ),
        (["{site}", "gw/1"], "gateway id 'gw/1' cannot be one level of a topic"),
        (
            ["--broker", "mqtt://fleet:hunter2@127.0.0.1:1", "{site}", "gw-1"],
            "--broker: give the user with --username",
        ),
        (["{site}"], "the following arguments are required: GATEWAY_ID"),
    ],
)
def test_a_usage_error_is_exit_2_and_one_line(site: Path, args: list[str], said: str) -> None:
    # Nothing listens on port 1: a usage error is said before any connection is tried.
    broker = [] if "--broker" in args else ["--broker", "mqtt://127.0.0.1:1"]
    done = run_tool(
        *broker, *(a.replace("{site}", str(site)).replace("{dir}", str(site.parent)) for a in args)
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert said in done.stderr
    assert "hunter2" not in done.stderr


def test_the_tool_against_real_agents(tmp_path: Path, broker: Broker) -> None:
    """Two agents that read their id from the environment take one pushed file; a third name
    answers nothing."""
    from agent.testkit.process import AgentProcess

    main = (
        '[agent]\nid = "${GW}"\ndata_dir = "data-${GW}"\ninclude = ["conf.d/*.toml"]\n'
        f'[mqtt]\nurl = "{broker.url}"\ntopic_prefix = "fleet"\nclient_id = "${{GW}}"\n'
        '[remote]\nconfig = true\nconfirm_within = "10s"\n'
    )
    device = '[[device]]\nname = "{}"\ndriver = "system"\n  [[device.point]]\n  name = "uptime"\n'
    pushed = tmp_path / "checkout"
    (pushed / "conf.d").mkdir(parents=True)
    (pushed / "site.toml").write_text(main)
    (pushed / "conf.d" / "pumps.toml").write_text(device.format("pump"))
    agents = []
    for gw in ("gw-a", "gw-b"):  # each its own copy of the site's folder
        folder = tmp_path / gw
        folder.mkdir()
        (folder / "conf.d").mkdir()
        (folder / "site.toml").write_text(main)
        (folder / "conf.d" / "gateway.toml").write_text(device.format("gateway"))
        agent = AgentProcess(folder / "site.toml", env={"GW": gw})
        agent.start()
        agents.append(agent)
    try:
        for agent in agents:
            agent.wait_notified("READY=1")
        done = run_tool(
            "--broker", broker.url, "--prefix", "fleet", "--timeout", "10",
            pushed / "site.toml", "--include", "conf.d/pumps.toml", "gw-a", "gw-b", "gw-c",
        )  # fmt: skip
    finally:
        codes = [agent.stop() for agent in agents]
    lines = done.stdout.splitlines()
    assert [line.split(" sha256:")[0] for line in lines] == [
        "gw-a: confirmed",
        "gw-b: confirmed",
        "gw-c: no answer within 10 s (no status seen: check the id and --prefix)",
    ], (done.stdout, done.stderr)
    assert lines[0].split()[-1] == lines[1].split()[-1]  # one configuration, one hash
    assert done.returncode == 1
    assert codes == [0, 0]
    for gw in ("gw-a", "gw-b"):
        assert (tmp_path / gw / "conf.d" / "pumps.toml").read_text() == device.format("pump")
        assert not (tmp_path / gw / "conf.d" / "gateway.toml").exists()
