"""``[web]``: where the technician's page listens, its password, and whether it may write.

A page reachable from the network needs a password (``password_file``: HTTP Basic, any user
name), and writes need both the password and ``allow_writes``: ``check`` refuses either
mistake at its key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

from ..api import keys as conv
from .mqtt import loopback_host, read_password_file
from .sections import Section
from .types import WebSection

DEFAULT_LISTEN = "127.0.0.1:8080"
MAX_CLIENTS = 64
#: A page loads its style and its script at once: with one connection, one of them is refused.
MIN_CLIENTS = 4


def load_web(s: Section, relative: Callable[[str], Path]) -> WebSection:
    """The ``[web]`` table ``s``, every problem said at its key."""
    d = WebSection()
    enabled = bool(s.take("enabled", conv.boolean, False))
    listen = s.take("listen", conv.text, DEFAULT_LISTEN) or DEFAULT_LISTEN
    password_file = s.take("password_file", conv.text, None)
    allow_writes = bool(s.take("allow_writes", conv.boolean, False))
    max_clients = s.take("max_clients", _clients, d.max_clients)
    address = _listen(listen)
    if address is None:
        s.problem("listen", f'{conv.shown(listen)} is not HOST:PORT: write e.g. "{DEFAULT_LISTEN}"')
        address = (d.host, d.port)
    password = _password(s, relative, password_file) if password_file is not None else None
    if enabled and password is None and not loopback_host(address[0]) and password_file is None:
        s.problem(
            "listen",
            f"{listen} can be reached from the network: set [web] password_file (a file holding "
            "the page's password), or listen on 127.0.0.1",
        )
    if allow_writes and password_file is None:
        s.problem("allow_writes", "needs [web] password_file: no write without the password")
    s.finish()
    return WebSection(
        enabled, address[0], address[1], password, allow_writes, max_clients or d.max_clients
    )


def _clients(value: object) -> int:
    result = conv.in_range(1, MAX_CLIENTS)(value)
    if result < MIN_CLIENTS:
        raise ValueError(
            f"{result} is too few: a page loads its style and script, then asks two answers, "
            f"at once; at least {MIN_CLIENTS}"
        )
    return result


def _listen(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as a host and a port; None if it is not one."""
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or (":" in host and not _is_ip(host)):
        return None
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _password(s: Section, relative: Callable[[str], Path], file: str) -> str | None:
    """The page's password from ``file``; no message shows any of it."""
    secret = read_password_file(s, relative(file), file)
    if secret == "":
        s.problem("password_file", f"{file} is empty: write the page's password in it")
        return None
    return secret
