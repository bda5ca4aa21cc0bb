"""The MQTT link: TLS, mutual TLS, passwords, and a broker that refuses us — all against a real
Mosquitto with real certificates (agent/testkit/certs.py), and the agent as systemd runs it.

The broker's plain listener is the tests' own tap: the agent connects to its secured listener,
the subscriber to the plain one, so a test sees what got through without the agent's secrets.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import Config, load_config
from agent.errors import ConfigError, Problem
from agent.store.buffer import BUFFER_FILE, Buffer
from agent.store.inspect import stored_stats
from agent.testkit import run, until
from agent.testkit.broker import Broker
from agent.testkit.certs import Certs, make_certs
from agent.testkit.mqtt import Subscriber
from agent.testkit.net import free_port
from agent.testkit.process import AgentProcess
from agent.uplink.link import connect_failure
from agent.uplink.telemetry import Uplink
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

VOLTAGE = ModbusPoint("voltage", table="input", address=0, type="float32")
SECRET = "s3cret-Pa55"


@dataclass(frozen=True)
class Pki:
    broker: Certs  # the CA the brokers' certificates come from
    other: Certs  # a CA that signed nothing the brokers use
    misnamed: Certs  # a broker certificate that is not valid for 127.0.0.1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    return Pki(
        make_certs(base / "broker", "broker CA"),
        make_certs(base / "other", "other CA"),
        make_certs(base / "misnamed", "misnamed CA", ("DNS:broker.elsewhere.example",)),
    )


@pytest.fixture
def started() -> Iterator[Callable[[Broker], Broker]]:
    """Start brokers for a test and stop them, by PID, however the test ends."""
    brokers: list[Broker] = []

    def start(broker: Broker) -> Broker:
        broker.start()
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        broker.stop()


def write_config(tmp_path: Path, url: str, modbus_port: int = 1, mqtt: str = "") -> Path:
    """An agent polling one simulated meter every 200 ms, sending to ``url``."""
    path = tmp_path / "agent.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [agent]
            id = "gw-test"
            data_dir = "data"
            [mqtt]
            url = "{url}"
            topic_prefix = "fields"
            batch_interval = "100ms"
            """
        )
        + textwrap.dedent(mqtt)
        + textwrap.dedent(
            f"""
            [[bus]]
            name = "plc"
            type = "modbus-tcp"
            host = "127.0.0.1"
            port = {modbus_port}
            timeout = "150ms"
            [[device]]
            name = "meter"
            bus = "plc"
            interval = "200ms"
              [[device.point]]
              name = "voltage"
              table = "input"
              address = 0
              type = "float32"
            """
        )
    )
    return path


def meter() -> SimulatedSlave:
    slave = SimulatedSlave(1, (VOLTAGE,))
    slave.set_value("voltage", 231.25)
    return slave


async def delivers_readings(tmp_path: Path, broker: Broker, mqtt: str) -> str:
    """Run the agent against ``broker.secure_url`` until readings and a clean ``offline`` arrive;
    its output."""
    async with (
        ModbusSimulator([meter()]) as sim,
        Subscriber(broker.host, broker.port, "fields/gw-test/#") as sub,
    ):
        agent = AgentProcess(write_config(tmp_path, broker.secure_url, sim.port, mqtt))
        agent.start()
        try:
            samples = await sub.wait_samples(2)
        finally:
            assert agent.stop() == 0, agent.output()
        await sub.wait_for(lambda _: {"state": "offline"} in sub.payloads("status"))
    assert samples[0]["values"] == {"voltage": 231.25}
    assert sub.payloads("status")[0]["state"] == "online"
    output = agent.output()
    assert "Traceback" not in output, output
    return output


# --- delivered


def test_readings_arrive_over_mqtts_verified_with_a_test_ca(
    tmp_path: Path, pki: Pki, started: Callable[[Broker], Broker]
) -> None:
    broker = started(Broker(tmp_path, certs=pki.broker))
    output = run(delivers_readings(tmp_path, broker, f'ca_file = "{pki.broker.ca}"\n'), 30)
    assert "warning" not in output.lower(), output


def test_mutual_tls_with_a_client_certificate_the_broker_requires(
    tmp_path: Path, pki: Pki, started: Callable[[Broker], Broker]
) -> None:
    broker = started(Broker(tmp_path, certs=pki.broker, require_certificate=True))
    mqtt = f"""
        ca_file = "{pki.broker.ca}"
        client_cert_file = "{pki.broker.client_cert}"
        client_key_file = "{pki.broker.client_key}"
        """
    run(delivers_readings(tmp_path, broker, mqtt), 30)


