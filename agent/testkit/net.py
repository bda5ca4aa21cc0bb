"""Loopback ports for the rigs."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000


def ephemeral_low() -> int:
    """The first port the kernel hands to an outgoing connection (32768 when unknown)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive TCP ports that nothing holds right now.

    Chosen below the kernel's ephemeral range, never by binding port 0: a port from that range is
    free only until some outgoing connection (the agent reconnecting to a stopped broker, even a
    connect that meets itself) takes it as its own, and then a broker restarted on it finds its
    address in use.
    """
    top = max(ephemeral_low(), LOWEST_PORT + 1000) - count
    for _ in range(200):
        first = random.randrange(LOWEST_PORT, top)
        if all(_bindable(host, port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports on {host} below {top + count}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing holds right now, outside the range outgoing connections use."""
    return free_ports(1, host)


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    """Return once something accepts TCP connections on ``host:port``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)  # polling a port: there is no event to await from another process
