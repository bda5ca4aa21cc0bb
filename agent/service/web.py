"""``[web]``: the agent's HTTP server for the technician's page, and its JSON API.

Served from the same snapshot ``edge-agent status`` reads (``status_snapshot``), with what only
the page shows beside it (each point's last hour, the recent log lines): no second source of
truth. Built on the standard library's asyncio streams, which cost no dependency and no memory
beyond the connections (an HTTP library would add both for a handful of routes).

Abuse is bounded: at most ``max_clients`` connections at once (503 beyond), a request head of
at most ``MAX_HEAD`` bytes and a body of at most ``MAX_BODY``, read within ``READ_TIMEOUT``
(431, 413, 408), one request per connection, and an answer a browser that stops reading cannot
hold for longer than ``WRITE_TIMEOUT``: a slow or gone client costs its own task, never a poll
or the uplink. With a password, every request needs it (HTTP Basic, any user name; 401
without); the password is never logged. Without one, a request must name the server by its
address (``_by_address``: no DNS rebinding). A write needs ``allow_writes`` (403 without) and a
request no other site can make a browser send (``_same_origin``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from ..config.types import WebSection
from ..model import Value

log = logging.getLogger(__name__)

#: The most bytes a request line and its headers may take, and a request's body (a write).
MAX_HEAD = 8192
MAX_BODY = 4096
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
#: What is read of a request left unread before its connection closes, and how long for.
UNREAD_LIMIT = 65536
UNREAD_WAIT = 1.0
#: The header a write must carry: a page on another site cannot make a browser send it
#: without asking first (CORS), which this server never allows.
WRITE_HEADER = "x-edge-agent"
#: The page's files, in this package: no CDN, no build step.
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
#: Sent with everything: nothing from elsewhere, no frame around the page (no clickjacking).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Sources:
    """What the page shows and does, from the running agent."""

    #: What ``edge-agent status`` shows.
    snapshot: Callable[[], dict[str, Any]]
    #: One device of the snapshot with its points, units and request plan; None if unknown.
    device: Callable[[str], dict[str, Any] | None]
    #: One device's points over the last hour; None if unknown.
    history: Callable[[str], dict[str, Any] | None]
    #: Write (device, point, value, client address): the reply, as a command's.
    write: Callable[[str, str, Value, str], Awaitable[dict[str, Any]]]
    #: The recent log lines, oldest first.
    log_lines: Callable[[], list[dict[str, Any]]]


@dataclass
class Request:
    method: str
    #: The path's segments, each unquoted: ``/api/devices/a%2Fb`` is ``["api", "devices", "a/b"]``.
    segments: list[str]
    #: Header names in lower case.
    headers: dict[str, str]
    client: str
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def answer(status: int, body: Any) -> Response:
    """A JSON answer; what is not a finite number is ``null`` (JSON has no NaN), and a lone
    surrogate (a file name's byte that is not UTF-8, through os.fsdecode) its JSON escape."""
    text = json.dumps(_finite(body), ensure_ascii=False, separators=(",", ":"))
    return Response(status, text.encode("utf-8", "backslashreplace"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


#: Connections that have sent nothing yet (a browser opens some ahead of its requests) are
#: kept apart from ``max_clients``, at most this many times it; each for ``READ_TIMEOUT``.
SILENT_PER_CLIENT = 4


class WebServer:
    """Serves ``[web]`` while entered; a port it cannot listen on is one logged line, and the
    agent runs on without its page."""

    def __init__(self, section: WebSection, sources: Sources) -> None:
        self.section = section
        self.sources = sources
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        #: The connections that have sent nothing yet: a browser opens some ahead of its
        #: requests (preconnect); they take no place until their request begins.
        self._silent: set[asyncio.Task[None]] = set()
        self._assets: dict[str, bytes] = {}

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
        writes = "with writes" if self.section.allow_writes else "read-only"
        log.info("web: the page (%s) and its API on http://%s/", writes, where)
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
        tasks = [*self._clients, *self._silent]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            first = await self._first_byte(task, reader)
            if not first:  # silent until it went, or one too many that asks nothing
                writer.close()
                return
            if len(self._clients) >= self.section.max_clients:
                busy = answer(503, {"error": "too many clients: close another page"})
                await _send(reader, writer, busy, head_only=False)
                return
            self._clients.add(task)
            await self._serve(reader, writer, first)
        except asyncio.CancelledError:
            # The server stops: the connection goes with it. Not raised on: asyncio's streams
            # (3.11, 3.12) log a cancelled connection task as an error with its traceback.
            writer.close()
        finally:
            self._clients.discard(task)
            self._silent.discard(task)

    async def _first_byte(self, task: asyncio.Task[None], reader: asyncio.StreamReader) -> bytes:
        """The request's first byte, b"" when none came within ``READ_TIMEOUT`` (or there are
        too many silent connections already): until then the connection takes no place."""
        if len(self._silent) >= SILENT_PER_CLIENT * self.section.max_clients:
            return b""
        self._silent.add(task)
        try:
            return await asyncio.wait_for(reader.read(1), READ_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError):
            return b""
        finally:
            self._silent.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes
    ) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else "?"
        try:
            request = await self._read(reader, client, first)
            if isinstance(request, Response):
                response, head_only = request, False
            else:
                response, head_only = await self._respond(request), request.method == "HEAD"
        except Exception:  # a bug reading a request costs its answer, never the server
            log.exception("web: cannot read a request from %s", client)
            response = answer(500, {"error": "internal error: see the agent's log"})
            head_only = False
        if response.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="edge-agent", charset="UTF-8"'
        await _send(reader, writer, response, head_only)

    async def _read(
        self, reader: asyncio.StreamReader, client: str, first: bytes
    ) -> Request | Response:
        """The request (``first``: its first byte, read already), or the answer to one that
        cannot be read."""
        try:
            head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            return answer(431, {"error": f"the request head is longer than {MAX_HEAD} bytes"})
        except (asyncio.IncompleteReadError, ConnectionError):
            return answer(400, {"error": "the request ended before its headers did"})
        except asyncio.TimeoutError:
            return answer(408, {"error": f"no whole request within {READ_TIMEOUT:g}s"})
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return answer(400, {"error": "not an HTTP request line"})
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        try:
            path = urlsplit(parts[1]).path
        except ValueError:  # "//[": an IPv6 host never closed
            return answer(400, {"error": "not an HTTP request line"})
        segments = [unquote(s) for s in path.split("/")[1:]]
        request = Request(parts[0], segments, headers, client)
        refused = self._refused(headers)  # before the body: a stranger's is never read
        if refused is not None:
            return refused
        if request.method == "POST" and _point_written(segments) is not None:
            body = await _body(reader, headers)
            if isinstance(body, Response):
                return body
            request.body = body
        return request

    async def _respond(self, request: Request) -> Response:
        try:
            if request.method in ("GET", "HEAD"):
                return self._get(request.segments)
            if request.method == "POST":
                return await self._post(request)
        except Exception:  # a bug costs one answer and one traceback, never the server
            log.exception("web: cannot answer %s /%s", request.method, "/".join(request.segments))
            return answer(500, {"error": "internal error: see the agent's log"})
        return answer(405, {"error": f"{request.method} is not served here"})

    def _get(self, segments: list[str]) -> Response:
        path = "/" + "/".join(segments)
        if path in ASSETS:
            return self._asset(path)
        match segments:
            case ["api", "status"]:
                return answer(200, self.sources.snapshot())
            case ["api", "log"]:
                return answer(200, {"lines": self.sources.log_lines()})
            case ["api", "devices", name]:
                return self._found(name, self.sources.device(name))
            case ["api", "devices", name, "history"]:
                return self._found(name, self.sources.history(name))
        return answer(
            404,
            {
                "error": f"nothing at {path}",
                "api": [
                    "/api/status",
                    "/api/devices/NAME",
                    "/api/devices/NAME/history",
                    "/api/log",
                ],
            },
        )

    def _found(self, name: str, body: dict[str, Any] | None) -> Response:
        if body is not None:
            return answer(200, body)
        devices = sorted(self.sources.snapshot().get("devices", {}))
        return answer(404, {"error": f"no device {name!r}", "devices": devices})

    async def _post(self, request: Request) -> Response:
        target = _point_written(request.segments)
        if target is None:
            return answer(
                405, {"error": "only a point is written here: POST /api/devices/NAME/points/POINT"}
            )
        device, point = target
        if not self.section.allow_writes:
            return answer(403, {"error": "writes are off: set [web] allow_writes = true"})
        refused = _same_origin(request.headers)
        if refused:
            log.warning("web: a write from %s refused: %s", request.client, refused)
            return answer(403, {"error": f"write refused: {refused}"})
        value = _written_value(request.body)
        if isinstance(value, Response):
            return value
        reply = await self.sources.write(device, point, value, request.client)
        reply.pop("id", None)
        return answer(200 if reply.get("ok") else 422, reply)

    def _asset(self, path: str) -> Response:
        name, content_type = ASSETS[path]
        if name not in self._assets:  # read once: a few kB, the same every time
            self._assets[name] = (resources.files(__package__) / "static" / name).read_bytes()
        return Response(200, self._assets[name], content_type)

    def _refused(self, headers: dict[str, str]) -> Response | None:
        """The answer to a request not served to its sender (401, 403), or None."""
        if not self._authorised(headers):
            return answer(401, {"error": "this page needs its password"})
        if self.section.password is None and not _by_address(headers.get("host")):
            host, port = self.section.host, self.section.port
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            return answer(
                403,
                {
                    "error": f"this page is reached by its address (http://{where}/), "
                    "not a name: without a password, a name could be another site's"
                },
            )
        return None

    def _authorised(self, headers: dict[str, str]) -> bool:
        password = self.section.password
        if password is None:
            return True
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        given = decoded.partition(":")[2]
        return hmac.compare_digest(given.encode(), password.encode())


def _by_address(host: str | None) -> bool:
    """Whether a request's ``Host`` is an IP address or ``localhost`` (or absent: no browser).
    Without a password, that is what stops DNS rebinding: another site's name, pointed at
    127.0.0.1 once its page is loaded, would make this page its own, to read from any tab."""
    if host is None:
        return True
    try:
        name = urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return False
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _point_written(segments: list[str]) -> tuple[str, str] | None:
    """The device and point a write's path names, if it is one."""
    match segments:
        case ["api", "devices", device, "points", point]:
            return device, point
    return None


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes | Response:
    length = headers.get("content-length", "")
    if not (length.isascii() and length.isdigit()):  # "²" is a digit to isdigit(), not to int()
        return answer(411, {"error": "a write needs its Content-Length"})
    digits = length.lstrip("0")
    # int() takes at most 4300 digits; a length of more than a few is too long anyway
    if len(digits) > len(str(MAX_BODY)) or int(digits or "0") > MAX_BODY:
        return answer(413, {"error": f"a write is at most {MAX_BODY} bytes"})
    try:
        return await asyncio.wait_for(reader.readexactly(int(digits or "0")), READ_TIMEOUT)
    except (asyncio.IncompleteReadError, ConnectionError):
        return answer(400, {"error": "the request ended before its body did"})
    except asyncio.TimeoutError:
        return answer(408, {"error": f"no whole request within {READ_TIMEOUT:g}s"})


def _same_origin(headers: dict[str, str]) -> str:
    """Why a write cannot have come from this page ("" if it can). Basic credentials go with
    any request a browser makes, so a write must be one only this page sends: JSON with our own
    header (another site's page would need CORS's leave, never given), and from this origin by
    what the browser says of it."""
    if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return "a write is JSON (Content-Type: application/json)"
    if headers.get(WRITE_HEADER) != "write":
        return f"a write carries the header {WRITE_HEADER.title()}: write"
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"it came from another site ({site})"
    origin = headers.get("origin")
    host = headers.get("host", "")
    if origin is not None and _netloc(origin) != host:
        return f"it came from another origin ({origin[:80]})"
    return ""


def _netloc(url: str) -> str | None:
    try:
        return urlsplit(url).netloc
    except ValueError:  # "http://[": not a URL, so no origin of ours
        return None


def _written_value(body: bytes) -> Value | Response:
    """The value in ``{"value": ...}``, or the answer saying what is wrong with the body."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json reads
        return answer(400, {"error": 'the body is not JSON: send {"value": ...}'})
    value = payload.get("value") if isinstance(payload, dict) else None
    if not isinstance(value, bool | int | float | str):
        return answer(400, {"error": 'send {"value": a number, true/false or a string}'})
    return value


async def _send(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    response: Response,
    head_only: bool,
) -> None:
    """The answer, then the connection closed: a client that stops reading is dropped. What the
    client sent and was not read (a request refused unread, the rest of one too long) is taken
    and dropped first, briefly: closed with it unread, the connection would be reset, and the
    client could lose the answer."""
    head = [
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in {**SECURITY_HEADERS, **response.headers}.items()),
    ]
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if not head_only:
            writer.write(response.body)
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