def test_a_password_file_is_accepted_by_a_broker_with_passwords(
    tmp_path: Path, started: Callable[[Broker], Broker]
) -> None:
    broker = started(Broker(tmp_path, users={"gw": SECRET}))
    secret = tmp_path / "mqtt-password"
    secret.write_text(SECRET + "\n")  # as systemd-creds and editors leave it
    mqtt = f'username = "gw"\npassword_file = "{secret}"\n'
    output = run(delivers_readings(tmp_path, broker, mqtt), 30)
    assert SECRET not in output


def test_tls_insecure_connects_to_a_broker_the_ca_does_not_vouch_for(
    tmp_path: Path, pki: Pki, started: Callable[[Broker], Broker]
) -> None:
    broker = started(Broker(tmp_path, certs=pki.broker))
    mqtt = f'ca_file = "{pki.other.ca}"\ntls_insecure = true\n'
    output = run(delivers_readings(tmp_path, broker, mqtt), 30)
    assert "mqtt.tls_insecure: warning: the broker's certificate is not verified" in output


# --- refused: one line, retried with backoff, polling goes on


async def refused_while_polling(
    tmp_path: Path, broker: Broker, mqtt: str, attempts_seen: Callable[[], int]
) -> str:
    """The agent against a broker that refuses it: wait for three refused attempts, check
    polling went on, stop it cleanly; its output."""
    async with ModbusSimulator([meter()]) as sim:
        slave = sim.slaves[1]
        agent = AgentProcess(write_config(tmp_path, broker.secure_url, sim.port, mqtt))
        agent.start()
        try:
            await asyncio.to_thread(agent.wait_notified, "READY=1")  # not blocking the slave
            await until(
                lambda: attempts_seen() >= 3, 15, f"3 refused attempts:\n{broker.log_text()}"
            )
            polled = slave.requests
            await until(lambda: slave.requests > polled, 15, "another poll after the refusals")
        finally:
            assert agent.stop() == 0, agent.output()
    # what was polled meanwhile waits in the buffer for a broker that takes it
    assert stored_stats(tmp_path / "data" / BUFFER_FILE).depth > 0
    output = agent.output()
    assert "Traceback" not in output, output
    return output


def test_a_wrong_ca_is_one_line_while_retrying_and_polling_goes_on(
    tmp_path: Path, pki: Pki, started: Callable[[Broker], Broker]
) -> None:
    broker = started(Broker(tmp_path, certs=pki.broker))
    output = run(
        refused_while_polling(
            tmp_path,
            broker,
            f'ca_file = "{pki.other.ca}"\n',
            lambda: broker.log_text().count("alert unknown ca"),
        ),
        40,
    )
    line = (
        f"mqtt {broker.secure_url}: TLS verification of the broker's certificate failed against "
        f"ca_file {pki.other.ca}: self-signed certificate in certificate chain: check [mqtt] "
        "ca_file"
    )
    assert [line in out for out in output.splitlines()].count(True) == 1, output


def test_a_wrong_password_is_one_line_while_retrying_and_polling_goes_on(
    tmp_path: Path, started: Callable[[Broker], Broker]
) -> None:
    broker = started(Broker(tmp_path, users={"gw": SECRET}))
    output = run(
        refused_while_polling(
            tmp_path,
            broker,
            'username = "gw"\npassword = "wrong-password"\n',
            lambda: broker.log_text().count("disconnected, not authorised"),
        ),
        40,
    )
    # Mosquitto answers a wrong password with "not authorised" (CONNACK 5), not 4
    line = (
        f'mqtt {broker.secure_url}: the broker refused us as not authorised (username "gw"): '
        "check [mqtt] username and password/password_file, and that the broker lets this "
        "client in"
    )
    assert [line in out for out in output.splitlines()].count(True) == 1, output
    assert "wrong-password" not in output


# --- each failure, as the one line it becomes


async def failure_of(config: Config, tmp_path: Path) -> str:
    """One connection attempt as the uplink makes it, and the line it would log."""
    uplink = Uplink(config, Buffer(tmp_path / "buffer.sqlite", 10**6, 1.0))
    try:
        client = uplink._client()  # noqa: SLF001 (the client exactly as the uplink builds it)
        # A CONNACK that never comes: the uplink waits 10 s for it (slow links); a test, 1 s.
        client.timeout = 1.0
        async with client:
            pass
    except aiomqtt.MqttError as exc:
        return connect_failure(config.mqtt, exc, uplink._library_errors.last)[1]  # noqa: SLF001
    raise AssertionError("connected")


def config_for(tmp_path: Path, url: str, mqtt: str = "") -> Config:
    config, _ = load_config(write_config(tmp_path, url, mqtt=mqtt), {})
    return config


