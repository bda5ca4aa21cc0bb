"""``python -m bench.web``: what the technician's page costs the agent.

``edge-agent run`` as a child process polls 10 simulated Modbus TCP devices of 20 float32 points
every second and publishes to a local Mosquitto, three times: without ``[web]``; with it, no page
open; with it and a page open, i.e. a client asking for what the page asks for (the overview's
``/api/status`` and ``/api/log``, a device's ``/api/devices/NAME`` every second and its
``/history`` every 10 s). Figures from ``/proc/PID``: ``VmRSS`` and ``RssAnon`` at the end of the
window (the plots' arrays are all allocated at the first reading of each point, so an hour later
they are no bigger), and the CPU of the agent's threads over the window.

Run from the repository root: ``.venv/3.11/bin/python -m bench.web [--seconds 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import tempfile
import time
from pathlib import Path

from agent.testkit.broker import Broker
from agent.testkit.net import free_port
from agent.testkit.process import AgentProcess
from drivers.modbus.simulator import ModbusSimulator

from ._rig import markdown_table, rig_pid, rss_kib, running_broker
from .suite import Site, private, slaves, task_cpu

DEVICES = 10


def config(workdir: Path, broker: Broker, modbus_port: int, web_port: int | None) -> Path:
    path = Site(DEVICES, 1.0, buses=1).config(workdir, broker, modbus_port)
    if web_port is not None:
        path.write_text(
            path.read_text() + f'\n[web]\nenabled = true\nlisten = "127.0.0.1:{web_port}"\n'
        )
    return path


def fetch(port: int, path: str) -> int:
    """One GET, as the page makes it: the bytes of the answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}")
        return len(body)
    finally:
        connection.close()


async def page_open(port: int, seconds: float) -> tuple[int, int]:
    """What an open page asks for, every second, for ``seconds``: requests and bytes."""
    requests = received = 0
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        paths = ["/api/status", "/api/log", "/api/devices/meter00"]
        if tick % 10 == 0:
            paths.append("/api/devices/meter00/history")
        for path in paths:
            received += await asyncio.to_thread(fetch, port, path)
            requests += 1
        tick += 1
        await asyncio.sleep(max(0.0, start + tick - time.monotonic()))
    return requests, received


async def measure(
    workdir: Path, broker: Broker, modbus_port: int, mode: str, seconds: float
) -> dict[str, float]:
    web_port = None if mode == "no [web]" else free_port()
    agent = AgentProcess(config(workdir, broker, modbus_port, web_port))
    agent.start()
    try:
        pid = rig_pid(agent)
        assert pid is not None
        await asyncio.sleep(5)  # started, connected, every point read: the plots allocated
        if web_port is not None:
            fetch(web_port, "/api/status")  # listening
        cpu = task_cpu(pid)
        requests = received = 0
        if mode == "page open":
            assert web_port is not None
            requests, received = await page_open(web_port, seconds)
        else:
            await asyncio.sleep(seconds)
        cpu = task_cpu(pid) - cpu
        anon, _ = private(pid)
        return {
            "rss": rss_kib(pid),
            "anon": anon,
            "cpu_ms_per_s": 1000 * cpu / seconds,
            "requests": requests,
            "bytes": received,
        }
    finally:
        await asyncio.to_thread(agent.stop)


async def run(workdir: Path, seconds: float) -> list[tuple[str, str, str, str, str]]:
    rows = []
    async with ModbusSimulator(slaves()) as simulator:
        with running_broker(workdir / "broker") as broker:
            base: dict[str, float] = {}
            for mode in ("no [web]", "[web], no page", "page open"):
                figures = await measure(
                    workdir / mode.strip("[]").replace(" ", "-").replace(",", ""),
                    broker,
                    simulator.port,
                    mode,
                    seconds,
                )
                base = base or figures
                per_request = (
                    f"{figures['bytes'] / figures['requests'] / 1000:.1f} kB avg, "
                    f"{figures['requests'] / seconds:.1f}/s"
                    if figures["requests"]
                    else ""
                )
                rows.append(
                    (
                        mode,
                        mib_and_more(figures["rss"], base["rss"]),
                        mib_and_more(figures["anon"], base["anon"]),
                        f"{figures['cpu_ms_per_s']:.1f} ms/s "
                        f"(+{figures['cpu_ms_per_s'] - base['cpu_ms_per_s']:.1f})",
                        per_request,
                    )
                )
    return rows


def mib_and_more(kib: float, base_kib: float) -> str:
    return f"{kib / 1024:.1f} MiB ({(kib - base_kib) / 1024:+.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="each window (30)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        rows = asyncio.run(run(Path(tmp), args.seconds))
    print(
        f"{DEVICES} devices x 20 float32 points at 1 s; windows of {args.seconds:g} s; "
        "(+) against no [web]"
    )
    print(markdown_table(("agent", "VmRSS", "RssAnon", "CPU", "answers"), rows))


if __name__ == "__main__":
    main()
