"""Connecting to the broker: the TLS context of an attempt, and why an attempt failed.

Every refusal a person can fix (wrong password, not authorised, an untrusted certificate, a
client certificate required, a plain port given as TLS) becomes one line naming the cause and the
key to change; network trouble becomes a warning. paho's own error text is kept (through our own
logger) to tell those cases apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..config import MqttSection, tls

log = logging.getLogger(__name__)

#: How long a CONNECT or a QoS 1 publish may wait for the broker's answer.
PUBLISH_TIMEOUT = 10.0


class TlsFileError(aiomqtt.MqttError):
    """A TLS file of ``[mqtt]`` cannot be used now, though it could when the config was loaded."""

    def __init__(self, problem: tls.TlsFileProblem) -> None:
        super().__init__(f"[mqtt] {problem.key} {problem}")
        self.key = problem.key
        self.path = problem.path


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its TLS handshake fails.

    paho-mqtt wraps and handshakes the socket in one step and, when the handshake fails (an
    untrusted certificate, a plain port), drops it unclosed: it would be closed only when the
    garbage collector finds it, with a ResourceWarning, at every retry.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError:
            self.close()
            raise


class LibraryErrors(logging.Filter):
    """paho-mqtt's (and aiomqtt's) error lines: kept for our own line about a failed connect.

    When the broker drops the connection before its CONNACK (a TLS alert after the handshake:
    "certificate required", "unknown ca"), paho logs why and aiomqtt only raises "Operation
    timed out" later. The reason goes into our one line; paho's own line would repeat at every
    retry, so it shows only when debugging.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.last = record.getMessage()
        return bool(log.isEnabledFor(logging.DEBUG))


def library_logger(client_id: str) -> tuple[logging.Logger, LibraryErrors]:
    """The logger aiomqtt and paho log through for this client, and its error filter."""
    logger = logging.getLogger(f"{__name__}.mqtt.{client_id}")
    for existing in logger.filters:
        if isinstance(existing, LibraryErrors):
            return logger, existing
    errors = LibraryErrors()
    logger.addFilter(errors)
    return logger, errors


#: X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED: on a Pi without a real-time clock
#: the gateway's date, not the certificate, is often what is wrong.
_CLOCK_VERIFY_CODES = (9, 10)
#: X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_X509_NAME_MISMATCH = (62, 64)
#: MQTT 5 reason codes, which paho also gives MQTT 3.1.1 CONNACK refusals.
_CLIENT_ID_NOT_VALID = 133
_BAD_USERNAME_OR_PASSWORD = 134
_NOT_AUTHORIZED = 135
_CREDENTIALS_HINT = "check [mqtt] username and password/password_file"
#: Connected, and then the retained status or meta message was not acknowledged: brokers with
#: access rules (AWS IoT policies, mosquitto ACLs with MQTT 5) drop a client that publishes
#: where it may not.
NOT_ONLINE = "the broker accepted us but dropped or ignored our status/meta message"
ACL_HINT = "check that the broker lets this client publish to"


def connect_failure(
    mqtt: MqttSection, exc: aiomqtt.MqttError, library_error: str | None = None
) -> tuple[int, str]:
    """Why connecting failed, as a log level and one line a technician can act on.

    aiomqtt turns socket and TLS errors into a bare ``MqttError`` whose context is the original
    exception; a refusal is an ``MqttCodeError`` with the CONNACK reason code. A refusal
    (credentials, TLS trust, a TLS file) needs a person: an error. A broker that cannot be
    reached may come back by itself: a warning.
    """
    failure = _refused_or_untrusted(mqtt, exc)
    if failure is None:
        failure = _unreachable(mqtt, exc.__context__)
    if failure is not None:
        return failure
    if str(exc) == "Operation timed out":  # aiomqtt's words for a CONNACK that never came
        return _no_connack(mqtt, library_error)
    if isinstance(exc, ClosedBeforeConnack):
        return _no_connack(mqtt, library_error or str(exc))
    return _cannot_connect(mqtt, exc)


