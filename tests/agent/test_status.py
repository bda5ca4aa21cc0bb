"""`edge-agent status`: the socket the agent serves, the client's errors, the technician's view."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.service.status import (
    STATUS_SOCKET,
    StatusError,
    StatusServer,
    format_status,
    human_age,
    human_duration,
    human_size,
    query_status,
    status_command,
)
from agent.testkit import run

REPO = Path(__file__).resolve().parents[2]
NOW = 1_714_550_400_000  # ms
STARTED = NOW - (3 * 86400 + 4 * 3600 + 5 * 60) * 1000

FULL: dict[str, Any] = {
    "agent": {
        "id": "pumphouse-1",
        "version": "0.1.0",
        "started": STARTED,
        "pid": 1234,
        "config": "/etc/edge-agent/config.toml",
    },
    "config": {
        "hash": "sha256:9c0f3a1b2c3d4e5f6a7b8c9d",
        "push": {"id": "push-17", "state": "rolled_back", "at": NOW},
    },
    "link": {
        "state": "disconnected",
        "broker": "mqtts://broker.example:8883",
        "reconnects": 2,
        "sent": 12345,
        "last_error": "connection refused",
    },
    "buffer": {"depth": 120, "oldest": NOW - 185_000, "bytes": 1_234_567, "dropped": 0},
    "gateway": {
        "load": 0.4,
        "mem_available": 812_000_000,
        "disk_free": 12_345_678_901,
        "temperature": 48.25,
    },
    "buses": {
        "rs485": {"connected": True, "overruns": 0},
        "plc": {"connected": False, "overruns": 3},
    },
    "devices": {
        "pump": {
            "bus": "rs485",
            "state": "ok",
            "ok": 1234,
            "errors": 0,
            "overruns": 0,
            "last_good": NOW - 2000,
        },
        "well-2": {
            "bus": "plc",
            "state": "failing",
            "ok": 12,
            "errors": 345,
            "overruns": 3,
            "last_good": NOW - (2 * 3600 + 5 * 60) * 1000,
            "last_error": "no answer from unit 3",
            "faults": {"timeout": 300, "crc": 45},
            "frames": ["sent 03 03 00 00 00 0a c5 cd", "received 03 83 02 c0 f1"],
        },
    },
    "now": NOW,
}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data dir with a short path: Unix socket paths are limited to 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ea-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def snapshot() -> dict[str, Any]:
    return {"agent": {"id": "pi"}, "devices": {}}


def our_tasks() -> set[str]:
    """The names of the tasks running besides the test's own (and run()'s wait_for)."""
    return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("status")}


# --- the server ---------------------------------------------------------------------------


def test_the_socket_is_0600_serves_the_snapshot_and_is_removed(short_dir: Path) -> None:
    path = short_dir / STATUS_SOCKET
    old_umask = os.umask(0)  # a careless umask must not open it to everyone
    try:

        async def body() -> None:
            async with StatusServer(path, snapshot):
                mode = path.lstat().st_mode
                assert stat.S_ISSOCK(mode)
                assert stat.S_IMODE(mode) == 0o600
                assert await query_status(path) == snapshot()
                assert await query_status(path) == snapshot()  # one answer per connection
            assert not path.exists()
            assert our_tasks() == set()

        run(body(), 10)
    finally:
        os.umask(old_umask)
    assert os.listdir(short_dir) == []  # nor anything it bound in on the way


def test_a_stale_socket_and_a_leftover_bind_dir_are_replaced(short_dir: Path) -> None:
    path = short_dir / STATUS_SOCKET
    for stale in (path, short_dir / ".status" / "s"):  # a killed agent's, while or after binding
        stale.parent.mkdir(exist_ok=True)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(stale))

    async def body() -> None:
        with pytest.raises(StatusError) as refused:
            await query_status(path)
        assert str(refused.value) == (
            f"the agent that used {short_dir} is not running (stale status socket {path})"
        )
        async with StatusServer(path, snapshot):
            assert await query_status(path) == snapshot()

    run(body(), 10)
    assert os.listdir(short_dir) == []


def test_a_snapshot_that_raises_answers_an_error_and_the_server_goes_on(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_dir / STATUS_SOCKET
    broken = [True]

    def flaky() -> dict[str, Any]:
        if broken[0]:
            raise RuntimeError("boom")
        return snapshot()

    async def body() -> None:
        async with StatusServer(path, flaky):
            for _ in range(3):
                answer = await query_status(path)
                assert answer == {"error": "cannot build the status: RuntimeError: boom"}
            broken[0] = False
            assert await query_status(path) == snapshot()

    with caplog.at_level(logging.ERROR, logger="agent.service.status"):
        run(body(), 10)
    errors = [r for r in caplog.records if r.name == "agent.service.status"]
    assert [r.getMessage() for r in errors] == ["status: cannot build the snapshot"]  # once
    assert errors[0].exc_info is not None


def test_clients_that_hang_up_or_never_read_do_not_hurt(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_dir / STATUS_SOCKET
    big = {"agent": {"id": "x" * 2_000_000}, "devices": {}}  # more than a socket buffer holds

    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with StatusServer(path, lambda: big):
            for _ in range(50):  # connect and go away at once
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.setblocking(False)
                    await loop.sock_connect(sock, str(path))
            idle = socket.socket(socket.AF_UNIX)
            idle.setblocking(False)
            await loop.sock_connect(idle, str(path))  # and one that never reads: its sender waits
            await asyncio.sleep(0.2)
            assert await query_status(path) == big  # others are served meanwhile
        idle.close()
        assert our_tasks() == set()  # the waiting sender was cancelled, not left behind

    with caplog.at_level(logging.DEBUG, logger="agent.service.status"):
        run(body(), 10)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_server_that_cannot_bind_says_why_and_tries_again(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A data dir that cannot take the socket (missing, read-only, full) is no reason to stop
    the agent: it says why once and serves as soon as it can."""
    missing = short_dir / "nope" / STATUS_SOCKET

    async def body() -> None:
        async with StatusServer(missing, snapshot, retry=0.05):
            missing.parent.mkdir()
            answer = None
            for _ in range(200):  # the retry binds within a few of its periods
                try:
                    answer = await query_status(missing, 1.0)
                    break
                except StatusError:
                    await asyncio.sleep(0.05)
            assert answer == snapshot()

    with caplog.at_level(logging.WARNING, logger="agent.service.status"):
        run(body(), 20)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [
        f"status: cannot serve the status socket {missing}: No such file or directory; "
        "trying again every 0.05s"
    ]

    deep = short_dir / ("d" * 100)
    deep.mkdir()

    async def too_long() -> None:
        async with StatusServer(deep / STATUS_SOCKET, snapshot, retry=60):
            pass

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agent.service.status"):
        run(too_long(), 10)
    message = caplog.records[0].getMessage()
    assert message.endswith(
        "(a Unix socket path is at most 107 bytes: shorten data_dir); trying again every 60s"
    )
    assert os.listdir(deep) == []


