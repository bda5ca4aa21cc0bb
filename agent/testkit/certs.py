"""A throwaway certificate authority for TLS tests: a CA, a server and a client certificate.

Made with the ``openssl`` command, which every gateway image and CI runner has; without it the
``cryptography`` package is used, but only when it is already installed (no test dependency is
added for it). The certificates follow what Python 3.13's ``VERIFY_X509_STRICT`` asks for: a
critical basicConstraints on the CA and key identifiers on both ends of the chain.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Names the server certificate is valid for: the rig's broker listens on 127.0.0.1 only.
SERVER_NAMES = ("IP:127.0.0.1", "DNS:localhost")
DAYS = 2

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {names}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Certs:
    """PEM files of one test CA and the certificates it signed."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certs(
    directory: Path, name: str = "edge-agent test", server_names: Sequence[str] = SERVER_NAMES
) -> Certs:
    """A new CA named ``name`` in ``directory`` (created), with a server and a client cert.

    ``server_names`` are the server certificate's subject alternative names, written as OpenSSL
    does: ``IP:127.0.0.1``, ``DNS:localhost``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    certs = Certs(
        ca=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    openssl = shutil.which("openssl")
    if openssl:
        _with_openssl(openssl, directory, certs, name, server_names)
    else:
        _with_cryptography(certs, name, server_names)
    for key in (certs.ca_key, certs.server_key, certs.client_key):
        key.chmod(0o600)
    return certs


def _with_openssl(
    openssl: str, directory: Path, certs: Certs, name: str, server_names: Sequence[str]
) -> None:
    config = directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG.format(names=", ".join(server_names)))

    def run(*args: str) -> None:
        done = subprocess.run(
            [openssl, *args], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")

    def key(path: Path) -> None:
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))

    key(certs.ca_key)
    run(
        "req", "-new", "-x509", "-config", str(config), "-extensions", "ca",
        "-key", str(certs.ca_key), "-subj", f"/CN={name} CA", "-days", str(DAYS),
        "-out", str(certs.ca),
    )  # fmt: skip
    for serial, (cert, cert_key, section, common_name) in enumerate(
        (
            (certs.server_cert, certs.server_key, "server", "localhost"),
            (certs.client_cert, certs.client_key, "client", "gw-test"),
        ),
        start=2,
    ):
        key(cert_key)
        request = cert.with_suffix(".csr")
        run(
            "req", "-new", "-config", str(config), "-key", str(cert_key),
            "-subj", f"/CN={common_name}", "-out", str(request),
        )  # fmt: skip
        run(
            "x509", "-req", "-in", str(request), "-CA", str(certs.ca),
            "-CAkey", str(certs.ca_key), "-set_serial", str(serial), "-days", str(DAYS),
            "-extfile", str(config), "-extensions", section, "-out", str(cert),
        )  # fmt: skip
        request.unlink()


def _with_cryptography(certs: Certs, name: str, server_names: Sequence[str]) -> None:
    try:
        from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives import (  # type: ignore[import-not-found, unused-ignore]
            hashes,
            serialization,
        )
        from cryptography.hazmat.primitives.asymmetric import (  # type: ignore[import-not-found, unused-ignore]
            ec,
        )
        from cryptography.x509.oid import (  # type: ignore[import-not-found, unused-ignore]
            ExtendedKeyUsageOID,
            NameOID,
        )
    except ImportError:
        raise RuntimeError(
            "TLS tests need the openssl command (apt-get install openssl) or the cryptography "
            "package"
        ) from None
    import datetime
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)

    def write_key(path: Path) -> ec.EllipticCurvePrivateKey:
        private = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return private

    def subject(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def usage(*, signing: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=not signing,
            content_commitment=False,
            key_encipherment=not signing,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=signing,
            crl_sign=signing,
            encipher_only=False,
            decipher_only=False,
        )

    ca_key = write_key(certs.ca_key)
    ca_name = subject(f"{name} CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(signing=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    certs.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    alternative_names = x509.SubjectAlternativeName(
        [
            x509.IPAddress(ipaddress.ip_address(value)) if kind == "IP" else x509.DNSName(value)
            for kind, _, value in (n.partition(":") for n in server_names)
        ]
    )
    for serial, (path, key_path, common_name, purpose) in enumerate(
        (
            (certs.server_cert, certs.server_key, "localhost", ExtendedKeyUsageOID.SERVER_AUTH),
            (certs.client_cert, certs.client_key, "gw-test", ExtendedKeyUsageOID.CLIENT_AUTH),
        ),
        start=2,
    ):
        private = write_key(key_path)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject(common_name))
            .issuer_name(ca_name)
            .public_key(private.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(signing=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), False)
            .add_extension(authority, critical=False)
        )
        if purpose == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(alternative_names, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
