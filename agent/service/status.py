"""``edge-agent status``: the running agent answers on a Unix socket in its data dir (README.md,
"Command line").

The agent serves ``status.sock``; each client that connects is sent one JSON snapshot and the
connection is closed. The socket is mode 0600 from the moment it exists: only the agent's user and
root may ask, since the status names devices, the broker and the last raw frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from ..errors import AgentError

log = logging.getLogger(__name__)

#: Under the data dir.
STATUS_SOCKET = "status.sock"
#: How long a client that does not read may hold a connection open.
SEND_TIMEOUT = 5.0
#: The private directory (mode 0700) the socket is bound in before it is moved into place.
_BIND_DIR = ".status"
#: How often a status socket that could not be made is tried again, in seconds.
BIND_RETRY = 30.0
#: Longest Unix socket path Linux accepts (sun_path is 108 bytes with its NUL).
MAX_PATH = 107


class StatusError(AgentError):
    """The running agent's status cannot be had (not running, not allowed, garbled answer)."""


def status_path(data_dir: Path) -> Path:
    """Where the agent using ``data_dir`` serves its status."""
    return data_dir / STATUS_SOCKET


class StatusServer:
    """Serve ``json.dumps(snapshot())`` to whoever connects to the Unix socket at ``path``.

    ``snapshot`` is called in the event loop, so it may read the agent's state without locks.
    The socket is bound inside a fresh directory of mode 0700 next to ``path``, made 0600, and
    only then renamed onto ``path``: no one else can reach it before its mode is right, and a
    stale socket left by a killed agent is replaced in the same step. (The caller holds the data
    dir lock, so no live agent is using ``path``.) On exit the file is removed, and the accept
    task and every client's task are cancelled and awaited.
    """

    def __init__(
        self, path: Path, snapshot: Callable[[], dict[str, Any]], retry: float = BIND_RETRY
    ) -> None:
        self.path = path
        self.snapshot = snapshot
        #: A socket that cannot be made (read-only or full data dir) is tried again this often.
        self.retry = retry
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._accepter: asyncio.Task[None] | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._failing = False  # the snapshot raised last time: already logged

    async def __aenter__(self) -> StatusServer:
        try:
            self._sock = self._bind()
        except StatusError as exc:
            # A read-only or full data dir is no reason to stop polling: try again later.
            log.warning("status: %s; trying again every %gs", exc, self.retry)
            self._accepter = asyncio.create_task(self._bind_later(), name="status")
            return self
        self._accepter = asyncio.create_task(self._accept(self._sock), name="status")
        log.debug("status: serving on %s", self.path)
        return self

    async def _bind_later(self) -> None:
        while True:
            await asyncio.sleep(self.retry)
            try:
                self._sock = self._bind()
            except StatusError:
                continue
            log.info("status: serving on %s", self.path)
            await self._accept(self._sock)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):  # first, so that no new client finds it
            if self._inode is not None and self.path.lstat().st_ino == self._inode:
                self.path.unlink()
        tasks = [t for t in (self._accepter, *self._clients) if t is not None]
        for task in tasks:
            task.cancel()
        # Our own tasks, all of which end at their first cancellation: no retry loop needed.
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _bind(self) -> socket.socket:
        # A fixed name, no longer than STATUS_SOCKET so that binding works wherever serving
        # would; only this agent (holding the data dir lock) ever uses it.
        private = self.path.parent / _BIND_DIR
        bound = private / "s"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _remove_bind_dir(private)  # left by an agent killed while binding
            private.mkdir(mode=0o700)  # the umask can only take bits away
            sock.bind(os.fspath(bound))
            os.chmod(bound, 0o600)
            os.replace(bound, self.path)
            self._inode = self.path.lstat().st_ino
            sock.listen(16)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            if len(os.fsencode(self.path)) > MAX_PATH:
                reason += f" (a Unix socket path is at most {MAX_PATH} bytes: shorten data_dir)"
            raise StatusError(f"cannot serve the status socket {self.path}: {reason}") from None
        finally:
            with contextlib.suppress(OSError):
                _remove_bind_dir(private)
        return sock

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # e.g. out of file descriptors: try again later
                log.warning("status: cannot accept a client: %s", exc)
                await asyncio.sleep(1)
                continue
            task = asyncio.create_task(self._serve(conn), name="status client")
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with conn:
            conn.setblocking(False)
            payload = self._payload()
            # A client that hangs up early, or never reads, is its own problem.
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(loop.sock_sendall(conn, payload), SEND_TIMEOUT)

    def _payload(self) -> bytes:
        try:
            text = json.dumps(self.snapshot(), ensure_ascii=False)
        except Exception as exc:  # a bug in the snapshot must not stop the server
            if not self._failing:
                log.exception("status: cannot build the snapshot")
            self._failing = True
            text = json.dumps({"error": f"cannot build the status: {type(exc).__name__}: {exc}"})
        else:
            self._failing = False
        return (text + "\n").encode()


