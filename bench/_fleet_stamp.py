"""Stamps the broker's connection log lines to the millisecond, as they appear.

Mosquitto's log timestamps are whole seconds (``log_timestamp_format`` is handed to strftime,
which has nothing finer), too coarse for CONNECTs spread over half a second. Mosquitto flushes
its log file at every line, so a process that follows the file sees each line within its poll
step. It is a process of its own, not a task of the benchmark, so that the fleet's messages the
benchmark decodes do not hold its clock back.

    python -m bench._fleet_stamp LOG OUT

appends ``<unix time> <line>`` to OUT for every connection line of LOG, until terminated.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import TextIO

#: The lines worth a stamp: a TCP connection accepted, and a CONNECT taken.
STAMPED = ("New connection from", "New client connected from")
POLL_STEP = 0.005  # seconds: the stamps' resolution, for a few per mille of a core


def follow(log: Path, out: TextIO) -> None:
    while not log.exists():
        time.sleep(POLL_STEP)
    with log.open(errors="replace") as lines:
        partial = ""
        while True:
            chunk = lines.readline()
            if not chunk:
                out.flush()
                time.sleep(POLL_STEP)
                continue
            partial += chunk
            if not partial.endswith("\n"):  # the rest of the line is still being written
                continue
            if any(marker in partial for marker in STAMPED):
                out.write(f"{time.time():.3f} {partial}")
            partial = ""


def main() -> None:
    log, stamps = Path(sys.argv[1]), Path(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leaves through the file's close
    with stamps.open("a") as out:
        follow(log, out)


if __name__ == "__main__":
    main()
