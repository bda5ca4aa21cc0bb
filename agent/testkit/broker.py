"""A real Mosquitto broker on a free loopback port, stoppable and restartable on the same port.

Besides its plain, anonymous listener (``url``: the tests' own subscribers use it), the broker can
have a *secured* listener (``secure_url``) the agent under test connects to: TLS with the rig's
test certificates (``certs``; ``require_certificate`` for mutual TLS) and/or a password file
(``users``). Each listener keeps its own authentication (``per_listener_settings``), so a test can
watch what the agent publishes without the agent's credentials.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .certs import Certs
from .net import free_port, wait_listening


class Broker:
    """``mosquitto`` run as our own child process; stopped by its PID."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        certs: Certs | None = None,
        require_certificate: bool = False,
        users: Mapping[str, str] | None = None,
        deny: Sequence[str] = (),
        settings: Mapping[str, object] | None = None,
        deny_patterns: Sequence[str] = (),
    ) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed: run `apt-get install mosquitto`")
        if require_certificate and certs is None:
            raise ValueError("require_certificate needs certs")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.log = workdir / "mosquitto.log"
        self.certs = certs
        self.require_certificate = require_certificate
        self.users = dict(users) if users is not None else None
        self.secure_port = free_port() if certs is not None or users is not None else None
        #: Topics no client of the plain listener may publish to (an ACL): the broker refuses
        #: them (MQTT 5: a PUBACK reason code; 3.1.1: acknowledged and dropped).
        self.deny = list(deny)
        #: ACL patterns (mosquitto's ``pattern deny``: ``%c`` is each client's own id) denied
        #: to every client of the plain listener: ``edge/%c/telemetry`` refuses an agent whose
        #: client id is its agent id its own telemetry, while subscribers still read it (a
        #: topic in ``deny`` is denied to readers too, and what was queued for them is dropped).
        self.deny_patterns = list(deny_patterns)
        #: Further mosquitto.conf settings, e.g. ``{"message_size_limit": 4000,
        #: "max_packet_size": 4000, "max_inflight_messages": 1}``; changed before a restart
        #: they apply from it.
        self.settings: dict[str, object] = dict(settings or {})
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def secure_url(self) -> str:
        """The listener with TLS and/or passwords: ``mqtts://`` when it has certificates."""
        if self.secure_port is None:
            raise RuntimeError("this broker has no secured listener: pass certs or users")
        return f"{'mqtts' if self.certs else 'mqtt'}://{self.host}:{self.secure_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            # Run as whoever runs the tests: started by root, mosquitto would otherwise become
            # user "mosquitto" and could not read its password file or write its log here.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "per_listener_settings true\n"
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            + self._acl()
            + self._secure_listener()
            + "".join(f"{key} {value}\n" for key, value in self.settings.items())
            + "persistence true\n"  # sessions survive a restart, as on a production broker
            f"persistence_location {self.workdir}/\n"
            f"log_dest file {self.log}\n"
            # information: "running" once every listener is open, which start() waits for
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"  # a refused client is a line: tests count attempts
        )
        before = len(self.log_text())
        self._process = subprocess.Popen(
            [self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            self._wait_running(before)
            wait_listening(self.host, self.port)
            if self.secure_port is not None:
                wait_listening(self.host, self.secure_port)
        except TimeoutError:
            self.stop()
            raise TimeoutError(f"mosquitto did not start:\n{self.log_text()}") from None

    def _wait_running(self, log_start: int, timeout: float = 10.0) -> None:
        """Until this mosquitto says it runs: something else listening on its port (another
        test's broker) must not pass for it, as a connection test alone would let it."""
        deadline = time.monotonic() + timeout
        while True:
            said = self.log_text()[log_start:]
            if " running" in said:
                return
            exited = self._process is not None and self._process.poll() is not None
            if exited or "Error:" in said or time.monotonic() > deadline:
                raise TimeoutError("mosquitto did not say it runs")
            time.sleep(0.02)  # another process's log: no event to await

    def _acl(self) -> str:
        if not self.deny and not self.deny_patterns:
            return ""
        acl = self.workdir / "mosquitto.acl"
        if self.deny_patterns:
            # Mosquitto looks at patterns only when no topic line granted the access: with
            # patterns, everything is granted by a pattern too.
            denied = [*self.deny, *self.deny_patterns]
            acl.write_text("pattern readwrite #\n" + "".join(f"pattern deny {p}\n" for p in denied))
        else:
            acl.write_text("topic readwrite #\n" + "".join(f"topic deny {t}\n" for t in self.deny))
        return f"acl_file {acl}\n"

    def _secure_listener(self) -> str:
        if self.secure_port is None:
            return ""
        lines = [f"listener {self.secure_port} {self.host}"]
        if self.certs is not None:
            lines += [
                f"cafile {self.certs.ca}",
                f"certfile {self.certs.server_cert}",
                f"keyfile {self.certs.server_key}",
                f"require_certificate {str(self.require_certificate).lower()}",
            ]
        if self.users is not None:
            lines += ["allow_anonymous false", f"password_file {self._password_file()}"]
        else:
            lines.append("allow_anonymous true")
        return "\n".join(lines) + "\n"

    def _password_file(self) -> Path:
        """Mosquitto's own hashed password file, made with ``mosquitto_passwd``."""
        assert self.users is not None
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not Path(tool).exists():
            raise RuntimeError("mosquitto_passwd is missing: it ships with the mosquitto package")
        path = self.workdir / "mosquitto.passwd"
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
        for user, password in self.users.items():
            subprocess.run(
                [tool, "-b", str(path), user, password],
                capture_output=True,
                timeout=30,
                check=True,
            )
        return path

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()