# --- the client's errors ------------------------------------------------------------------


def query_error(path: Path, timeout: float = 5.0) -> str:
    with pytest.raises(StatusError) as error:
        run(query_status(path, timeout))
    return str(error.value)


def test_no_socket_means_no_agent(short_dir: Path) -> None:
    assert query_error(short_dir / STATUS_SOCKET) == (
        f"no agent is running with data dir {short_dir} (no status socket)"
    )
    assert query_error(short_dir / "gone" / STATUS_SOCKET) == (
        f"no agent is running with data dir {short_dir / 'gone'} (no status socket)"
    )


def test_a_data_dir_that_is_a_file(short_dir: Path) -> None:
    (short_dir / "file").write_text("")
    path = short_dir / "file" / STATUS_SOCKET
    assert query_error(path) == f"cannot ask the agent on {path}: Not a directory"


def _python_for_nobody() -> str | None:
    """An interpreter (3.10+) that the nobody user can run, or None."""
    for exe in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if exe is None:
            continue
        try:
            done = subprocess.run(
                [exe, "-c", "import sys; sys.exit(sys.version_info < (3, 10))"],
                user=65534,
                group=65534,
                extra_groups=[],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if done.returncode == 0:
            return exe
    return None


def test_permission_denied_names_the_fix(short_dir: Path) -> None:
    path = short_dir / STATUS_SOCKET
    expected = (
        f"permission denied on {path}: run as the edge-agent user or root, "
        "e.g. sudo -u edge-agent edge-agent status"
    )
    if os.geteuid() != 0:  # we cannot connect to a socket without write permission on it

        async def body() -> None:
            async with StatusServer(path, snapshot):
                path.chmod(0)
                with pytest.raises(StatusError) as error:
                    await query_status(path)
                assert str(error.value) == expected

        run(body(), 10)
        return
    # Root may connect to anything: ask as nobody, from a child process.
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter the nobody user can run")
    short_dir.chmod(0o711)
    client = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from agent.service.status import StatusError, query_status\n"
        "try:\n"
        "    print(asyncio.run(query_status(Path(sys.argv[1]))))\n"
        "except StatusError as exc:\n"
        "    print(exc)\n"
    )

    # A copy of the package that nobody can read (a clone may sit in a directory only root can
    # enter, as mktemp -d makes them).
    lib = Path(tempfile.mkdtemp(prefix="ea-lib-"))
    lib.chmod(0o755)
    shutil.copytree(REPO / "agent", lib / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    for place in lib.rglob("*"):
        place.chmod(0o755 if place.is_dir() else 0o644)

    async def as_nobody() -> None:
        async with StatusServer(path, snapshot):
            done = await asyncio.to_thread(
                subprocess.run,
                [python, "-c", client, str(path)],
                user=65534,
                group=65534,
                extra_groups=[],
                env={"PYTHONPATH": str(lib), "PYTHONDONTWRITEBYTECODE": "1"},
                cwd="/",
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.stdout.strip() == expected, done.stderr

    try:
        run(as_nobody(), 40)
    finally:
        shutil.rmtree(lib, ignore_errors=True)


def test_an_agent_that_does_not_answer_in_time(short_dir: Path) -> None:
    path = short_dir / STATUS_SOCKET
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        sock.listen(1)  # the connection waits in the backlog: nobody answers
        assert query_error(path, timeout=0.2) == (
            f"the agent with data dir {short_dir} did not answer within 0.2s "
            "(is it stuck? see journalctl -u edge-agent)"
        )


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", "hung up without answering (is it stopping?)"),
        (b"{not json", "sent a status that is not JSON: Expecting property name"),
        (b"\xff\xfe", "sent a status that is not JSON: 'utf-8' codec can't decode"),
        (b"[1, 2]\n", "sent a status that is not a JSON object"),
    ],
)
def test_a_garbled_answer(short_dir: Path, answer: bytes, error: str) -> None:
    path = short_dir / STATUS_SOCKET

    async def body() -> str:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
            sock.listen(1)
            sock.setblocking(False)
            query = asyncio.create_task(query_status(path))
            conn, _ = await loop.sock_accept(sock)
            with conn:
                await loop.sock_sendall(conn, answer)
            with pytest.raises(StatusError) as raised:
                await query
            return str(raised.value)

    assert run(body(), 10).startswith(f"the agent with data dir {short_dir} {error}")


