"""The TLS files of ``[mqtt]`` (``ca_file``, ``client_cert_file``, ``client_key_file``), checked
one way: when the configuration is loaded (``edge-agent check``, the agent's start: a wrong path
is a line there, not a failure at the first connection) and by the link at each connection
attempt (a renewed certificate is picked up, one gone since is a line in the log, retried).
Both say the same thing of a file, as ``KEY PATH: reason``.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsFileProblem(Exception):
    """A TLS file of ``[mqtt]`` cannot be used: ``key`` names it, ``reason`` says why."""

    def __init__(self, key: str, path: Path, reason: str, where: str = "") -> None:
        #: The file, or the files together ("CERT with KEY"), as messages name them.
        self.where = where or str(path)
        super().__init__(f"{self.where}: {reason}")
        self.key = key
        self.path = path
        self.reason = reason


def check_readable(key: str, path: Path) -> None:
    """Name the file that cannot be read: OpenSSL's own error does not say which one."""
    try:
        with path.open("rb"):
            return
    except FileNotFoundError:
        raise TlsFileProblem(key, path, "no such file") from None
    except OSError as exc:
        raise TlsFileProblem(key, path, f"cannot read it: {exc.strerror or exc}") from None


def load_ca(context: ssl.SSLContext, ca: Path) -> None:
    """The CA certificate that verifies the broker, loaded into ``context``."""
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise TlsFileProblem("ca_file", ca, _reason(exc)) from exc


def load_client_certificate(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    """The client certificate and its key (or the key in the certificate's own file), loaded
    into ``context``; the key must need no passphrase."""
    try:
        context.load_cert_chain(str(cert), str(key) if key else None, _no_passphrase)
    except _EncryptedKeyError:
        raise TlsFileProblem(
            "client_key_file",
            key or cert,
            "encrypted with a passphrase, which the agent does not have: store the key "
            "unencrypted, readable by the agent only",
        ) from None
    except (OSError, ssl.SSLError) as exc:
        where = f"{cert} with {key}" if key else str(cert)
        raise TlsFileProblem("client_cert_file", cert, _reason(exc), where) from exc


def holds_private_key(path: Path | None) -> bool:
    """A PEM file may hold the certificate and its key together (OpenSSL accepts that)."""
    if path is None:
        return False
    try:
        return b"PRIVATE KEY-----" in path.read_bytes()
    except OSError:
        return True  # said as unreadable by check_readable


class _EncryptedKeyError(Exception):
    """The client key wants a passphrase, which the agent does not have."""


def _no_passphrase() -> bytes:
    # Without a callback, OpenSSL would ask for the passphrase on the terminal and wait.
    raise _EncryptedKeyError


def _reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)
    if reason == "KEY_VALUES_MISMATCH":
        return "the key does not belong to the certificate"
    if reason == "NO_CERTIFICATE_OR_CRL_FOUND":
        return "holds no PEM certificate"
    if "PEM lib" in str(exc):
        return "not a PEM certificate and private key OpenSSL can read"
    return str(reason or exc.strerror or exc)