def test_each_refusal_is_named_with_its_fix(
    tmp_path: Path, pki: Pki, started: Callable[[Broker], Broker]
) -> None:
    for name in ("tls", "misnamed", "passwords"):
        (tmp_path / name).mkdir()
    tls = started(Broker(tmp_path / "tls", certs=pki.broker, require_certificate=True))
    misnamed = started(Broker(tmp_path / "misnamed", certs=pki.misnamed))
    passwords = started(Broker(tmp_path / "passwords", users={"gw": SECRET}))
    nowhere = f"mqtt://127.0.0.1:{free_port()}"
    ca = f'ca_file = "{pki.broker.ca}"\n'
    stranger = ca + (
        f'client_cert_file = "{pki.other.client_cert}"\n'
        f'client_key_file = "{pki.other.client_key}"\n'
    )
    cases = [
        (
            tls.secure_url,
            ca,
            "the broker requires a client certificate: set [mqtt] client_cert_file and "
            "client_key_file",
        ),
        (
            tls.secure_url,
            stranger,
            f"the broker did not accept our client certificate {pki.other.client_cert} (",
            "unknown ca",
            "): it must be signed by a CA the broker trusts",
        ),
        (
            misnamed.secure_url,
            f'ca_file = "{pki.misnamed.ca}"\n',
            "the broker's certificate is not valid for 127.0.0.1 (IP address mismatch",
            ": connect by a name the certificate holds, in [mqtt] url",
        ),
        (
            passwords.secure_url.replace("mqtt:", "mqtts:"),
            ca,
            f"the TLS handshake with 127.0.0.1:{passwords.secure_port} failed (",
            "); is it a TLS port? for a plain one use mqtt://",
        ),
        (
            passwords.secure_url,
            "",
            "the broker refused us as not authorised: it wants credentials: set [mqtt] "
            "username and password/password_file (or a client certificate)",
        ),
        (
            nowhere,
            "",
            f"connection refused: nothing listens on {nowhere[7:]} (broker down, or a wrong port?)",
        ),
    ]

    async def body() -> list[str]:
        return [
            await failure_of(config_for(tmp_path, url, mqtt), tmp_path) for url, mqtt, *_ in cases
        ]

    for line, (url, _, *fragments) in zip(run(body(), 30), cases, strict=True):
        assert all(f in line for f in fragments), (url, line)


def test_a_bad_username_or_password_code_names_the_credentials(tmp_path: Path) -> None:
    """What other brokers (EMQX, HiveMQ, AWS IoT) answer to a wrong password: CONNACK 4."""
    refused = aiomqtt.MqttCodeError(ReasonCode(PacketTypes.CONNACK, "Bad user name or password"))
    config = config_for(tmp_path, "mqtts://broker.example.net", 'username = "gw"\n')
    level, line = connect_failure(config.mqtt, refused)
    assert (level, line) == (
        logging.ERROR,
        "the broker refused our username or password: check [mqtt] username and "
        "password/password_file",
    )


def test_a_tls_file_gone_at_run_time_is_one_line_retried_with_backoff(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.broker.ca.read_bytes())
    config = config_for(tmp_path, "mqtts://127.0.0.1:8883", f'ca_file = "{ca}"\n')
    ca.unlink()  # a certificate renewal gone wrong, after the config was loaded
    caplog.set_level(logging.DEBUG, logger="agent.uplink.telemetry")

    def attempts() -> int:
        return sum("connect failed" in r.getMessage() for r in caplog.records)

    async def body() -> None:
        with Buffer(tmp_path / "buffer.sqlite", 10**6, 1.0) as buffer:
            uplink = Uplink(config, buffer)
            task = asyncio.create_task(uplink.run())
            try:
                await until(lambda: attempts() >= 3, 15, "3 connection attempts")
            finally:
                await uplink.stop()
                await asyncio.wait_for(task, 5)

    run(body(), 20)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [f"mqtt mqtts://127.0.0.1:8883: [mqtt] ca_file {ca}: no such file; retrying"]


# --- configuration


def problems_of(tmp_path: Path, mqtt: str, url: str = "mqtts://broker.example.net") -> list[str]:
    """Every problem, warnings included, of a config whose [mqtt] has ``mqtt`` added."""
    path = write_config(tmp_path, url, mqtt=mqtt)
    try:
        found: list[Problem] = load_config(path, {})[1]
    except ConfigError as exc:
        found = exc.problems
    return [str(p).split(": ", 1)[1] for p in found]  # without the file name


