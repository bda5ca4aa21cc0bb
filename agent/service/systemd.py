"""sd_notify without a compiled dependency: one datagram to ``$NOTIFY_SOCKET``; the watchdog's
interval from ``$WATCHDOG_USEC``."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager; False when none listens."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never wait: a listener that stopped reading (a test rig, a wedged manager) fills
            # its queue, and a blocking send would stop the whole event loop with it.
            sock.setblocking(False)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.debug("sd_notify %s failed: %s", state, exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half systemd's ``WatchdogSec``; None when systemd
    watches no process, or another one (``$WATCHDOG_PID``)."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
