"""One set of checks for the TLS files of [mqtt]: ``edge-agent check`` at load and the link at
each connection attempt say the same thing of a file, as ``KEY PATH: reason``."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from agent.config import Config, load_config
from agent.errors import ConfigError
from agent.testkit.certs import Certs, make_certs
from agent.uplink.link import TlsFileError, tls_context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pki"), "tls files CA")


def config_text(tmp_path: Path, mqtt: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [agent]
            id = "gw"
            data_dir = "{tmp_path / "data"}"
            [mqtt]
            url = "mqtts://127.0.0.1:8883"
            """
        )
        + mqtt,
        encoding="utf-8",
    )
    return path


def check_says(tmp_path: Path, mqtt: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(config_text(tmp_path, mqtt), {})
    return [f"{p.path}: {p.message}" for p in caught.value.problems if not p.warning]


def loaded(tmp_path: Path, mqtt: str) -> Config:
    return load_config(config_text(tmp_path, mqtt), {})[0]


def link_says(config: Config) -> str:
    with pytest.raises(TlsFileError) as caught:
        tls_context(config.mqtt)
    return str(caught.value)


def test_a_missing_ca_file_is_said_alike_at_check_and_at_connect(
    tmp_path: Path, certs: Certs
) -> None:
    ca = tmp_path / "ca.pem"
    shutil.copy(certs.ca, ca)
    config = loaded(tmp_path, f'ca_file = "{ca}"\n')
    ca.unlink()  # gone after the agent started: the link says it at its next attempt
    assert check_says(tmp_path, f'ca_file = "{ca}"\n') == [f"mqtt.ca_file: {ca}: no such file"]
    assert link_says(config) == f"[mqtt] ca_file {ca}: no such file"


def test_a_key_that_wants_a_passphrase_is_said_alike_and_never_asked_for(
    tmp_path: Path, certs: Certs
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to encrypt a key")
    key = tmp_path / "client.key"
    mqtt = f'ca_file = "{certs.ca}"\nclient_cert_file = "{certs.client_cert}"\n'
    shutil.copy(certs.client_key, key)
    config = loaded(tmp_path, mqtt + f'client_key_file = "{key}"\n')
    encrypt = ["pkey", "-in", str(certs.client_key), "-aes256", "-passout", "pass:x"]
    subprocess.run(
        [openssl, *encrypt, "-out", str(key)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,  # OpenSSL asking on a terminal would hang a test
        timeout=30,
    )
    reason = (
        "encrypted with a passphrase, which the agent does not have: store the key "
        "unencrypted, readable by the agent only"
    )
    said = check_says(tmp_path, mqtt + f'client_key_file = "{key}"\n')
    assert said == [f"mqtt.client_key_file: {key}: {reason}"]
    assert link_says(config) == f"[mqtt] client_key_file {key}: {reason}"


def test_a_key_of_another_certificate_is_said_alike(tmp_path: Path, certs: Certs) -> None:
    other = make_certs(tmp_path / "other", "other CA")
    key = tmp_path / "client.key"
    shutil.copy(certs.client_key, key)
    mqtt = f'client_cert_file = "{certs.client_cert}"\nclient_key_file = "{key}"\n'
    config = loaded(tmp_path, mqtt)
    shutil.copy(other.client_key, key)  # replaced by the wrong one after the start
    reason = "the key does not belong to the certificate"
    where = f"{certs.client_cert} with {key}"
    assert check_says(tmp_path, mqtt) == [f"mqtt.client_cert_file: {where}: {reason}"]
    assert link_says(config) == f"[mqtt] client_cert_file {where}: {reason}"
