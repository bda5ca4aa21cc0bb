"""[web]: the configuration's checks, and the JSON API served by a running agent from the state
`edge-agent status` reads, with its limits (password, size, clients, methods)."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.config.web import MIN_CLIENTS
from agent.errors import ConfigError
from agent.service.logs import RecentLines
from agent.service.web import answer
from agent.testkit.modbus import ModbusBus
from agent.testkit.net import free_port
from agent.testkit.runner import AgentRunner
from drivers.modbus.schema import ModbusPoint

SECRET = "pump-house-7"
SITE = """
[agent]
id = "kit"
[mqtt]
topic_prefix = "t"
batch_interval = "100ms"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "192.0.2.1"
timeout = "300ms"
[[device]]
name = "tank"
bus = "plc"
unit = 3
interval = "200ms"
  [[device.point]]
  name = "level"
  address = 0
"""


def problems(tmp_path: Path, web: str, files: dict[str, str] | None = None) -> list[str]:
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    path = tmp_path / "site.toml"
    path.write_text(
        '[agent]\nid = "gw"\ndata_dir = "data"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
        + textwrap.dedent(web)
        + '[[device]]\nname = "gw"\ndriver = "system"\n  [[device.point]]\n  name = "load"\n'
        '  metric = "load1"\n'
    )
    try:
        load_config(path, environ={})
    except ConfigError as exc:
        return [str(p).split(": ", 1)[1] for p in exc.problems]
    return []


@pytest.mark.parametrize(
    ("web", "said"),
    [
        (
            '[web]\nenabled = true\nlisten = "0.0.0.0:8080"\n',
            "web.listen: 0.0.0.0:8080 can be reached from the network: set [web] password_file "
            "(a file holding the page's password), or listen on 127.0.0.1",
        ),
        (
            "[web]\nenabled = true\nallow_writes = true\n",
            "web.allow_writes: needs [web] password_file: no write without the password",
        ),
        (
            '[web]\nlisten = "8080"\n',
            'web.listen: "8080" is not HOST:PORT: write e.g. "127.0.0.1:8080"',
        ),
        (
            '[web]\npassword_file = "none.txt"\n',
            "web.password_file: cannot read none.txt: No such file or directory",
        ),
        (
            "[web]\nmax_clients = 1\n",
            "web.max_clients: 1 is too few: a page loads its style and script, then asks two "
            "answers, at once; at least 4",
        ),
        (
            '[web]\npassword_file = "empty.txt"\n',
            "web.password_file: empty.txt is empty: write the page's password in it",
        ),
    ],
)
def test_a_mistake_in_web_is_one_line_at_its_key(tmp_path: Path, web: str, said: str) -> None:
    assert problems(tmp_path, web, {"empty.txt": "\n"}) == [said]


def test_the_page_listens_on_the_network_only_with_a_password(tmp_path: Path) -> None:
    web = '[web]\nenabled = true\nlisten = "0.0.0.0:8080"\npassword_file = "web.pw"\n'
    assert problems(tmp_path, web, {"web.pw": SECRET + "\n"}) == []
    config = load_config(tmp_path / "site.toml", environ={})[0]
    assert (config.web.host, config.web.port, config.web.password) == ("0.0.0.0", 8080, SECRET)
    assert SECRET not in repr(config.web)


def get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        connection.close()


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"tech:{password}".encode()).decode()}


def started(
    edge_agent: AgentRunner,
    modbus_bus: Callable[..., ModbusBus],
    tmp_path: Path,
    **web: object,
) -> tuple[int, Any]:
    bus = modbus_bus("tcp")
    tank = bus.add(3, points=[ModbusPoint("level", address=0)])
    tank.set("level", 42)
    port = free_port()
    edge_agent.start(
        SITE,
        buses={"plc": bus},
        overrides={"web": {"enabled": True, "listen": f"127.0.0.1:{port}", **web}},
    )
    edge_agent.wait_sample("tank", "level", 42)
    return port, tank


def test_the_api_serves_what_status_shows(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], tmp_path: Path
) -> None:
    port, tank = started(edge_agent, modbus_bus, tmp_path)
    status, body, headers = get(port, "/api/status")
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert body.keys() == edge_agent.status().keys()
    assert body["devices"]["tank"]["state"] == "ok"
    tank.set("level", 43)
    edge_agent.wait_sample("tank", "level", 43)
    status, device, _ = get(port, "/api/devices/tank")
    assert status == 200
    assert device["name"] == "tank"
    assert device["state"] == "ok"
    status, missing, _ = get(port, "/api/devices/pump")
    assert (status, missing) == (404, {"error": "no device 'pump'", "devices": ["tank"]})
    assert get(port, "/nothing")[0] == 404
    # without a password, by its address only: a name could be another site's, rebound to
    # 127.0.0.1 (DNS rebinding) so that its page reads this one as its own
    for host in ("localhost", f"localhost:{port}", f"[::1]:{port}", f"127.0.0.1:{port}"):
        assert get(port, "/api/status", {"Host": host})[0] == 200, host
    for host in (f"rebind.example:{port}", "rebind.example", f"127.0.0.1.nip.io:{port}"):
        status, body, _ = get(port, "/api/status", {"Host": host})
        assert status == 403, host
        assert body["error"].startswith("this page is reached by its address"), body


def test_with_a_password_every_request_needs_it_and_it_is_never_logged(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], tmp_path: Path
) -> None:
    secret = tmp_path / "web.pw"
    secret.write_text(SECRET + "\n")
    port, _ = started(edge_agent, modbus_bus, tmp_path, password_file=str(secret))
    status, _, headers = get(port, "/api/status")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")
    assert get(port, "/api/status", basic("wrong"))[0] == 401
    assert get(port, "/api/status", {"Authorization": "Basic !!!"})[0] == 401
    assert get(port, "/api/status", basic(SECRET))[0] == 200
    assert get(port, "/api/status", {**basic(SECRET), "Host": "gateway.local:8080"})[0] == 200
    assert SECRET not in edge_agent.log


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_requests_are_bounded_and_read_only(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], tmp_path: Path
) -> None:
    port, _ = started(edge_agent, modbus_bus, tmp_path, max_clients=MIN_CLIENTS)
    huge = b"GET /api/status HTTP/1.1\r\nX-Filler: " + b"x" * 20000 + b"\r\n\r\n"
    assert raw(port, huge).startswith(b"HTTP/1.1 431 ")
    assert raw(port, b"POST /api/status HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert raw(port, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # connections that have asked nothing (a browser's preconnects) take no place
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(MIN_CLIENTS)]
    try:
        deadline = time.monotonic() + 10
        while (status := get(port, "/api/status")[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)  # they give way once they have been silent a moment
        assert status == 200
    finally:
        for sock in silent:
            sock.close()
    # clients that began a request and never end it hold every place: one more is turned away
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(MIN_CLIENTS)]
    for sock in idle:
        sock.sendall(b"GET /api/status HTTP/1.1\r\n")
    try:
        deadline = time.monotonic() + 10
        while True:
            answer = raw(port, b"GET /api/status HTTP/1.1\r\n\r\n")
            if answer.startswith(b"HTTP/1.1 503 ") or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the idle ones are accepted by the agent's loop meanwhile
        assert answer.startswith(b"HTTP/1.1 503 ")
        # and the agent polls on meanwhile
        before = len(edge_agent.samples())
        edge_agent.telemetry.wait_for(lambda t: len(edge_agent.samples()) > before, timeout=10)
    finally:
        for sock in idle:
            sock.close()
    # their places come free once the agent sees them gone
    deadline = time.monotonic() + 10
    while (status := get(port, "/api/status")[0]) != 200 and time.monotonic() < deadline:
        time.sleep(0.05)  # the agent's loop notices the closed connections meanwhile
    assert status == 200


def post(
    port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


WRITE = {"Content-Type": "application/json", "X-Edge-Agent": "write"}


def writable_site(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], **web: object
) -> tuple[int, Any]:
    bus = modbus_bus("tcp")
    tank = bus.add(
        3,
        points=[
            ModbusPoint("level", address=0),
            ModbusPoint("setpoint", address=1, writable=True, min=0, max=100),
        ],
    )
    tank.set("level", 42)
    tank.set("setpoint", 10)
    port = free_port()
    site = SITE + '  [[device.point]]\n  name = "setpoint"\n  address = 1\n  writable = true\n'
    site += "  min = 0\n  max = 100\n"
    edge_agent.start(
        site,
        buses={"plc": bus},
        overrides={"web": {"enabled": True, "listen": f"127.0.0.1:{port}", **web}},
    )
    edge_agent.wait_sample("tank", "level", 42)
    return port, tank


def test_a_write_goes_through_the_commands_checks_only_when_allowed_and_from_the_page(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], tmp_path: Path
) -> None:
    secret = tmp_path / "web.pw"
    secret.write_text(SECRET + "\n")
    port, tank = writable_site(edge_agent, modbus_bus, password_file=str(secret), allow_writes=True)
    url = "/api/devices/tank/points/setpoint"
    good = b'{"value": 55}'
    me = {**WRITE, **basic(SECRET), "Host": f"127.0.0.1:{port}"}
    assert post(port, url, good, WRITE)[0] == 401
    assert post(port, url, good, {**WRITE, **basic("wrong")})[0] == 401
    # what another site's page could make a browser send, with the credentials it caches
    for forged in (
        {"Content-Type": "text/plain"},
        {"X-Edge-Agent": ""},
        {"Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
        {"Origin": "http://["},  # not even a URL
    ):
        status, body = post(port, url, good, {**me, **forged})
        assert status == 403, forged
        assert body["error"].startswith("write refused: "), body
    assert post(port, url, b"x" * 5000, me) == (413, {"error": "a write is at most 4096 bytes"})
    assert post(port, url, b"{not json", me)[0] == 400
    assert post(port, url, b"[" * 3000, me)[0] == 400  # nested deeper than json's recursion
    assert post(port, url, b'{"value": [1]}', me)[0] == 400
    # the command's checks, said as a command's reply says them
    assert post(port, url, b'{"value": 150}', me) == (
        422,
        {"ok": False, "error": "150 is above setpoint's max 100"},
    )
    assert post(port, "/api/devices/tank/points/level", good, me) == (
        422,
        {"ok": False, "error": "level is not writable"},
    )
    assert post(port, "/api/devices/pump/points/x", good, me)[1]["error"].startswith(
        'unknown device "pump"'
    )
    assert tank.get("setpoint") == 10  # nothing written so far
    assert post(port, url, good, {**me, "Origin": f"http://127.0.0.1:{port}"}) == (
        200,
        {"ok": True, "value": 55},
    )
    assert tank.get("setpoint") == 55
    edge_agent.wait_log(r"web write from 127\.0\.0\.1: tank\.setpoint = 55 \(was 10\)")
    assert edge_agent.status()["link"]["commands"] == {"ok": 1, "refused": 3}
    assert SECRET not in edge_agent.log


def test_without_allow_writes_nothing_is_written(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus]
) -> None:
    port, tank = writable_site(edge_agent, modbus_bus)
    status, body = post(port, "/api/devices/tank/points/setpoint", b'{"value": 55}', WRITE)
    assert (status, body) == (403, {"error": "writes are off: set [web] allow_writes = true"})
    assert post(port, "/api/status", b"{}", WRITE)[0] == 405
    assert tank.get("setpoint") == 10
    _, device, _ = get(port, "/api/devices/tank")
    assert device["writes"] is False
    assert [p["name"] for p in device["points"] if p["writable"]] == ["setpoint"]


def test_the_page_its_history_and_its_log_are_served(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], tmp_path: Path
) -> None:
    port, tank = started(edge_agent, modbus_bus, tmp_path)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/")
    response = connection.getresponse()
    html = response.read().decode()
    connection.close()
    assert response.status == 200
    assert '<script src="/page.js"' in html
    assert "default-src 'self'" in response.getheader("Content-Security-Policy", "")
    assert response.getheader("X-Frame-Options") == "DENY"
    for asset in ("/page.js", "/page.css"):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("HEAD", asset)
        response = connection.getresponse()
        assert response.status == 200
        assert int(response.getheader("Content-Length", "0")) > 1000
        assert response.read() == b""  # HEAD: the headers alone
        connection.close()
    tank.set("level", 43)
    edge_agent.wait_sample("tank", "level", 43)
    status, history, _ = get(port, "/api/devices/tank/history")
    assert status == 200
    levels = [value for _, value in history["points"]["level"]]
    assert levels[-1] == 43
    assert history["window_ms"] == 3_600_000
    _, device, _ = get(port, "/api/devices/tank")
    assert device["values"] == {"level": 43}
    assert device["points"][0] | {"value": None} == {
        "name": "level",
        "value": None,
        "unit": "",
        "type": "uint16",
        "writable": False,
        "min": None,
        "max": None,
    }
    assert device["plan"] == ["holding 0 (1 register): level"]
    _, log, _ = get(port, "/api/log")
    texts = [line["text"] for line in log["lines"]]
    assert any(t.startswith("running: 1 device(s)") for t in texts), texts
    assert get(port, "/api/devices/pump/history")[0] == 404


def test_a_malformed_request_is_answered_and_costs_no_traceback(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], tmp_path: Path
) -> None:
    port, _ = started(edge_agent, modbus_bus, tmp_path)
    write = b"POST /api/devices/tank/points/level HTTP/1.1\r\n"
    for request, status in (
        (b"GET //[/ HTTP/1.1\r\n\r\n", b"400"),  # urlsplit: "Invalid IPv6 URL"
        (b"GET http://[::1/api/status HTTP/1.1\r\n\r\n", b"400"),
        (write + "Content-Length: \u00b2\r\n\r\nab".encode("latin-1"), b"411"),  # isdigit()
        (write + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", b"413"),  # 4300 digits
        (write + b"Content-Length: 0000000000012\r\n\r\n" + b'{"value": 1}', b"403"),
    ):
        assert raw(port, request).startswith(b"HTTP/1.1 " + status + b" "), request[:60]
    assert get(port, "/api/status")[0] == 200
    assert "Traceback" not in edge_agent.log
    assert "Unhandled exception" not in edge_agent.log


def test_the_agent_stops_quietly_with_a_request_half_sent(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], tmp_path: Path
) -> None:
    port, _ = started(edge_agent, modbus_bus, tmp_path)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"GET /api/status HTTP/1.1\r\n")
        # accepted in order: once a later request is answered, the slow one is being read
        assert get(port, "/api/status")[0] == 200
        assert edge_agent.term() == 0
    assert "Traceback" not in edge_agent.log, edge_agent.log


def test_the_recent_log_is_read_while_another_thread_logs() -> None:
    """gpiozero's and paho's threads log too: the page's read of the lines must not see the
    ring change under it (``deque mutated during iteration``, a 500 for the overview)."""
    recent = RecentLines()
    record = logging.LogRecord("pin", logging.INFO, __file__, 1, "edge %d", (1,), None)
    for _ in range(200):  # full: each read walks the whole ring
        recent.handle(record)
    done = threading.Event()

    def flood() -> None:
        while not done.is_set():
            recent.handle(record)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns often: a race shows within a few reads
    thread = threading.Thread(target=flood, name="pin")
    thread.start()
    try:
        for _ in range(5000):
            assert len(recent.lines()) == 200
    finally:
        done.set()
        thread.join(timeout=10)
        sys.setswitchinterval(switch)


def test_a_logged_file_name_that_is_not_utf8_leaves_the_log_served() -> None:
    """A name from the file system can hold a byte UTF-8 cannot read (a lone surrogate, from
    os.fsdecode): the answer carries it escaped, as the status socket does, not a 500 for
    /api/log and the overview until 200 lines later."""
    recent = RecentLines()
    name = os.fsdecode(b"/var/lib/edge-agent/\xff")
    recent.handle(
        logging.LogRecord("buffer", logging.INFO, __file__, 1, "cannot open %s", (name,), None)
    )
    response = answer(200, {"lines": recent.lines()})
    assert json.loads(response.body)["lines"][0]["text"] == f"cannot open {name}"
