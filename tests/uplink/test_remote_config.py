"""A configuration pushed over MQTT to a running agent (``config/set``) against a real Mosquitto:
applied and confirmed, refused with its problems, rolled back by itself when it cuts the link,
taken from the session after an outage but not past its TTL, resumed after a ``kill -9``, and
given up when a technician's file wins; no secret on any topic or in the log."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config.push import (
    MAX_STARTS,
    Journal,
    config_hash,
    journal_path,
    previous_path,
    write_journal,
)
from agent.testkit import run, until
from agent.testkit.broker import Broker
from agent.testkit.mqtt import Subscriber
from agent.testkit.net import free_port
from agent.testkit.process import AgentProcess

SECRET = "s3cret-Pa55-for-remote"
ENV_SECRET = "env-Secret-Value-77"

MAIN = """\
[agent]
id = "gw"
data_dir = "data"
include = ["conf.d/*.toml"]
[buffer]
flush_interval = "1s"
[mqtt]
url = "{url}"
topic_prefix = "rc"
client_id = "gw"
username = "gw"
password = "{password}"
batch_interval = "100ms"
reconnect_max = "1s"
{mqtt_more}
[remote]
config = true
confirm_within = "{confirm}"
{remote_more}
[[device]]
name = "gateway"
driver = "system"
interval = "200ms"
  [[device.point]]
  name = "uptime"