def _refused_or_untrusted(mqtt: MqttSection, exc: aiomqtt.MqttError) -> tuple[int, str] | None:
    """A TLS file, a CONNACK refusal or a failed TLS handshake: an error; None if none of them."""
    if isinstance(exc, TlsFileError):
        return logging.ERROR, f"{exc}; retrying"
    if isinstance(exc, aiomqtt.MqttCodeError) and _is_connack(exc.rc):
        return logging.ERROR, _refusal(mqtt, exc)
    cause = exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return logging.ERROR, _verification_failure(mqtt, cause)
    if isinstance(cause, ssl.SSLError) or (mqtt.tls and isinstance(cause, ConnectionResetError)):
        return logging.ERROR, _handshake_failure(mqtt, cause)
    return None


def _handshake_failure(mqtt: MqttSection, cause: ssl.SSLError | ConnectionResetError) -> str:
    where = f"{mqtt.host}:{mqtt.port}"
    reason = getattr(cause, "reason", None) or cause.strerror or cause
    hint = "; is it a TLS port? for a plain one use mqtt://"
    if reason == "WRONG_VERSION_NUMBER" or isinstance(cause, ConnectionResetError):
        return f"the TLS handshake with {where} failed ({reason}){hint}"
    return f"the TLS handshake with {where} failed: {reason}"


def _unreachable(mqtt: MqttSection, cause: BaseException | None) -> tuple[int, str] | None:
    """Nothing listening, no name, no route: a warning; None if the cause is none of them."""
    where = f"{mqtt.host}:{mqtt.port}"
    if isinstance(cause, ConnectionRefusedError):
        return logging.WARNING, (
            f"connection refused: nothing listens on {where} (broker down, or a wrong port?)"
        )
    if isinstance(cause, socket.gaierror):
        return (
            logging.WARNING,
            f"cannot resolve {mqtt.host}: {cause.strerror} (DNS or network down?)",
        )
    if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return logging.WARNING, f"{where} is unreachable: {cause.strerror} (network down?)"
    return None


def _cannot_connect(mqtt: MqttSection, exc: aiomqtt.MqttError) -> tuple[int, str]:
    """Any other failure: a warning, the socket's words when there are some."""
    where = f"{mqtt.host}:{mqtt.port}"
    cause = exc.__context__
    if isinstance(cause, TimeoutError):
        return logging.WARNING, f"no answer from {where}: connecting timed out (network down?)"
    if isinstance(cause, OSError):
        return logging.WARNING, f"cannot connect to {where}: {cause.strerror or cause}"
    return logging.WARNING, f"cannot connect: {exc}"


def _is_connack(rc: object) -> bool:
    # aiomqtt's MqttConnectError is not public; its reason code says the same.
    return isinstance(rc, ReasonCode) and rc.packetType == PacketTypes.CONNACK


def _refusal(mqtt: MqttSection, exc: aiomqtt.MqttCodeError) -> str:
    code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
    if code == _BAD_USERNAME_OR_PASSWORD:
        return f"the broker refused our username or password: {_CREDENTIALS_HINT}"
    if code == _NOT_AUTHORIZED:
        # Mosquitto says "not authorised" for a wrong password too (MQTT 3.1.1 has no finer code).
        if mqtt.username is None:
            return (
                "the broker refused us as not authorised: it wants credentials: set [mqtt] "
                "username and password/password_file (or a client certificate)"
            )
        return (
            f'the broker refused us as not authorised (username "{mqtt.username}"): '
            f"{_CREDENTIALS_HINT}, and that the broker lets this client in"
        )
    if code == _CLIENT_ID_NOT_VALID:
        return f'the broker refused our client id "{mqtt.client_id}": check [mqtt] client_id'
    return f"the broker refused the connection: {exc}"