# --- the command ----------------------------------------------------------------------------


def test_status_command_prints_the_view_or_json(short_dir: Path) -> None:
    path = short_dir / STATUS_SOCKET

    async def body() -> None:
        async with StatusServer(path, lambda: FULL):
            out, err = io.StringIO(), io.StringIO()
            code = await asyncio.to_thread(status_command, short_dir, False, out, err)
            assert (code, err.getvalue()) == (0, "")
            assert out.getvalue().splitlines() == format_status(FULL)
            out = io.StringIO()
            code = await asyncio.to_thread(status_command, short_dir, True, out, err)
            assert (code, err.getvalue()) == (0, "")
            assert json.loads(out.getvalue()) == FULL

    run(body(), 20)


def test_status_command_fails_in_one_line_when_no_agent_answers(short_dir: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert status_command(short_dir, False, out, err) == 1
    assert out.getvalue() == ""
    assert err.getvalue() == (
        f"edge-agent status: no agent is running with data dir {short_dir} (no status socket)\n"
    )

    async def body() -> None:
        def broken() -> dict[str, Any]:
            raise KeyError("buses")

        async with StatusServer(short_dir / STATUS_SOCKET, broken):
            err = io.StringIO()
            code = await asyncio.to_thread(status_command, short_dir, True, out, err)
            assert code == 1
            assert err.getvalue() == (
                f"edge-agent status: the agent with data dir {short_dir} cannot report its "
                "status: cannot build the status: KeyError: 'buses'\n"
            )

    logging.getLogger("agent.service.status").disabled = True  # its traceback is expected
    try:
        run(body(), 20)
    finally:
        logging.getLogger("agent.service.status").disabled = False
    assert out.getvalue() == ""


# --- the view -------------------------------------------------------------------------------


def test_the_full_view() -> None:
    started = datetime.fromtimestamp(STARTED / 1000).strftime("%Y-%m-%d %H:%M:%S")
    assert format_status(FULL) == [
        "agent    pumphouse-1 (edge-agent 0.1.0, pid 1234)",
        f"         started {started}, up 3 d 4 h",
        "         config /etc/edge-agent/config.toml",
        "         config hash sha256:9c0f3a1b2c3d…, last push push-17: rolled back",
        "link     DISCONNECTED from mqtts://broker.example:8883; 2 reconnects, 12,345 readings sent",
        "         last error: connection refused",
        "buffer   120 samples waiting, oldest 3 min ago; 1.2 MB on disk; 0 dropped",
        "gateway  load 0.40; 812 MB memory available; 12.3 GB disk free; SoC 48.2 °C",
        "buses    rs485 connected; plc DISCONNECTED (3 overruns)",
        "devices  2: 1 ok, 1 failing",
        "  pump    ok        last good 2 s ago; 1,234 ok, 0 errors",
        "  well-2  FAILING   last good 2 h 5 min ago; 12 ok, 345 errors (timeout 300, crc 45), "
        "3 overruns; last error: no answer from unit 3",
        "                    sent 03 03 00 00 00 0a c5 cd",
        "                    received 03 83 02 c0 f1",
    ]


def test_a_minimal_view() -> None:
    minimal = {
        "agent": {"id": "pi", "version": "0.1.0"},
        "link": {"state": "connected"},
        "buffer": {"depth": 0, "oldest": None, "bytes": 0, "dropped": 0},
        "devices": {"cpu": {"state": "ok", "last_good": None}},
        "now": NOW,
    }
    assert format_status(minimal) == [
        "agent    pi (edge-agent 0.1.0)",
        "link     connected",
        "buffer   empty; 0 B on disk; 0 dropped",
        "devices  1: 1 ok, 0 failing",
        "  cpu  ok        last good never; 0 ok, 0 errors",
    ]
    assert format_status({}) == ["agent    ? (edge-agent ?)", "devices  none"]


def test_sizes_and_ages_for_people() -> None:
    assert [human_size(n) for n in (0, 999, 1000, 1_234_567, 812_000_000, 12_345_678_901)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "1.2 MB",
        "812 MB",
        "12.3 GB",
    ]
    assert [human_duration(s) for s in (0, 59, 60, 3599, 3600, 7380, 86400, 90000)] == [
        "0 s",
        "59 s",
        "1 min",
        "59 min",
        "1 h",
        "2 h 3 min",
        "1 d",
        "1 d 1 h",
    ]
    assert human_age(400) == "just now"
    assert human_age(180_000) == "3 min ago"
    assert human_age(-120_000) == "2 min in the future (the clock was set back)"


def test_a_degraded_device_says_what_it_lacks() -> None:
    view = {
        "agent": {"id": "pi", "version": "0.3.0"},
        "devices": {
            "meter": {
                "state": "degraded",
                "last_good": NOW - 2_000,
                "ok": 9,
                "errors": 0,
                "missing": ["thd_l2", "thd_l3"],
            }
        },
        "now": NOW,
    }
    assert format_status(view)[-2:] == [
        "devices  1: 0 ok, 1 degraded, 0 failing",
        "  meter  degraded  last good 2 s ago; 9 ok, 0 errors; lacks thd_l2, thd_l3",
    ]