"""


def device(name: str) -> str:
    return (
        f'[[device]]\nname = "{name}"\ndriver = "system"\ninterval = "200ms"\n'
        '  [[device.point]]\n  name = "uptime"\n'
    )


def main_text(url: str, confirm: str = "10s", mqtt_more: str = "", remote_more: str = "") -> str:
    return MAIN.format(
        url=url, password=SECRET, confirm=confirm, mqtt_more=mqtt_more, remote_more=remote_more
    )


def site(tmp_path: Path, broker: Broker, **more: str) -> Path:
    config = tmp_path / "site.toml"
    config.write_text(main_text(broker.url, **more))
    (tmp_path / "conf.d").mkdir(exist_ok=True)
    (tmp_path / "conf.d" / "well.toml").write_text(device("well"))
    return config


def push(ident: str, main: str, files: dict[str, str] | None = None, **more: Any) -> bytes:
    payload = {"id": ident, "ts": int(time.time() * 1000), "config": main, **more}
    if files is not None:
        payload["files"] = files
    return json.dumps(payload).encode()


def replies(sub: Subscriber, ident: str) -> list[dict[str, Any]]:
    return [r for r in sub.payloads("config/reply") if r.get("id") == ident]


async def reply_of(sub: Subscriber, ident: str, timeout: float = 20) -> dict[str, Any]:
    await sub.wait_for(lambda _: bool(replies(sub, ident)), timeout)
    return replies(sub, ident)[0]


async def push_cutting_the_link(sub: Subscriber, ident: str, text: str, broker: Broker) -> str:
    """Push ``text`` pointed at a port where nothing listens; return once the agent has left
    the broker for it (its ``offline``). The pushed text is returned."""
    bad = text.replace(broker.url, f"mqtt://127.0.0.1:{free_port()}")
    await sub.client.publish("rc/gw/config/set", push(ident, bad), qos=1)
    await sub.wait_for(lambda _: {"state": "offline"} in sub.payloads("status"))
    return bad


def started(config: Path, env: dict[str, str] | None = None) -> AgentProcess:
    agent = AgentProcess(config, env=env)
    agent.start()
    agent.wait_notified("READY=1")
    return agent


def everything_said(sub: Subscriber, agent: AgentProcess) -> str:
    """Every message the agent published, and its log (not the pushes the test sent)."""
    said = [p for t, p, _ in sub.messages if not t.endswith("/config/set")]
    return json.dumps(said) + agent.output()


def test_a_valid_push_is_applied_confirmed_and_its_hash_is_in_meta(
    tmp_path: Path, broker: Broker
) -> None:
    config = site(tmp_path, broker)
    agent = started(config)

    async def scenario() -> None:
        async with Subscriber(broker.host, broker.port, "rc/gw/#") as sub:
            await sub.wait_samples(1, "well")
            before = sub.payloads("meta")[-1]["config_hash"]
            files = {"conf.d/pumps.toml": device("pump"), "conf.d/tank.toml": device("tank")}
            await sub.client.publish(
                "rc/gw/config/set", push("p1", config.read_text(), files), qos=1
            )
            reply = await reply_of(sub, "p1")
            assert reply["state"] == "confirmed", reply
            assert reply["ok"] is True
            assert reply["previous"] == before
            assert reply["hash"] != before
            await sub.wait_samples(1, "pump")
            await sub.wait_samples(1, "tank")
            assert sub.payloads("meta")[-1]["config_hash"] == reply["hash"]
            # the push is the whole configuration: the running include it lacks is gone
            assert sorted(sub.payloads("meta")[-1]["devices"]) == ["gateway", "pump", "tank"]
            # a copy (a QoS 1 redelivery) is answered again, never applied twice
            await sub.client.publish("rc/gw/config/set", push("p1", "garbage"), qos=1)
            await sub.wait_for(lambda _: len(replies(sub, "p1")) == 2)
            assert replies(sub, "p1")[1] == reply

    try:
        run(scenario(), timeout=60)
    finally:
        assert agent.stop() == 0
    assert (tmp_path / "conf.d" / "pumps.toml").read_text() == device("pump")
    assert not (tmp_path / "conf.d" / "well.toml").exists()
    assert not journal_path(config).exists()
    kept = json.loads(previous_path(config).read_text())  # what it replaced, for a person
    assert kept["files"] == {
        "site.toml": config.read_text(),
        "conf.d/well.toml": device("well"),
        "conf.d/pumps.toml": None,
        "conf.d/tank.toml": None,
    }
    log = agent.output()
    assert "config push p1: applied (sha256:" in log
    assert "config push p1: confirmed" in log
    assert "repeated: answered again, not applied twice" in log
    assert "Traceback" not in log


def test_an_invalid_push_is_refused_with_every_problem_and_nothing_changes(
    tmp_path: Path, broker: Broker
) -> None:
    config = site(tmp_path, broker)
    original = config.read_text()
    agent = started(config)

    async def scenario() -> None:
        async with Subscriber(broker.host, broker.port, "rc/gw/#") as sub:
            await sub.wait_samples(1, "gateway")
            broken = original.replace('interval = "200ms"', 'interval = "0s"')
            files = {"conf.d/bad.toml": '[[device]]\nname = "x"\ndriver = "nonesuch"\n'}
            await sub.client.publish("rc/gw/config/set", push("p2", broken, files), qos=1)
            reply = await reply_of(sub, "p2")
            assert reply["state"] == "refused"
            assert reply["ok"] is False
            problems = reply["problems"]
            assert any(
                p.startswith(f"{config}:") and "device.gateway.interval" in p for p in problems
            ), problems
            assert any(
                p.startswith(f"{tmp_path / 'conf.d' / 'bad.toml'}:") and "nonesuch" in p
                for p in problems
            ), problems
            # not TOML at all, a path out of the folder, [remote] turned off without saying so
            cases = {
                "p3": push("p3", "[agent\n"),
                "p4": push("p4", original, {"../evil.toml": device("e")}),
                "p5": push("p5", original.replace("config = true", "config = false")),
                "p6": push("p6", original.replace('id = "gw"', 'id = "other"')),
                "p7": b'{"id": "p7", "config": "x"}',
            }
            for payload in cases.values():
                await sub.client.publish("rc/gw/config/set", payload, qos=1)
            for ident in cases:
                assert (await reply_of(sub, ident))["state"] == "refused", ident
            assert "invalid TOML" in replies(sub, "p3")[0]["problems"][0]
            assert "below the configuration's folder" in replies(sub, "p4")[0]["error"]
            assert '"remote_off": true' in replies(sub, "p5")[0]["error"]
            assert "[agent]" in replies(sub, "p6")[0]["error"]
            assert '"ts"' in replies(sub, "p7")[0]["error"]
            count = len(sub.samples("gateway"))
            await sub.wait_samples(count + 2, "gateway")  # still polling, still sending

    try:
        run(scenario(), timeout=60)
    finally:
        assert agent.stop() == 0
    assert config.read_text() == original
    assert not (tmp_path / "conf.d" / "bad.toml").exists()
    assert not (tmp_path / "evil.toml").exists()
    assert "Traceback" not in agent.output()


def test_a_push_that_cuts_the_link_is_rolled_back_by_itself(tmp_path: Path, broker: Broker) -> None:
    config = site(tmp_path, broker, mqtt_more='health_interval = "1s"')
    original = config.read_text()
    agent = started(config)

    async def scenario() -> None:
        async with Subscriber(broker.host, broker.port, "rc/gw/#") as sub:
            await sub.wait_samples(1, "gateway")
            before = sub.payloads("meta")[-1]["config_hash"]
            await push_cutting_the_link(sub, "p8", original, broker)
            reply = await reply_of(sub, "p8", timeout=40)
            assert reply["state"] == "rolled_back", reply
            assert reply["hash"] == before
            assert "within 10s" in reply["error"]
            count = len(sub.samples("gateway"))
            await sub.wait_samples(count + 1, "gateway")
            # nothing polled while away is lost: the backlog comes after the live readings
            await sub.wait_for(lambda _: _contiguous(sub))
            health = await _health(sub)
            assert health["config"]["push"]["state"] == "rolled_back"
            assert health["config"]["hash"] == before

    try:
        run(scenario(), timeout=90)
    finally:
        assert agent.stop() == 0
    assert config.read_text() == original
    assert not journal_path(config).exists()
    log = agent.output()
    assert "rolled back to the previous configuration" in log
    assert "Traceback" not in log


def _contiguous(sub: Subscriber) -> bool:
    ids = {s["id"] for s in sub.samples()}
    return ids == set(range(min(ids), max(ids) + 1))


async def _health(sub: Subscriber) -> dict[str, Any]:
    count = len(sub.payloads("health"))
    await sub.wait_for(lambda _: len(sub.payloads("health")) > count)
    health: dict[str, Any] = sub.payloads("health")[-1]
    return health


def test_a_push_sent_while_offline_is_taken_when_the_agent_is_back_unless_too_old(
    tmp_path: Path, broker: Broker
) -> None:
    config = site(tmp_path, broker, mqtt_more='health_interval = "1s"')
    original = config.read_text()
    agent = started(config)

    async def scenario() -> None:
        async with Subscriber(broker.host, broker.port, "rc/gw/#") as sub:
            await sub.wait_samples(1, "gateway")
            await asyncio.to_thread(agent.stop)  # its session stays on the broker
            old = json.loads(push("p9", original + device("old")))
            old["ts"] -= 2 * 3600 * 1000
            old["ttl"] = 3600
            await sub.client.publish("rc/gw/config/set", json.dumps(old).encode(), qos=1)
            await sub.client.publish(
                "rc/gw/config/set", push("p10", original + device("late")), qos=1
            )
            agent.start()
            assert "expired" in (await reply_of(sub, "p9"))["error"]
            assert (await reply_of(sub, "p10"))["state"] == "confirmed"
            await sub.wait_samples(1, "late")
            assert "old" not in sub.payloads("meta")[-1]["devices"]

    try:
        run(scenario(), timeout=60)
    finally:
        assert agent.stop() == 0
    assert '[[device]]\nname = "late"' in config.read_text()


def test_a_kill_9_while_waiting_for_the_confirmation_resumes_it(
    tmp_path: Path, broker: Broker
) -> None:
    """Killed between applying a push and its confirmation, the agent starts again with the
    new configuration and confirms it then; killed during a rollback, it finishes that."""
    config = site(tmp_path, broker, confirm="30s")
    original = config.read_text()
    agent = started(config)

    async def scenario() -> None:
        async with Subscriber(broker.host, broker.port, "rc/gw/#") as sub:
            await sub.wait_samples(1, "gateway")
            bad = await push_cutting_the_link(sub, "p11", original, broker)
            assert json.loads(journal_path(config).read_text())["phase"] == "confirming"
            agent.signal(signal.SIGKILL)
            await asyncio.to_thread(agent.wait)
            assert config.read_text() == bad
            agent.start()  # with the pushed configuration: it cannot reach the broker
            reply = await reply_of(sub, "p11", timeout=60)
            assert reply["state"] == "rolled_back"

    try:
        run(scenario(), timeout=100)
    finally:
        assert agent.stop() == 0
    assert config.read_text() == original
    assert "not confirmed before the agent stopped" in agent.output()


def test_the_site_file_wins_over_a_push(tmp_path: Path, broker: Broker) -> None:
    config = site(tmp_path, broker, confirm="60s")
    original = config.read_text()
    agent = started(config)

    async def scenario() -> None:
        async with Subscriber(broker.host, broker.port, "rc/gw/#") as sub:
            await sub.wait_samples(1, "gateway")
            # edited on site, not reloaded yet: a push is refused
            config.write_text(original + "# edited on site\n")
            await sub.client.publish("rc/gw/config/set", push("p12", original + device("x")), qos=1)
            assert "changed on site" in (await reply_of(sub, "p12"))["error"]
            config.write_text(original)
            # a push waiting for its confirmation, then the technician's file and a reload
            await push_cutting_the_link(sub, "p13", original, broker)
            site_file = original + device("site")
            config.write_text(site_file)
            agent.signal(signal.SIGHUP)
            reply = await reply_of(sub, "p13", timeout=30)
            assert reply["state"] == "superseded"
            await sub.wait_samples(1, "site")
            assert config.read_text() == site_file

    try:
        run(scenario(), timeout=60)
    finally:
        assert agent.stop() == 0
    assert not journal_path(config).exists()


def test_config_get_and_every_reply_keep_the_secrets(tmp_path: Path, broker: Broker) -> None:
    config = site(
        tmp_path,
        broker,
        remote_more="status = true\nlog = true\nframes = true",
    )
    text = config.read_text().replace('username = "gw"', 'username = "${MQTT_USER}"')
    config.write_text(text)
    agent = started(config, env={"MQTT_USER": ENV_SECRET})
    seen: list[Subscriber] = []

    async def scenario() -> None:
        async with Subscriber(broker.host, broker.port, "rc/#") as sub:
            seen.append(sub)
            await sub.wait_samples(1, "gateway")
            await sub.client.publish("rc/gw/config/get", b'{"id": "g1"}', qos=1)
            got = await reply_of(sub, "g1")
            assert got["hash"] == sub.payloads("meta")[-1]["config_hash"]
            assert 'password = "<redacted>"' in got["config"]
            assert "${MQTT_USER}" in got["config"]
            assert got["files"] == {"conf.d/well.toml": device("well")}
            # a refused push whose problems would quote the password
            bad = text.replace(f'password = "{SECRET}"', f"password = {SECRET}")
            await sub.client.publish("rc/gw/config/set", push("p14", bad), qos=1)
            await reply_of(sub, "p14")
            # a problem that would quote what an environment variable holds
            bad = text + device("env").replace('"200ms"', '"${MQTT_USER}"')
            await sub.client.publish("rc/gw/config/set", push("p16", bad), qos=1)
            refused = await reply_of(sub, "p16")
            assert any("device.env.interval" in p for p in refused["problems"]), refused
            for ident, what in (("d1", "status"), ("d2", "log")):
                await sub.client.publish(f"rc/gw/diag/{what}", json.dumps({"id": ident}), qos=1)
            await sub.wait_for(lambda _: len(sub.payloads("diag/reply")) >= 2)

    try:
        run(scenario(), timeout=60)
    finally:
        assert agent.stop() == 0
    said = everything_said(seen[0], agent)
    assert len(seen[0].payloads("diag/reply")) == 2
    for secret in (SECRET, ENV_SECRET):
        assert secret not in said, said[said.find(secret) - 300 :][:400]


@pytest.mark.parametrize("phase", ["applying", "rolling back", "confirming"])
def test_run_finishes_an_interrupted_write_before_reading_the_config(
    tmp_path: Path, broker: Broker, phase: str
) -> None:
    """The journal a kill -9 left: ``edge-agent run`` writes the whole new configuration (or the
    whole previous one) before it reads any of it; a push the agent has started with too often
    without getting online (it crashes with it) is rolled back before it is read."""
    config = site(tmp_path, broker)
    original = config.read_text()
    new = original + device("new")
    journal = Journal(
        "p15",
        phase,
        {"site.toml": new, "conf.d/well.toml": None},
        {"site.toml": original, "conf.d/well.toml": device("well")},
        config_hash([("site.toml", original), ("conf.d/well.toml", device("well"))]),
        config_hash([("site.toml", new)]),
        starts=MAX_STARTS,
    )
    write_journal(config, journal)
    if phase != "applying":
        config.write_text(new)  # half: the main file new, the include already gone
        (tmp_path / "conf.d" / "well.toml").unlink()

    async def scenario() -> None:
        async with Subscriber(broker.host, broker.port, "rc/gw/config/reply") as sub:
            agent.start()
            if phase == "confirming":
                reply = await reply_of(sub, "p15")
                assert reply["state"] == "rolled_back"
                assert f"started {MAX_STARTS} times" in reply["error"]
            await asyncio.to_thread(agent.wait_notified, "READY=1")

    agent = AgentProcess(config)
    try:
        run(scenario(), timeout=40)
    finally:
        assert agent.stop() == 0
    if phase == "applying":
        assert config.read_text() == new
        assert not (tmp_path / "conf.d" / "well.toml").exists()
    else:
        assert config.read_text() == original
        assert (tmp_path / "conf.d" / "well.toml").read_text() == device("well")
        assert not journal_path(config).exists()
    assert "config push p15" in agent.output()
    assert "Traceback" not in agent.output()


def test_a_reload_that_puts_back_the_running_mqtt_settings_before_they_were_left_wins(
    tmp_path: Path, broker: Broker
) -> None:
    """New [mqtt] settings are taken at the next connection. A second reload (a technician's
    SIGHUP, a rollback) that brings back the settings in use before the first was taken must
    cancel the pending ones, not leave the link to go to them (a gateway lost for good)."""
    from dataclasses import replace

    from agent.store.buffer import Buffer
    from agent.uplink.telemetry import Uplink
    from tests.uplink.rig import config_for

    async def body() -> None:
        good = config_for(tmp_path, broker.url)
        bad = replace(good, mqtt=replace(good.mqtt, port=free_port()))
        with Buffer(tmp_path / "buffer.sqlite", 10**6, 1.0) as buffer:
            up = Uplink(good, buffer, on_command=lambda t, p: None)
            task = asyncio.create_task(up.run())
            try:
                await asyncio.wait_for(up.published.wait(), 10)
                await up.reconfigure(bad)  # taken at the next connection...
                await up.reconfigure(good)  # ...but put back before that
                await until(lambda: up.connects >= 2 and up.published.is_set(), 10, "back")
                assert up.mqtt.port == broker.port
            finally:
                await up.stop()
                await asyncio.wait_for(task, 15)

    run(body(), timeout=40)


def test_a_copy_of_the_push_being_confirmed_is_not_answered_refused(tmp_path: Path) -> None:
    """A copy of a push (QoS 1 again, a fleet tool sending it once more) that arrives while
    that push waits for its confirmation gets no "busy" refusal under the push's own id: a
    fleet tool takes the first reply with its id as the outcome. Its one reply is the real one.
    """
    (tmp_path / "broker").mkdir()
    # the new prefix's meta is refused (an ACL): the agent is online, but never confirms
    broker = Broker(tmp_path / "broker", deny_patterns=["rc2/gw/meta"])
    broker.start()
    try:
        config = site(tmp_path, broker)
        original = config.read_text()
        agent = started(config)

        async def scenario() -> None:
            async with Subscriber(broker.host, broker.port, "#") as sub:
                await sub.wait_samples(1, "gateway")
                moved = push("p20", original.replace('topic_prefix = "rc"', 'topic_prefix = "rc2"'))
                await sub.client.publish("rc/gw/config/set", moved, qos=1)
                await sub.wait_for(lambda m: any(t == "rc2/gw/status" for t, _, _ in m))
                await sub.client.publish("rc2/gw/config/set", moved, qos=1)  # the copy
                await sub.client.publish("rc2/gw/config/get", b'{"id": "g20"}', qos=1)
                await sub.wait_for(lambda m: any(t == "rc2/gw/config/reply" for t, _, _ in m))

                def mine() -> list[dict[str, Any]]:
                    return [
                        p
                        for t, p, _ in sub.messages
                        if t.endswith("/config/reply") and p.get("id") == "p20"
                    ]

                await sub.wait_for(lambda _: any(r["state"] == "rolled_back" for r in mine()), 40)
                assert [r["state"] for r in mine()] == ["rolled_back"], mine()

        try:
            run(scenario(), timeout=90)
        finally:
            assert agent.stop() == 0
        assert config.read_text() == original
    finally:
        broker.stop()


def test_a_push_whose_includes_match_files_it_does_not_carry_is_refused(
    tmp_path: Path, broker: Broker
) -> None:
    """The push is the whole configuration and was checked as such: a file on disk that its
    include patterns match but that it does not carry (nor removes) would be read with it
    once written, unchecked. Here that file is not even TOML: the pushed configuration would
    not load (the agent would not start again), so it must not be written at all."""
    config = site(tmp_path, broker)
    original = config.read_text()
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "stale.toml").write_text("[[device]\n")  # not part of the running one
    agent = started(config)

    async def scenario() -> None:
        async with Subscriber(broker.host, broker.port, "rc/gw/#") as sub:
            await sub.wait_samples(1, "gateway")
            wider = original.replace('["conf.d/*.toml"]', '["conf.d/*.toml", "extra/*.toml"]')
            files = {"conf.d/well.toml": device("well")}
            await sub.client.publish("rc/gw/config/set", push("p21", wider, files), qos=1)
            reply = await reply_of(sub, "p21")
            assert reply["state"] == "refused", reply
            assert "extra/stale.toml" in reply["error"], reply
            count = len(sub.samples("well"))
            await sub.wait_samples(count + 2, "well")  # still running the configuration

    try:
        run(scenario(), timeout=60)
    finally:
        assert agent.stop() == 0
    assert config.read_text() == original
    assert not journal_path(config).exists()
    assert "Traceback" not in agent.output()


def test_a_push_that_comes_during_a_reload_is_not_taken_for_the_technicians_file(
    tmp_path: Path, broker: Broker
) -> None:
    """A reload (SIGHUP: logrotate, a technician, a config tool) still applying when a push is
    written read the files before the push wrote them. It must not pass for a technician's file
    that supersedes the push: the push would run unconfirmed, with no rollback if it cuts the
    link. Reloads and the writing of a push take turns."""
    from agent.config import load_config
    from agent.service.app import Agent

    config_path = site(tmp_path, broker)
    original = config_path.read_text()

    async def body() -> None:
        config, _ = load_config(config_path, environ={})
        agent = Agent(config)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            async with Subscriber(broker.host, broker.port, "rc/gw/#") as sub:
                await sub.wait_samples(1, "well")
                reconfigure = agent.uplink.reconfigure
                entered, release = asyncio.Event(), asyncio.Event()

                async def slow_reconfigure(new: Any) -> None:  # a meta's PUBACK that takes long
                    if not release.is_set():
                        entered.set()
                        await release.wait()
                    await reconfigure(new)

                agent.uplink.reconfigure = slow_reconfigure  # type: ignore[method-assign,assignment]
                agent.request_reload()  # the file as it is: nothing changed on site
                await asyncio.wait_for(entered.wait(), 10)
                await sub.client.publish(
                    "rc/gw/config/set", push("p22", original + device("new")), qos=1
                )
                lock = agent._applying  # noqa: SLF001
                waiting = lambda: bool(getattr(lock, "_waiters", None))  # noqa: E731
                await until(waiting, 10, "the push waits its turn (or was written)")
                release.set()
                reply = await reply_of(sub, "p22")
                assert reply["state"] == "confirmed", reply
                await sub.wait_samples(1, "new")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    run(body(), timeout=60)
    assert config_path.read_text() == original + device("new")
    assert not journal_path(config_path).exists()