def _verification_failure(mqtt: MqttSection, cause: ssl.SSLCertVerificationError) -> str:
    detail = cause.verify_message or cause.reason or str(cause)
    if cause.verify_code in _X509_NAME_MISMATCH:
        return (
            f"the broker's certificate is not valid for {mqtt.host} ({detail}): connect by a "
            "name the certificate holds, in [mqtt] url"
        )
    trust = f"ca_file {mqtt.ca_file}" if mqtt.ca_file else "the system's CA certificates"
    clock = " (is the gateway's clock right?)" if cause.verify_code in _CLOCK_VERIFY_CODES else ""
    return (
        f"TLS verification of the broker's certificate failed against {trust}: {detail}{clock}: "
        "check [mqtt] ca_file"
    )


#: How a plain (not TLS) listener's answer to our TLS handshake reads in the library's error.
_PLAIN_PORT_SIGNS = ("reset", "eof occurred in violation of protocol", "unexpected_eof")


def _no_connack(mqtt: MqttSection, library_error: str | None) -> tuple[int, str]:
    """The broker took the connection and closed it, or never answered our CONNECT."""
    where = f"{mqtt.host}:{mqtt.port}"
    if library_error is None:
        return logging.WARNING, f"{where} did not answer our CONNECT within {PUBLISH_TIMEOUT:.0f}s"
    if "CERTIFICATE_REQUIRED" in library_error:
        return logging.ERROR, (
            "the broker requires a client certificate: set [mqtt] client_cert_file and "
            "client_key_file"
        )
    if any(alert in library_error for alert in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_")):
        return logging.ERROR, (
            f"the broker did not accept our client certificate {mqtt.client_cert_file} "
            f"({library_error}): it must be signed by a CA the broker trusts"
        )
    if mqtt.tls and any(sign in library_error.lower() for sign in _PLAIN_PORT_SIGNS):
        # a plain listener resets a TLS client, or closes on it, during the handshake or just
        # after it: which one depends on when the listener reads our ClientHello
        return logging.ERROR, (
            f"the TLS handshake with {where} failed ({library_error}); is it a TLS port? "
            "for a plain one use mqtt://"
        )
    if not mqtt.tls and "reset" in library_error.lower():
        return logging.ERROR, (
            f"{where} closed the connection before answering ({library_error}): a broker "
            "stopping, or a TLS port (then use mqtts://)"
        )
    return logging.WARNING, f"{where} closed the connection before answering: {library_error}"


def tls_context(mqtt: MqttSection) -> ssl.SSLContext | None:
    """The TLS settings of one connection attempt; ``TlsFileError`` when a file is unusable.

    Built anew at every attempt, so a renewed certificate is picked up at the next reconnect,
    and a file that went missing since the config was loaded is a line in the log, retried.
    """
    if not mqtt.tls:
        return None
    # PROTOCOL_TLS_CLIENT: the broker's certificate is verified and its name checked.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.sslsocket_class = _ClosingSSLSocket
    if mqtt.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        _load_files(context, mqtt)
    except tls.TlsFileProblem as problem:
        raise TlsFileError(problem) from problem
    return context


def _load_files(context: ssl.SSLContext, mqtt: MqttSection) -> None:
    """The CA (unless nothing is verified) and the client certificate, checked as ``edge-agent
    check`` checks them."""
    if mqtt.ca_file and not mqtt.tls_insecure:
        tls.check_readable("ca_file", mqtt.ca_file)
        tls.load_ca(context, mqtt.ca_file)
    elif not mqtt.tls_insecure:
        context.load_default_certs()
    cert, key = mqtt.client_cert_file, mqtt.client_key_file
    if cert:
        tls.check_readable("client_cert_file", cert)
        if key:
            tls.check_readable("client_key_file", key)
        tls.load_client_certificate(context, cert, key)


#: MQTT 5 reason codes at and above this one are refusals (a PUBACK's included).
FIRST_REFUSAL = 0x80
#: What the broker said, in a PUBACK or a DISCONNECT, of a message too large for it. Mosquitto
#: answers a message above its ``message_size_limit`` with a PUBACK of this code, which MQTT 5
#: allows only in a DISCONNECT: paho takes that PUBACK for a malformed packet and drops the link
#: ("Protocol error").
PACKET_TOO_LARGE = 0x95
PROTOCOL_ERROR = 0x82


def publish_properties() -> Properties:
    return Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


def connect_properties() -> Properties:
    return Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]


