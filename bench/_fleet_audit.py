"""Where a sample the watcher never got was lost: still in the agent's buffer (never sent, or
not acknowledged), or acknowledged by the broker and then delivered to no one, or delivered to
a second subscriber and not to the watcher.

The second subscriber is ``mosquitto_sub`` in a process of its own, with a persistent session
of its own (it reconnects by itself when the broker restarts), writing every telemetry message
to a file. It is asked only about the agents with a gap.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterable
from pathlib import Path

HOST = "127.0.0.1"


class Audit:
    def __init__(self, port: int, prefix: str, out: Path) -> None:
        self.prefix = prefix
        self.out = out
        binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
        command = [binary, "-h", HOST, "-p", str(port), "-c", "-i", "fleet-audit", "-q", "1"]
        with out.open("wb") as lines:
            self.process = subprocess.Popen(
                [*command, "-t", f"{prefix}/+/telemetry", "-F", "%t %p"], stdout=lines
            )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=10)

    def ids(self, agent: str) -> set[int]:
        """The sample ids of ``agent`` that reached the audit."""
        topic = f"{self.prefix}/{agent}/telemetry "
        seen: set[int] = set()
        with self.out.open(errors="replace") as lines:
            for line in lines:
                if line.startswith(topic):
                    with contextlib.suppress(ValueError):  # a line cut short at the stop
                        seen.update(s["id"] for s in json.loads(line[len(topic) :])["samples"])
        return seen


def buffered(buffer: Path, ids: Iterable[int]) -> set[int]:
    """Which of ``ids`` the agent's buffer still holds (read-only: the agent may be running)."""
    wanted = sorted(ids)
    if not wanted or not buffer.exists():
        return set()
    with contextlib.closing(sqlite3.connect(f"file:{buffer}?mode=ro", uri=True)) as db:
        marks = ",".join("?" * len(wanted))
        rows = db.execute(f"SELECT id FROM samples WHERE id IN ({marks})", wanted)
        return {row[0] for row in rows}