def test_tls_files_must_exist_and_pair_up(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "missing.pem"
    assert problems_of(tmp_path, f'ca_file = "{missing}"\n') == [
        f"mqtt.ca_file: {missing}: no such file"
    ]
    key_only = f'client_key_file = "{pki.broker.client_key}"\n'
    assert problems_of(tmp_path, key_only) == [
        "mqtt.client_key_file: needs client_cert_file: the certificate of this key"
    ]
    cert_only = f'client_cert_file = "{pki.broker.client_cert}"\n'
    assert problems_of(tmp_path, cert_only) == [
        "mqtt.client_cert_file: needs client_key_file: the certificate's private key"
    ]
    mismatched = cert_only + f'client_key_file = "{pki.other.client_key}"\n'
    assert problems_of(tmp_path, mismatched) == [
        f"mqtt.client_cert_file: {pki.broker.client_cert} with {pki.other.client_key}: the key "
        "does not belong to the certificate"
    ]
    not_a_ca = f'ca_file = "{pki.broker.client_key}"\n'
    assert problems_of(tmp_path, not_a_ca) == [
        f"mqtt.ca_file: {pki.broker.client_key}: holds no PEM certificate"
    ]
    both = f'ca_file = "{pki.broker.ca}"\n' + mismatched.replace(
        str(pki.other.client_key), str(pki.broker.client_key)
    )
    assert problems_of(tmp_path, both) == []


def test_a_password_over_plain_mqtt_is_a_warning_that_never_shows_it(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(SECRET)
    for mqtt, key in (
        (f'username = "gw"\npassword = "{SECRET}"\n', "password"),
        (f'username = "gw"\npassword_file = "{secret}"\n', "password_file"),
    ):
        found = problems_of(tmp_path, mqtt, "mqtt://broker.example.net")
        assert found == [
            f"mqtt.{key}: warning: the password crosses the network in clear text to "
            "broker.example.net over mqtt://: use mqtts:// (TLS)"
        ]
        assert problems_of(tmp_path, mqtt, "mqtt://127.0.0.1:1883") == []  # a local bridge
        assert problems_of(tmp_path, mqtt, "mqtts://broker.example.net") == []
    url = f"mqtt://gw:{SECRET}@broker.example.net"
    assert problems_of(tmp_path, "", url) == [
        "mqtt.url: holds a user name or password: put them in [mqtt] username and "
        "password/password_file instead"
    ]


def test_tls_insecure_and_max_inflight(tmp_path: Path, pki: Pki) -> None:
    assert problems_of(tmp_path, "tls_insecure = true\n") == [
        "mqtt.tls_insecure: warning: the broker's certificate is not verified: anyone on the "
        "network path can pose as the broker and read the password and readings; use ca_file "
        "instead"
    ]
    assert problems_of(tmp_path, "tls_insecure = true\n", "mqtt://broker.example.net") == [
        "mqtt.tls_insecure: warning: is ignored with mqtt://"
    ]
    assert problems_of(tmp_path, "max_inflight = 0\n") == [
        "mqtt.max_inflight: 0 is out of range 1..1000"
    ]
    config = config_for(tmp_path, "mqtts://broker.example.net", "max_inflight = 5\n")
    assert config.mqtt.max_inflight == 5
    assert not config.mqtt.tls_insecure
    assert config_for(tmp_path, "mqtt://127.0.0.1").mqtt.max_inflight == 20


def test_an_empty_password_file_means_no_password_and_says_so(tmp_path: Path) -> None:
    """The installer leaves an empty credential for brokers that take no password."""
    secret = tmp_path / "mqtt-password"
    secret.write_text("\n")
    assert problems_of(tmp_path, f'username = "gw"\npassword_file = "{secret}"\n') == [
        f"mqtt.password_file: warning: {secret} is empty: connecting without a password"
    ]
    config, _ = load_config(
        write_config(tmp_path, "mqtts://b.example.net", mqtt=f'password_file = "{secret}"\n'), {}
    )
    assert config.mqtt.password is None


def test_a_default_stands_in_for_an_unset_variable(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "mqtt-password").write_text(SECRET)
    mqtt = 'username = "gw"\npassword_file = "${CREDENTIALS_DIRECTORY:-creds}/mqtt-password"\n'
    path = write_config(tmp_path, "mqtts://b.example.net", mqtt=mqtt)
    assert load_config(path, {})[0].mqtt.password == SECRET  # outside systemd: the default
    elsewhere = tmp_path / "systemd-creds"
    elsewhere.mkdir()
    (elsewhere / "mqtt-password").write_text("from-systemd")
    loaded = load_config(path, {"CREDENTIALS_DIRECTORY": str(elsewhere)})[0]
    assert loaded.mqtt.password == "from-systemd"