def _remove_bind_dir(private: Path) -> None:
    """Remove the bind directory and the socket in it, and nothing else: a directory with other
    things in it (not ours) makes rmdir fail."""
    if private.is_symlink() or private.is_file():
        private.unlink()
    elif private.is_dir():
        (private / "s").unlink(missing_ok=True)
        private.rmdir()


async def query_status(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the agent serving ``path`` for its status; a StatusError says why it cannot be had."""
    data_dir = path.parent
    try:
        data = await asyncio.wait_for(_receive(path), timeout)
    except FileNotFoundError:
        raise StatusError(
            f"no agent is running with data dir {data_dir} (no status socket)"
        ) from None
    except ConnectionRefusedError:
        raise StatusError(
            f"the agent that used {data_dir} is not running (stale status socket {path})"
        ) from None
    except PermissionError:
        raise StatusError(
            f"permission denied on {path}: run as the edge-agent user or root, "
            "e.g. sudo -u edge-agent edge-agent status"
        ) from None
    except asyncio.TimeoutError:
        raise StatusError(
            f"the agent with data dir {data_dir} did not answer within {timeout:g}s "
            "(is it stuck? see journalctl -u edge-agent)"
        ) from None
    except OSError as exc:
        raise StatusError(f"cannot ask the agent on {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise StatusError(
            f"the agent with data dir {data_dir} hung up without answering (is it stopping?)"
        )
    try:
        status = json.loads(data.decode())
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both are
        raise StatusError(
            f"the agent with data dir {data_dir} sent a status that is not JSON: {exc}"
        ) from None
    if not isinstance(status, dict):
        raise StatusError(
            f"the agent with data dir {data_dir} sent a status that is not a JSON object"
        )
    return status


async def _receive(path: Path) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, os.fspath(path))
        chunks = []
        while chunk := await loop.sock_recv(sock, 65536):
            chunks.append(chunk)
        return b"".join(chunks)


def status_command(data_dir: Path, as_json: bool, out: TextIO, err: TextIO | None = None) -> int:
    """``edge-agent status``: the running agent's status for a person (or as JSON); 0, or 1 with
    one line on ``err`` (default stderr) when it cannot be had."""
    err = err if err is not None else sys.stderr
    try:
        status = asyncio.run(query_status(status_path(data_dir)))
        if "error" in status:
            raise StatusError(
                f"the agent with data dir {data_dir} cannot report its status: {status['error']}"
            )
    except StatusError as exc:
        print(f"edge-agent status: {exc}", file=err)
        return 1
    if as_json:
        print(json.dumps(status, indent=2, ensure_ascii=False), file=out)
    else:
        print("\n".join(format_status(status)), file=out)
    return 0


# --- the human view -------------------------------------------------------------------------

LABEL = 9  # width of the section labels


def format_status(status: Mapping[str, Any]) -> list[str]:
    """What a technician reads: agent, link, buffer, gateway, buses, then a line per device (with
    the last raw frames under a failing one). Every key but ``devices`` may be missing."""
    now = status.get("now")
    now_ms = now if isinstance(now, int) else int(time.time() * 1000)
    lines: list[str] = []
    lines += _agent_lines(status.get("agent") or {}, now_ms)
    if pushed := status.get("config"):
        lines.append(_more(_config_text(pushed)))
    if link := status.get("link"):
        lines += _link_lines(link)
    if buffer := status.get("buffer"):
        lines.append(_section("buffer", _buffer_text(buffer, now_ms)))
    if gateway := status.get("gateway"):
        lines.append(_section("gateway", _gateway_text(gateway)))
    if buses := status.get("buses"):
        lines.append(_section("buses", _buses_text(buses)))
    lines += _device_lines(status.get("devices") or {}, now_ms)
    return lines


def _section(label: str, text: str) -> str:
    return f"{label:<{LABEL}}{text}".rstrip()


def _more(text: str) -> str:
    return " " * LABEL + text


def _agent_lines(agent: Mapping[str, Any], now_ms: int) -> list[str]:
    version = f"edge-agent {agent.get('version', '?')}"
    pid = f", pid {agent['pid']}" if "pid" in agent else ""
    lines = [_section("agent", f"{agent.get('id', '?')} ({version}{pid})")]
    started = agent.get("started")
    if isinstance(started, int):
        when = datetime.fromtimestamp(started / 1000).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(_more(f"started {when}, up {human_duration((now_ms - started) / 1000)}"))
    if agent.get("config"):
        lines.append(_more(f"config {agent['config']}"))
    return lines


def _config_text(config: Mapping[str, Any]) -> str:
    """The running configuration's hash (``meta``'s), and the last push and how it ended."""
    text = f"config hash {str(config.get('hash', '?'))[:19]}…"
    push = config.get("push")
    if isinstance(push, Mapping):
        text += f", last push {push.get('id')}: {str(push.get('state', '?')).replace('_', ' ')}"
    return text


def _link_lines(link: Mapping[str, Any]) -> list[str]:
    state = str(link.get("state", "?"))
    connected = state == "connected"
    broker = f" {'to' if connected else 'from'} {link['broker']}" if link.get("broker") else ""
    shown = state if connected else state.upper()
    counts = []
    if "reconnects" in link:
        counts.append(_count(link["reconnects"], "reconnect"))
    if "sent" in link:
        counts.append(f"{_count(link['sent'], 'reading')} sent")
    if link.get("refused"):
        counts.append(f"{_count(link['refused'], 'message')} REFUSED by the broker")
    if link.get("too_large"):
        counts.append(f"{_count(link['too_large'], 'sample')} too large for the broker, dropped")
    protocol = f" (MQTT {link['protocol']})" if link.get("protocol") else ""
    summary = f"{shown}{broker}{protocol}" + ("; " + ", ".join(counts) if counts else "")
    lines = [_section("link", summary)]
    if link.get("last_error"):
        lines.append(_more(f"last error: {link['last_error']}"))
    return lines


def _buffer_text(buffer: Mapping[str, Any], now_ms: int) -> str:
    parts = []
    if "depth" in buffer:
        depth = int(buffer["depth"])
        waiting = f"{_count(depth, 'sample')} waiting" if depth else "empty"
        oldest = buffer.get("oldest")
        if depth and isinstance(oldest, int):
            waiting += f", oldest {human_age(now_ms - oldest)}"
        parts.append(waiting)
    if "bytes" in buffer:
        parts.append(f"{human_size(buffer['bytes'])} on disk")
    if "dropped" in buffer:
        parts.append(f"{buffer['dropped']:,} dropped")
    return "; ".join(parts)


def _gateway_text(gateway: Mapping[str, Any]) -> str:
    parts = []
    if "load" in gateway:
        parts.append(f"load {gateway['load']:.2f}")
    if "mem_available" in gateway:
        parts.append(f"{human_size(gateway['mem_available'])} memory available")
    if "disk_free" in gateway:
        parts.append(f"{human_size(gateway['disk_free'])} disk free")
    if "temperature" in gateway:
        parts.append(f"SoC {gateway['temperature']:.1f} °C")
    return "; ".join(parts)


def _buses_text(buses: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for name, bus in buses.items():
        text = f"{name} {'connected' if bus.get('connected') else 'DISCONNECTED'}"
        if bus.get("overruns"):
            text += f" ({_count(bus['overruns'], 'overrun')})"
        parts.append(text)
    return "; ".join(parts)


def _device_lines(devices: Mapping[str, Mapping[str, Any]], now_ms: int) -> list[str]:
    if not devices:
        return [_section("devices", "none")]
    failing = sum(d.get("state") == "failing" for d in devices.values())
    degraded = sum(d.get("state") == "degraded" for d in devices.values())
    good = len(devices) - failing - degraded
    summary = f"{len(devices)}: {good} ok, " + (f"{degraded} degraded, " if degraded else "")
    lines = [_section("devices", f"{summary}{failing} failing")]
    width = max(len(name) for name in devices)
    for name, device in devices.items():
        is_failing = device.get("state") == "failing"
        state = "FAILING" if is_failing else str(device.get("state", "ok"))
        last_good = device.get("last_good")
        parts = [
            "last good "
            + (human_age(now_ms - last_good) if isinstance(last_good, int) else "never"),
        ]
        counts = f"{device.get('ok', 0):,} ok, {_count(device.get('errors', 0), 'error')}"
        if faults := device.get("faults"):
            counts += " (" + ", ".join(f"{kind} {n:,}" for kind, n in faults.items()) + ")"
        if device.get("overruns"):
            counts += f", {_count(device['overruns'], 'overrun')}"
        parts.append(counts)
        if device.get("missing"):
            parts.append(f"lacks {', '.join(device['missing'])}")
        if device.get("last_error"):
            parts.append(f"last error: {device['last_error']}")
        lines.append(f"  {name:<{width}}  {state:<8}  " + "; ".join(parts))
        if is_failing:
            lines += [" " * (width + 14) + str(frame) for frame in device.get("frames") or ()]
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def human_size(size: float) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units, as disks are sold)."""
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        size /= 1000
        if size < 1000 or unit == "TB":
            break
    return f"{size:.1f} {unit}" if size < 100 else f"{size:.0f} {unit}"


def human_duration(seconds: float) -> str:
    """``7380`` → ``"2 h 3 min"``: two units at most, the larger first."""
    s = int(seconds)
    if s < 60:
        return f"{max(s, 0)} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        hours, minutes = divmod(s // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(s // 3600, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def human_age(ms: int) -> str:
    """How long ago, for ``ms`` milliseconds ago: ``"3 min ago"``, ``"just now"``."""
    if ms < -1000:  # the gateway's clock was set back since
        return f"{human_duration(-ms / 1000)} in the future (the clock was set back)"
    if ms < 1000:
        return "just now"
    return f"{human_duration(ms / 1000)} ago"
