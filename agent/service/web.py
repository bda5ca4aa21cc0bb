"""``[web]``: the agent's HTTP server for the technician's page, and its JSON API.

Served from the same snapshot ``edge-agent status`` reads (``status_snapshot``): no second
source of truth. Built on the standard library's asyncio streams, which cost no dependency and
no memory beyond the connections (an HTTP library would add both for four read-only routes).

Abuse is bounded: at most ``max_clients`` connections at once (503 beyond), a request head of
at most ``MAX_HEAD`` bytes read within ``READ_TIMEOUT`` (431, 408), one request per connection,
and an answer a browser that stops reading cannot hold for longer than ``WRITE_TIMEOUT``: a slow
or gone client costs its own task, never a poll or the uplink. With a password, every request
needs it (HTTP Basic, any user name; 401 without); the password is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from ..config.types import WebSection

log = logging.getLogger(__name__)

#: The most bytes a request line and its headers may take.
MAX_HEAD = 8192
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
#: What is read of a request left unread before its connection closes, and how long for.
UNREAD_LIMIT = 65536
UNREAD_WAIT = 1.0

Snapshot = Callable[[], dict[str, Any]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class WebServer:
    """Serves ``[web]`` while entered; a port it cannot listen on is one logged line, and the
    agent runs on without its page."""

    def __init__(self, section: WebSection, snapshot: Snapshot) -> None:
        self.section = section
        self.snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> WebServer:
        if not self.section.enabled:
            return self
        where = f"{self.section.host}:{self.section.port}"
        try:
            self._server = await asyncio.start_server(
                self._accept, self.section.host, self.section.port, limit=MAX_HEAD
            )
        except OSError as exc:
            log.error("web: cannot listen on %s (%s): the page is off", where, exc.strerror or exc)
            return self
        log.info("web: the page and its API on http://%s/", where)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= self.section.max_clients:
            await _send(reader, writer, 503, {"error": "too many clients: close another page"})
            return
        self._clients.add(task)
        try:
            status, body = await self._answer(reader)
            await _send(reader, writer, status, body, self._challenge(status))
        finally:
            self._clients.discard(task)

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            return 431, {"error": f"the request head is longer than {MAX_HEAD} bytes"}
        except (asyncio.IncompleteReadError, ConnectionError):
            return 400, {"error": "the request ended before its headers did"}
        except asyncio.TimeoutError:
            return 408, {"error": f"no whole request within {READ_TIMEOUT:g}s"}
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, {"error": "not an HTTP request line"}
        method, target = parts[0], parts[1]
        if not self._authorised(lines[1:]):
            return 401, {"error": "this page needs its password"}
        if method not in ("GET", "HEAD"):
            return 405, {"error": f"{method} is not served here: the API is read-only"}
        return self._route(unquote(urlsplit(target).path))

    def _route(self, path: str) -> tuple[int, dict[str, Any]]:
        if path == "/api/status":
            return 200, self.snapshot()
        if path.startswith("/api/devices/"):
            name = path.removeprefix("/api/devices/")
            devices = self.snapshot().get("devices", {})
            if name in devices:
                return 200, {"name": name, **devices[name]}
            return 404, {"error": f"no device {name!r}", "devices": sorted(devices)}
        return 404, {"error": f"nothing at {path}", "api": ["/api/status", "/api/devices/NAME"]}

    def _authorised(self, headers: list[str]) -> bool:
        password = self.section.password
        if password is None:
            return True
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() != "authorization":
                continue
            scheme, _, encoded = value.strip().partition(" ")
            if scheme.lower() != "basic":
                return False
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return False
            given = decoded.partition(":")[2]
            return hmac.compare_digest(given.encode(), password.encode())
        return False

    def _challenge(self, status: int) -> dict[str, str]:
        if status != 401:
            return {}
        return {"WWW-Authenticate": 'Basic realm="edge-agent", charset="UTF-8"'}


async def _send(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> None:
    """The answer, then the connection closed: a client that stops reading is dropped. What the
    client sent and was not read (a request refused unread, the rest of one too long) is taken
    and dropped first, briefly: closed with it unread, the connection would be reset, and the
    client could lose the answer."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(data)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        if writer.can_write_eof():
            writer.write_eof()
        await asyncio.wait_for(reader.read(UNREAD_LIMIT), UNREAD_WAIT)
    except (ConnectionError, asyncio.TimeoutError):
        pass  # a browser gone or stuck: its loss
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT)
