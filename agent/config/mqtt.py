"""The ``[mqtt]`` table: the broker's URL, credentials and TLS files (checked as the link
checks them, ``agent.config.tls``), topics, and the link's limits, each within what MQTT carries.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from ..api import keys as conv
from . import tls as tls_files
from .mqtt_limits import (
    MAX_CLIENT_ID,
    MAX_USERNAME,
    length_problem,
    longest_topic_problem,
    password_problems,
    text_problems,
)
from .sections import Section
from .types import MqttSection

#: MQTT keepalive is a 16-bit count of seconds.
MAX_KEEPALIVE = 65535
#: MQTT 5 carries the session expiry as seconds in 32 bits (and 0xFFFFFFFF means never).
MAX_EXPIRY = 0xFFFFFFFE
#: How ``mqtt.protocol`` may be written.
PROTOCOLS = {"5": "5", "5.0": "5", "3.1.1": "3.1.1"}
DEFAULT_URL = "mqtt://localhost:1883"
EXAMPLE_URL = "mqtts://broker.example.net:8883"
_PORT = re.compile(r"[0-9]+")


class MqttTable:
    """Reads the ``[mqtt]`` table; ``relative`` makes a path of the file relative to the
    configuration's directory."""

    def __init__(self, relative: Callable[[str], Path]) -> None:
        self._relative = relative

    def _optional_path(self, value: str | None) -> Path | None:
        return None if value is None else self._relative(value)

    def load(self, s: Section, agent_id: str) -> MqttSection:
        """The ``[mqtt]`` table ``s``, every problem said at its key."""
        d = MqttSection()
        host, port, tls = self._broker_url(s)
        username, password = self._credentials(s, host, tls)
        tls_insecure = s.take("tls_insecure", conv.boolean, False) or False
        ca_file, cert_file, key_file = self._mqtt_tls_files(s, tls, tls_insecure)
        prefix = _topic_prefix(s, agent_id)
        keepalive = s.take("keepalive", conv.positive_duration, d.keepalive)
        if keepalive is not None and not 1 <= keepalive <= MAX_KEEPALIVE:
            # MQTT carries it as whole seconds in 16 bits.
            s.problem("keepalive", f"must be between 1s and {MAX_KEEPALIVE}s")
            keepalive = None
        result = MqttSection(
            host=host,
            port=port,
            tls=tls,
            client_id=_client_id(s, agent_id),
            username=username,
            password=password,
            ca_file=ca_file,
            client_cert_file=cert_file,
            client_key_file=key_file,
            topic_prefix=prefix or d.topic_prefix,
            qos=s.take("qos", conv.in_range(0, 1), d.qos) or 0,
            batch_max=s.take("batch_max", conv.in_range(1, 100_000), d.batch_max) or d.batch_max,
            batch_interval=s.take("batch_interval", conv.duration, d.batch_interval) or 0.0,
            health_interval=s.take("health_interval", conv.positive_duration, d.health_interval)
            or d.health_interval,
            command_ttl=s.take("command_ttl", conv.positive_duration, d.command_ttl)
            or d.command_ttl,
            keepalive=keepalive or d.keepalive,
            tls_insecure=tls_insecure and tls,
            max_inflight=s.take("max_inflight", conv.in_range(1, 1000), d.max_inflight)
            or d.max_inflight,
            reconnect_max=s.take("reconnect_max", conv.positive_duration, d.reconnect_max)
            or d.reconnect_max,
            protocol=s.take("protocol", _protocol, d.protocol) or d.protocol,
            reconnect_window=_duration_up_to(s, "reconnect_window", d.reconnect_window, 3600),
            session_expiry=_duration_up_to(s, "session_expiry", d.session_expiry, MAX_EXPIRY),
            compression=s.take("compression", conv.one_of("none", "zlib"), d.compression)
            or d.compression,
        )
        s.finish()
        return result

    def _broker_url(self, s: Section) -> tuple[str, int, bool]:
        # With user info, an unset ${…} in it may be (part of) the password: not named.
        written = s.data.get("url")
        holds_user_info = isinstance(written, str) and "@" in written
        url = s.take("url", conv.utf8_text, DEFAULT_URL, secret=holds_user_info) or DEFAULT_URL
        what = conv.shown(url)
        if "@" in url:
            s.problem(
                "url",
                "holds a user name or password: put them in [mqtt] username and "
                "password/password_file instead",
            )
            # Where a password ends cannot be told when it holds "/" or ":": what follows the
            # last "@" is checked, and no part of the URL is ever shown.
            scheme, separator, _ = url.partition("://")
            url = f"{scheme}{separator}{url.rpartition('@')[2]}" if separator else ""
            what = "the URL (not shown: it holds a password)"
        parts, port, problem = _split_url(url)
        if problem:
            s.problem("url", f'{what} {problem}: write e.g. "{EXAMPLE_URL}"')
        elif parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            s.problem("url", f"{what} must look like mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        elif parts.path not in ("", "/") or parts.query or parts.fragment:
            s.problem("url", f"{what} has a path or query, which MQTT has no use for")
        elif not _host_encodable(parts.hostname):
            s.problem("url", f"{what} has a host name that is not valid (an empty label?)")
        tls = parts.scheme == "mqtts"
        return parts.hostname or "localhost", port or (8883 if tls else 1883), tls

    def _credentials(self, s: Section, host: str, tls: bool) -> tuple[str | None, str | None]:
        """[mqtt] username and the password, from ``password`` or ``password_file``."""
        username = s.take("username", conv.text, None)
        if username is not None:
            s.report("username", _mqtt_string_problems(username, "the user name", MAX_USERNAME))
        password = s.take("password", conv.text, None, secret=True)
        if password is not None:
            s.report("password", password_problems(password))
        password_file = s.take("password_file", conv.text, None)
        secret_key = "password_file" if password_file is not None else "password"
        if s.has("password") and password_file is not None:
            s.problem("password_file", "set either password or password_file, not both")
        elif password_file is not None:
            password = self._read_secret(s, password_file)
        has_password = password is not None
        if has_password and username is None:
            # MQTT sends no password without a user name: paho would drop it without a word.
            s.problem(
                secret_key, "is ignored without a username: set [mqtt] username", warning=True
            )
        elif has_password and not tls and not loopback_host(host):
            s.problem(
                secret_key,
                f"the password crosses the network in clear text to {host} over mqtt://: "
                "use mqtts:// (TLS)",
                warning=True,
            )
        return username, password

    def _mqtt_tls_files(
        self, s: Section, tls: bool, tls_insecure: bool
    ) -> tuple[Path | None, Path | None, Path | None]:
        """ca_file, client_cert_file, client_key_file: each readable now and usable by OpenSSL.

        Checked here so that a wrong path is a line in ``edge-agent check``, not a failure at
        the first connection attempt (the uplink still checks at every attempt, and says so).
        """
        keys = ("ca_file", "client_cert_file", "client_key_file")
        paths = {k: self._optional_path(s.take(k, conv.text, None)) for k in keys}
        ca, cert, key = paths["ca_file"], paths["client_cert_file"], paths["client_key_file"]
        if not tls:  # nothing here is used: a reminder, not a reason to refuse to start
            _warn_tls_settings_ignored(s, paths, tls_insecure)
            return ca, cert, key
        readable = {k: p for k, p in paths.items() if p is not None and _readable(s, k, p)}
        _check_key_pairing(s, cert, key)
        if tls_insecure:
            s.problem(
                "tls_insecure",
                "the broker's certificate is not verified: anyone on the network path can pose "
                "as the broker and read the password and readings; use ca_file instead",
                warning=True,
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if ca is not None and "ca_file" in readable and not tls_insecure:
            _check_ca_loads(s, context, ca)
        key_usable = "client_key_file" in readable or (
            key is None and tls_files.holds_private_key(cert)
        )
        if cert is not None and "client_cert_file" in readable and key_usable:
            _check_cert_chain_loads(s, context, cert, key)
        return ca, cert, key

    def _read_secret(self, s: Section, file: str) -> str | None:
        """The password in ``file``; None, said as a warning, when the file is empty (the
        installer leaves an empty one for a broker that takes no password). No message shows
        any of its content."""
        secret = read_password_file(s, self._relative(file), file)
        if secret is None:
            return None
        if not secret:
            s.problem(
                "password_file", f"{file} is empty: connecting without a password", warning=True
            )
            return None
        return secret if s.report("password_file", password_problems(secret)) else None


def read_password_file(s: Section, path: Path, file: str) -> str | None:
    """The text of a ``password_file`` at ``path`` (written ``file``), stripped; None after
    saying at ``password_file`` why it cannot be read. No message shows any of its content."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        s.problem("password_file", f"cannot read {file}: {exc.strerror or exc}")
        return None
    try:
        return content.decode("utf-8").strip()
    except UnicodeDecodeError:  # its message would quote the bytes around the fault
        s.problem(
            "password_file",
            f"{file} is not UTF-8 text (its content is not shown): write the password in UTF-8",
        )
        return None


def _protocol(value: object) -> str:
    word = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(word, str) or word not in PROTOCOLS:
        raise ValueError(f'{conv.shown(str(value))} is not "5" or "3.1.1"')
    return PROTOCOLS[word]


def _duration_up_to(s: Section, key: str, default: float, limit: float) -> float:
    seconds = s.take(key, conv.duration, default)
    if seconds is None:
        return default
    if seconds > limit:
        s.problem(key, f"must be at most {limit:.0f}s")
        return default
    return seconds


def _topic_prefix(s: Section, agent_id: str) -> str | None:
    """[mqtt] topic_prefix: the first levels of every topic, ``{prefix}/{agent.id}/…``."""
    prefix = s.take("topic_prefix", conv.text, MqttSection().topic_prefix)
    if prefix is None:
        return None
    if not prefix:
        s.problem("topic_prefix", 'is empty: write e.g. "edge"')
        return None
    found = text_problems(prefix, "a topic")
    if any(c in prefix for c in "+#") or prefix.endswith("/"):
        found.append(f'{conv.shown(prefix)} cannot be a topic prefix: no "+", "#" or trailing "/"')
    if prefix.startswith("$"):
        found.append(
            f'{conv.shown(prefix)} cannot be a topic prefix: topics that start with "$" are the '
            'broker\'s own ($SYS, $share): write e.g. "edge"'
        )
    if topic := longest_topic_problem(prefix, agent_id):
        found.append(topic)
    return prefix if s.report("topic_prefix", found) else None


def _client_id(s: Section, agent_id: str) -> str:
    client_id = s.take("client_id", conv.text, agent_id) or agent_id
    s.report("client_id", _mqtt_string_problems(client_id, "the client id", MAX_CLIENT_ID))
    return client_id


def _mqtt_string_problems(value: str, used_as: str, max_chars: int) -> list[str]:
    found = text_problems(value, used_as)
    if problem := length_problem(value, max_chars, "a sensible limit, well within MQTT's"):
        found.append(problem)
    return found


def _split_url(url: str) -> tuple[SplitResult, int | None, str | None]:
    """The parts of the broker URL, its port, and what is wrong with it (said of the URL,
    without showing it)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return urlsplit(DEFAULT_URL), None, "is not a valid URL"
    written = _port_text(parts.netloc)
    if not written:
        return parts, None, None
    if not _PORT.fullmatch(written):
        return parts, None, "has a port that is not a number"
    if not 1 <= int(written) <= 65535:
        return parts, None, "has a port out of range 1..65535"
    return parts, int(written), None


def _port_text(netloc: str) -> str:
    """What follows the host's ":" in ``netloc`` (without user info); "" when none."""
    host_port = netloc.rpartition("]")[2] if netloc.startswith("[") else netloc
    _, colon, port = host_port.rpartition(":")
    return port if colon else ""


def _host_encodable(host: str) -> bool:
    """What the socket library can look up: "a..b" or a 64-character label it refuses."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def loopback_host(host: str) -> bool:
    """A broker on this gateway (a local bridge): what goes to it never crosses the network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_tls_settings_ignored(
    s: Section, paths: Mapping[str, Path | None], tls_insecure: bool
) -> None:
    """With mqtt:// the TLS files and tls_insecure are not used: a warning for each one set."""
    for k, path in paths.items():
        if path is not None:
            s.problem(k, "is ignored with mqtt://: use mqtts:// for TLS", warning=True)
    if tls_insecure:
        s.problem("tls_insecure", "is ignored with mqtt://", warning=True)


def _check_key_pairing(s: Section, cert: Path | None, key: Path | None) -> None:
    """A client key needs its certificate, and a certificate its key (unless it holds it)."""
    if key is not None and cert is None:
        s.problem("client_key_file", "needs client_cert_file: the certificate of this key")
    if cert is not None and key is None and not tls_files.holds_private_key(cert):
        s.problem("client_cert_file", "needs client_key_file: the certificate's private key")


def _check_ca_loads(s: Section, context: ssl.SSLContext, ca: Path) -> None:
    """ca_file is a CA certificate OpenSSL can load."""
    try:
        tls_files.load_ca(context, ca)
    except tls_files.TlsFileProblem as problem:
        s.problem(problem.key, str(problem))


def _check_cert_chain_loads(
    s: Section, context: ssl.SSLContext, cert: Path, key: Path | None
) -> None:
    """The client certificate and its key load into OpenSSL, the key needing no passphrase."""
    try:
        tls_files.load_client_certificate(context, cert, key)
    except tls_files.TlsFileProblem as problem:
        s.problem(problem.key, str(problem))


def _readable(s: Section, key: str, path: Path) -> bool:
    try:
        tls_files.check_readable(key, path)
    except tls_files.TlsFileProblem as problem:
        s.problem(key, str(problem))
        return False
    return True