class Refused(aiomqtt.MqttError):
    """The broker answered a publish with a reason code that is not an acknowledgement."""

    def __init__(self, topic: str, reason: ReasonCode) -> None:
        super().__init__(f"{reason} (0x{reason.value:02X})")
        self.topic = topic
        self.reason = reason


class ClosedBeforeConnack(aiomqtt.MqttError):
    """The connection went before the broker answered our CONNECT."""


class LinkDropped(aiomqtt.MqttError):
    """The link went while a publish waited for its acknowledgement; ``reason`` is the
    DISCONNECT's (or paho's) reason code when there was one."""

    def __init__(self, message: str, reason: int | None) -> None:
        super().__init__(message)
        self.reason = reason


class Client(aiomqtt.Client):
    """aiomqtt's client, plus what it does not surface: the CONNACK's properties, and each
    PUBACK's reason code (aiomqtt's ``publish`` returns nothing, so a publish the broker refused
    would look delivered).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: What the broker said in CONNACK (MQTT 5; None at 3.1.1 or before it came).
        self.connack: Properties | None = None
        self._acks: dict[int, asyncio.Future[ReasonCode | None]] = {}
        self._abandoned = False  # connecting failed: whatever comes late is ignored

    def _on_connect(
        self,
        client: Any,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Properties | None = None,
    ) -> None:
        if self._abandoned:  # a CONNACK after we gave up on it
            return
        self.connack = properties
        window = getattr(properties, "ReceiveMaximum", None)
        if window and window < self._client.max_inflight_messages:
            # The broker's Receive Maximum: at most that many QoS 1 messages unacknowledged at
            # once, or it drops us (paho queues the rest). paho does not read it and allows no
            # change once connected; here, in its CONNACK handling, nothing is in flight yet.
            # paho's public setter refuses once connected: its private field is the only way.
            self._client._max_inflight_messages = window  # noqa: SLF001
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_disconnect(
        self,
        client: Any,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Properties | None = None,
    ) -> None:
        if not self._connected.done() and not self._abandoned:
            # aiomqtt ignores a link that goes before its CONNACK and waits out the CONNECT
            # timeout: a broker that stopped under our CONNECT, or a proxy whose broker is down,
            # would cost 10 s a try. The connect fails now instead.
            self._connected.set_exception(ClosedBeforeConnack(str(reason_code)))
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        ack = self._acks.pop(mid, None)
        if ack is not None and not ack.done():
            ack.set_result(reason_code if isinstance(reason_code, ReasonCode) else None)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        """aiomqtt's, except when the socket is closed by the time the loop gets to it (the
        broker just went): that is a lost link, not an "Exception in callback" traceback."""

        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # a broken pipe: the link is gone
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            fileno = sock.fileno()
            if fileno < 0:
                return
            try:
                self._loop.add_writer(fileno, write)
            except (OSError, ValueError) as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(aiomqtt.MqttError(str(exc)))

        # paho may call this from the thread connect() runs in
        self._loop.call_soon_threadsafe(register)

    def keep_unacknowledged(self) -> None:
        """Acknowledge nothing that arrives (before connecting): a broker keeps it queued."""
        self._client.manual_ack_set(True)

    def lost_reason(self) -> str:
        """Why the link went, in the library's words."""
        gone = self._disconnected
        if gone.done() and not gone.cancelled() and gone.exception() is not None:
            return str(gone.exception())
        return "the broker closed the connection"

    async def __aenter__(self) -> Client:
        try:
            return await super().__aenter__()
        except BaseException:
            # aiomqtt leaves the socket of a CONNECT that got no CONNACK open: a late CONNACK
            # would make it a ghost session under our client id, taking our commands.
            self._abandoned = True
            with contextlib.suppress(Exception):
                # paho has no public "close the socket without DISCONNECT" (disconnect() sends one)
                self._client._sock_close()  # noqa: SLF001
            if self._disconnected.done() and not self._disconnected.cancelled():
                self._disconnected.exception()
            raise

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await super().__aexit__(*exc_info)
        finally:
            # aiomqtt leaves the reason of a lost link unretrieved in this future: asyncio would
            # print "Future exception was never retrieved" when it is collected.
            if self._disconnected.done() and not self._disconnected.cancelled():
                self._disconnected.exception()

    async def publish_acked(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish; at QoS 1 wait for the PUBACK. Raises ``Refused`` for a PUBACK whose reason
        code is a refusal, ``LinkDropped`` when the link goes first, ``MqttError`` on timeout."""
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if info.is_published():  # at QoS 0, written already
            return
        # At QoS 0 too: paho says so once the bytes are written, and what is handed over is
        # acknowledged by the buffer only then (a backlog must not vanish into paho's queue).
        ack = self._loop.create_future()
        self._acks[info.mid] = ack
        try:
            done, _ = await asyncio.wait(
                [ack, self._disconnected],
                timeout=PUBLISH_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self._acks.pop(info.mid, None)
        if ack in done:
            reason = ack.result()
            if reason is not None and reason.value >= FIRST_REFUSAL:
                raise Refused(topic, reason)
            return
        if self._disconnected.done():
            raise _dropped(self._disconnected)
        raise aiomqtt.MqttError("Operation timed out")


def _dropped(disconnected: asyncio.Future[None]) -> LinkDropped:
    cause = None if disconnected.cancelled() else disconnected.exception()
    reason = getattr(cause, "rc", None)
    code = reason.value if isinstance(reason, ReasonCode) else reason
    return LinkDropped(str(cause or "disconnected"), code if isinstance(code, int) else None)


#: How long a reachability probe waits for the broker's TCP handshake, and for its name.
PROBE_TIMEOUT = 3.0
RESOLVE_TIMEOUT = 30.0


async def reachable(host: str, port: int) -> bool:
    """Whether the broker's port takes a TCP connection now: the cheap question asked while
    the broker is away (a SYN and a RST), before the dearer CONNECT (and TLS handshake)."""
    loop = asyncio.get_running_loop()
    try:
        # the name first, unhurried: a resolver that takes 5 s (a dead first nameserver) must
        # not make every probe fail; only the TCP handshake is timed
        found = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
        )
        address = str(found[0][4][0])
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), PROBE_TIMEOUT)
    except (OSError, asyncio.TimeoutError, IndexError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


#: Socket errors of a broker that is not there (yet): probe for it, rather than back off.
_AWAY_ERRNOS = (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN)


def broker_away(exc: aiomqtt.MqttError) -> bool:
    """Connecting failed before the broker could say anything: nothing listens, no route, no
    name. Anything later (a refusal, a TLS failure, a CONNACK that never came) is not this."""
    cause = exc.__context__
    if isinstance(cause, ssl.SSLError) or isinstance(exc, TlsFileError):
        return False
    if str(exc) == "Operation timed out" or "handshake" in str(cause):
        return False  # TCP got through: the CONNACK (or the TLS handshake) never came
    if isinstance(cause, socket.gaierror | TimeoutError | asyncio.TimeoutError):
        return True
    return isinstance(cause, OSError) and cause.errno in _AWAY_ERRNOS


#: CONNACK reason codes of a broker that is there but will not have us now: wait, long.
_BUSY = {
    0x88: "server unavailable",
    0x89: "server busy",
    0x97: "quota exceeded",
    0x9F: "connection rate exceeded",
}


def busy_refusal(exc: aiomqtt.MqttError) -> str | None:
    """The broker's "not now" in a CONNACK, in words; None for any other failure."""
    if isinstance(exc, aiomqtt.MqttCodeError) and _is_connack(exc.rc):
        code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
        return _BUSY.get(code) if isinstance(code, int) else None
    return None
