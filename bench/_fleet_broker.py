"""The fleet's broker: one Mosquitto of the benchmark's own, and what its log says about who
connected when.

Every connection is logged (``connection_messages true``): ``New connection from`` for each
TCP connection accepted (an agent's reachability probe, or the connection its CONNECT comes
on), ``New client connected from … as ID`` for each CONNECT taken. The log's own stamps are
whole seconds; ``bench._fleet_stamp``, a process beside the broker, stamps each such line to the
millisecond as it appears.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
#: ``<unix time> <broker's second>: New client connected from ADDR as ID (p5, c0, k60).``
STAMPED_CONNECT = re.compile(r"^(\d+\.\d+) (\d+): New client connected from \S+ as (\S+) ")
STAMPED_ACCEPT = re.compile(r"^(\d+\.\d+) (\d+): New connection from ")
LOGGED_CONNECT = re.compile(r"^(\d+): New client connected from \S+ as (\S+) ")
#: Log lines after the restart that would say the reconnection went wrong.
TROUBLE = {
    "takeover": re.compile(r"^(\d+): Client \S+ already connected, closing old connection"),
    "keepalive": re.compile(r"^(\d+): Client \S+ has exceeded timeout"),
    "socket error": re.compile(r"^(\d+): Socket error on client (?!<unknown>)"),
    "refused": re.compile(r"^(\d+): .*(?:not authori[sz]ed|refused)", re.IGNORECASE),
}


@dataclass(frozen=True)
class Connect:
    """One CONNECT the broker took: when (our stamp, and the broker's whole second), from whom."""

    at: float
    second: int
    client: str


class FleetBroker:
    """Mosquitto with persistent sessions (kept across its restart), an unlimited queue for the
    watching subscriber (``max_queued_messages 0``: a gap can only be an agent's doing) and
    every connection logged and stamped."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.log = workdir / "mosquitto.log"
        self.stamps = workdir / "stamps.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.stamper: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def configure(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "mosquitto.conf").write_text(
            # as ourselves: run as root, Mosquitto would become `mosquitto` and lose its files
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"listener {self.port} {HOST}\nallow_anonymous true\n"
            "max_queued_messages 0\n"
            f"persistence true\npersistence_location {self.workdir}/\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages true\n"
        )

    def start_stamper(self) -> None:
        self.stamper = subprocess.Popen(
            [sys.executable, "-m", "bench._fleet_stamp", str(self.log), str(self.stamps)]
        )

    async def start(self) -> float:
        """Start Mosquitto; returns the Unix time at which it listened."""
        self.process = self._spawn()
        deadline = time.monotonic() + 30
        # Watched in /proc, not by connecting: a connection of ours would be in the log beside
        # the agents' probes.
        while not listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log}")
            await asyncio.sleep(0.002)
        return time.time()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Popen returns at once (the exec is the child's): nothing for the event loop to wait
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.workdir / "mosquitto.conf"
        return subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # it saves the sessions and their queues on the way out
            self.process.wait(timeout=60)
            self.process = None

    def close(self) -> None:
        self.stop()
        if self.stamper is not None:
            self.stamper.send_signal(signal.SIGTERM)
            self.stamper.wait(timeout=10)
            self.stamper = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def connects_since(self, since: float) -> list[Connect]:
        """The CONNECTs taken at or after ``since`` (Unix time), in order."""
        connects = []
        for line in _lines(self.stamps):
            if (match := STAMPED_CONNECT.match(line)) and float(match[1]) >= since:
                connects.append(Connect(float(match[1]), int(match[2]), match[3]))
        return connects

    def accepts_since(self, since: float) -> list[float]:
        """When each TCP connection at or after ``since`` was accepted (probes and CONNECTs)."""
        return [
            float(m[1])
            for line in _lines(self.stamps)
            if (m := STAMPED_ACCEPT.match(line)) and float(m[1]) >= since
        ]

    def logged_connects_since(self, since: float) -> int:
        """CONNECTs in the broker's own log from the second of ``since`` on (a cross-check of
        the stamps: they must be the same lines)."""
        return sum(
            1
            for line in _lines(self.log)
            if (m := LOGGED_CONNECT.match(line)) and int(m[1]) >= int(since)
        )

    def trouble_since(self, since: float) -> dict[str, int]:
        """Lines of the kinds in ``TROUBLE`` from the second of ``since`` on, counted by kind."""
        counts: Counter[str] = Counter()
        for line in _lines(self.log):
            for kind, pattern in TROUBLE.items():
                if (m := pattern.match(line)) and int(m[1]) >= int(since):
                    counts[kind] += 1
        return dict(counts)


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (``/proc/net/tcp``, state 0A)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return any(fields[1] == wanted and fields[3] == "0A" for fields in map(str.split, table))


def tcp_counters() -> dict[str, int]:
    """The machine's TCP counters (``/proc/net/snmp`` and ``netstat``): connections opened
    (``ActiveOpens``), refused (``AttemptFails``), and a listener's full queues."""
    counters: dict[str, int] = {}
    for name in ("/proc/net/snmp", "/proc/net/netstat"):
        rows = [line.split() for line in Path(name).read_text().splitlines()]
        for head, values in zip(rows[::2], rows[1::2], strict=True):
            if head[0] in ("Tcp:", "TcpExt:"):
                counters.update(zip(head[1:], map(int, values[1:]), strict=True))
    keep = ("ActiveOpens", "AttemptFails", "ListenOverflows", "ListenDrops")
    return {key: counters.get(key, 0) for key in keep}


# --- figures from the stamps


def per_second(seconds: Sequence[int]) -> Counter[int]:
    """Events per whole second of the broker's clock."""
    return Counter(seconds)


def peak_within(times: Sequence[float], width: float) -> int:
    """The most events in any span of ``width`` seconds (not only spans that start on a whole
    second: a burst across a second's boundary counts whole)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + width) - i for i, t in enumerate(ordered)), default=0
    )
