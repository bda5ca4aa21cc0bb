"""Check ``consumer.py`` and ``schema.sql`` beside this file end to end, against a real agent and
a real PostgreSQL.

1. Creates a schema of its own in the database (``PG_DSN``, default
   ``host=127.0.0.1 dbname=test user=postgres``) and ``schema.sql``'s table in it.
2. Starts a Mosquitto (``agent.testkit``), a simulated Modbus TCP slave (a float, an integer, a
   coil and a string point), two ``consumer.py`` processes in the same shared-subscription group,
   an observer that sees every telemetry message, and ``edge-agent run``.
3. Once the agent has published enough samples it is stopped; then the check publishes a
   duplicate of a batch the agent sent (at-least-once delivery) and payloads that are not
   telemetry, which the consumers must skip without stopping.
4. Verifies that every point of every sample the agent published is in Postgres exactly once,
   the sample ids have no gaps, the values are what the slave served, both consumers inserted
   some, the duplicate inserted nothing and the bad payloads were skipped. Drops its schema.

Run from the repository root with the dev virtualenv (and psycopg installed there):
``.venv/3.11/bin/python examples/timeseries-postgres/check.py``. Exit code 0 when it passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
from psycopg import sql

from agent.testkit.aio import until
from agent.testkit.broker import Broker
from agent.testkit.process import AgentProcess
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

HERE = Path(__file__).parent
DSN = os.environ.get("PG_DSN", "host=127.0.0.1 dbname=test user=postgres")
PREFIX, GROUP, AGENT = "edge", "pg-check", "gw-check"
WANT_SAMPLES = 40  # the slave is polled every 0.2 s
POINTS = (
    ModbusPoint("power", table="holding", address=0, type="float32"),
    ModbusPoint("energy", table="holding", address=2, type="uint32"),
    ModbusPoint("running", table="coil", address=0, type="bool"),
    ModbusPoint("serial", table="holding", address=10, type="string", length=8),
)
SERVED: dict[str, float | int | bool | str] = {
    "power": 1.5,
    "energy": 123456,
    "running": True,
    "serial": "SN-4711",
}
#: (topic, payload) that are not telemetry; each must be skipped with one log line.
BAD = (
    (f"{PREFIX}/{AGENT}/telemetry", b"not json"),
    (f"{PREFIX}/{AGENT}/telemetry", b'{"agent": "gw-check", "samples": [{"id": "x"}]}'),
    (f"{PREFIX}/other/telemetry", b'{"agent": "gw-check", "samples": []}'),
    (f"{PREFIX}/{AGENT}/telemetry", b'{"agent":"gw-check","samples":[{"id":9999999,'
     b'"device":"d","ts":1,"values":{"s":"nul \\u0000 byte"}}]}'),
)  # fmt: skip


def site_config(workdir: Path, broker: Broker, modbus_port: int) -> Path:
    points = "".join(
        f'[[device.point]]\nname = "{p.name}"\ntable = "{p.table}"\naddress = {p.address}\n'
        f'type = "{p.type}"\n' + (f"length = {p.length}\n" if p.length else "")
        for p in POINTS
    )
    path = workdir / "site.toml"
    path.write_text(
        f'[agent]\nid = "{AGENT}"\ndata_dir = "{workdir / "data"}"\n'
        f'[mqtt]\nurl = "{broker.url}"\ntopic_prefix = "{PREFIX}"\n'
        f'[[bus]]\nname = "plc"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = {modbus_port}\n'
        f'[[device]]\nname = "meter1"\nbus = "plc"\nunit = 1\ninterval = "0.2s"\n{points}'
    )
    return path


async def observe(port: int, got: list[tuple[str, bytes]], ready: asyncio.Event) -> None:
    """Every telemetry message, outside the group: what the agent really published."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="pg-check-observer", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(f"{PREFIX}/+/telemetry", qos=1)
        ready.set()
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            got.append((str(message.topic), message.payload))


async def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="pg-check-publisher", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def start_consumer(workdir: Path, broker: Broker, n: int, dsn: str) -> subprocess.Popen[bytes]:
    """``consumer.py`` number ``n`` of the group, logging to ``consumer-N.log``. Consumer 1 keeps
    its session for a minute across disconnections: it is killed and restarted mid-stream."""
    with (workdir / f"consumer-{n}.log").open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                HERE / "consumer.py",
                broker.url,
                PREFIX,
                GROUP,
                dsn,
                "--client-id",
                f"{GROUP}-{n}",
                *(["--session-expiry", "60"] if n == 1 else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
        return -9


def log_text(workdir: Path, n: int) -> str:
    path = workdir / f"consumer-{n}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def db_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as db:
        (count,) = db.execute("SELECT count(*) FROM readings").fetchone() or (0,)
        return int(count)


async def run(workdir: Path, dsn: str) -> tuple[list[tuple[str, bytes]], dict[int, str]]:
    """Everything the agent published (as the observer saw it) and each consumer's log."""
    broker = Broker(workdir)
    broker.start()
    slave = SimulatedSlave(1, POINTS)
    for name, value in SERVED.items():
        slave.set_value(name, value)
    consumers: list[subprocess.Popen[bytes]] = []
    observer: asyncio.Task[None] | None = None
    agent: AgentProcess | None = None
    try:
        async with ModbusSimulator([slave]) as simulator:
            published: list[tuple[str, bytes]] = []
            ready = asyncio.Event()
            observer = asyncio.create_task(observe(broker.port, published, ready))
            await asyncio.wait_for(ready.wait(), 10)
            consumers = [start_consumer(workdir, broker, n, dsn) for n in (1, 2)]
            await until(
                lambda: (
                    all("subscribed to" in log_text(workdir, n) for n in (1, 2))
                    or any(c.poll() is not None for c in consumers)
                ),
                20,
                "both consumers to subscribe",
            )
            if any(c.poll() is not None for c in consumers):
                raise RuntimeError(
                    "a consumer exited:\n" + log_text(workdir, 1) + log_text(workdir, 2)
                )
            agent = AgentProcess(site_config(workdir, broker, simulator.port))
            agent.start()
            await asyncio.to_thread(agent.wait_notified, "READY=1", 30)

            def samples() -> int:
                return sum(len(json.loads(p)["samples"]) for _, p in published)

            # consumer 1 dies mid-stream (SIGKILL: perhaps between a commit and its PUBACK) and
            # comes back with the same client id: its session brings what it had not acknowledged
            await until(lambda: samples() >= WANT_SAMPLES // 2, 60, "half the samples")
            consumers[0].kill()
            consumers[0].wait(10)
            await asyncio.sleep(0.5)
            consumers[0] = start_consumer(workdir, broker, 1, dsn)
            await until(
                lambda: log_text(workdir, 1).count("subscribed to") == 2,
                20,
                "consumer 1 to subscribe again",
            )
            await until(
                lambda: samples() >= WANT_SAMPLES, 60, f"{WANT_SAMPLES} samples from the agent"
            )
            await asyncio.to_thread(agent.stop)
            agent = None
            rows = sum(len(s["values"]) for _, p in published for s in json.loads(p)["samples"])
            await until(lambda: db_rows(dsn) >= rows, 30, f"{rows} rows in Postgres")
            # at-least-once: the first batch once more; then payloads that are not telemetry
            n_seen = len(published)
            await publish(broker.port, [published[0], *BAD])
            await until(
                lambda: len(published) >= n_seen + 1 + len(BAD),
                10,
                "the observer to see the extra messages",
            )
            del published[n_seen:]  # the agent's messages only
            await until(
                lambda: (
                    sum(log_text(workdir, n).count("skipped a message") for n in (1, 2)) >= len(BAD)
                ),
                10,
                "the consumers to skip the bad payloads",
            )
            await asyncio.sleep(0.5)  # let the duplicate land (it must change nothing)
    finally:
        if agent is not None:
            await asyncio.to_thread(agent.stop)
        codes = [stop(c) for c in consumers]
        if observer is not None:
            observer.cancel()
            await asyncio.gather(observer, return_exceptions=True)
        broker.stop()
    if any(code != 0 for code in codes):
        raise RuntimeError(f"consumer exit codes {codes}")
    return published, {n: log_text(workdir, n) for n in (1, 2)}


def consumer_totals(
    logs: dict[int, str], problems: list[str]
) -> dict[int, tuple[int, int, int, int]]:
    """Each consumer's last "stopped:" line (messages, inserted, duplicates, skipped), printed
    with its skip lines."""
    totals: dict[int, tuple[int, int, int, int]] = {}
    for n, text in logs.items():
        match = re.search(
            r"stopped: (\d+) messages, (\d+) rows inserted, (\d+) already there, "
            r"(\d+) messages skipped",
            text,
        )
        if match is None:
            problems.append(f"consumer {n} logged no totals:\n{text[-2000:]}")
            continue
        messages, inserted, dup, skipped = map(int, match.groups())
        totals[n] = (messages, inserted, dup, skipped)
        print(
            f"consumer {n}: {messages} messages, {inserted} rows inserted, {dup} duplicates "
            f"ignored, {skipped} bad payloads skipped"
        )
        for line in text.splitlines():
            if "skipped a message" in line:
                print(f"  {line.split(' ', 3)[3]}")
    return totals


def verify(dsn: str, published: list[tuple[str, bytes]], logs: dict[int, str]) -> list[str]:
    problems: list[str] = []
    expected, ids = published_readings(published)
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT agent, device, id, point, value, text_value, ts FROM readings"
        ).fetchall()
    print(
        f"agent published {len(published)} messages, {len(ids)} samples "
        f"(ids {min(ids)}..{max(ids)}), {len(expected)} readings; Postgres has {len(rows)} rows"
    )
    problems += sample_id_problems(ids)
    problems += stored_row_problems(rows, expected)
    totals = consumer_totals(logs, problems)
    if len(totals) == 2:
        problems += work_sharing_problems(rows, totals, published)
    return problems


def published_readings(
    published: list[tuple[str, bytes]],
) -> tuple[dict[tuple[int, str], Any], list[int]]:
    """Each (sample id, point) the agent published with its value, and every sample id sent."""
    expected: dict[tuple[int, str], Any] = {}
    ids: list[int] = []
    for _, payload in published:
        for sample in json.loads(payload)["samples"]:
            ids.append(sample["id"])
            for point, value in sample["values"].items():
                expected[sample["id"], point] = value
    return expected, ids


def sample_id_problems(ids: list[int]) -> list[str]:
    # the agent itself may send a batch twice (at-least-once): repeats are fine, gaps are not
    problems = []
    if sorted(set(ids)) != list(range(min(ids), max(ids) + 1)):
        problems.append("the agent's sample ids have gaps")
    if len(set(ids)) != len(ids):
        print(f"(the agent sent {len(ids) - len(set(ids))} samples twice)")
    return problems


def stored_row_problems(
    rows: list[tuple[Any, ...]], expected: dict[tuple[int, str], Any]
) -> list[str]:
    """Postgres holds each published reading once, of our agent and device, with its value."""
    problems = []
    per_key = Counter((r[2], r[3]) for r in rows)
    if set(per_key) != set(expected):
        missing, extra = set(expected) - set(per_key), set(per_key) - set(expected)
        problems.append(f"{len(missing)} readings missing, {len(extra)} unexpected in Postgres")
    if any(count != 1 for count in per_key.values()):
        problems.append("a reading is in Postgres more than once")
    if {(r[0], r[1]) for r in rows} != {(AGENT, "meter1")}:
        problems.append(f"unexpected agent/device: {sorted({(r[0], r[1]) for r in rows})}")
    wrong = wrong_values(expected, {(r[2], r[3]): (r[4], r[5]) for r in rows})
    if wrong:
        problems.append(f"{len(wrong)} wrong values, e.g. {wrong[0]}")
    return problems


def wrong_values(
    expected: dict[tuple[int, str], Any], stored: dict[tuple[Any, Any], tuple[Any, Any]]
) -> list[str]:
    """What the agent sent unlike what the slave served, and what is stored unlike it was sent."""
    wrong = []
    for key, sent in expected.items():
        want_served = SERVED[key[1]]
        if sent != want_served:
            wrong.append(f"agent sent {key[1]}={sent!r}, slave served {want_served!r}")
        value, text = stored.get(key, (None, None))
        want = (None, sent) if isinstance(sent, str) else (float(sent), None)
        if (value, text) != want:
            wrong.append(f"sample {key[0]} {key[1]}: stored {(value, text)}, want {want}")
    return wrong


def work_sharing_problems(
    rows: list[tuple[Any, ...]],
    totals: dict[int, tuple[int, int, int, int]],
    published: list[tuple[str, bytes]],
) -> list[str]:
    """Both consumers (and consumer 1's killed first run) did part of the work, the duplicated
    batch was ignored and every bad payload skipped."""
    problems = []
    # consumer 1's first run was killed before logging its totals: it inserted the rest
    killed = len(rows) - sum(t[1] for t in totals.values())
    print(f"consumer 1 before SIGKILL: {killed} rows inserted (the table's rows less the above)")
    if killed <= 0 or totals[1][1] <= 0 or totals[2][1] <= 0:
        problems.append(
            "the shared subscription did not spread the work: a consumer inserted nothing"
        )
    first = json.loads(published[0][1])["samples"]
    if totals[1][2] + totals[2][2] < sum(len(s["values"]) for s in first):
        problems.append("the duplicated batch was not ignored row for row")
    if totals[1][3] + totals[2][3] != len(BAD):
        problems.append(f"{len(BAD)} bad payloads sent, not as many skipped")
    return problems


def main() -> int:
    schema = f"edge_check_{os.getpid()}"
    try:
        admin = psycopg.connect(DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        print(f"cannot connect to PostgreSQL ({DSN}): {str(exc).strip()}", file=sys.stderr)
        return 2
    # the consumers and the checks see only this schema (search_path), dropped at the end
    dsn = psycopg.conninfo.make_conninfo(DSN, options=f"-csearch_path={schema}")
    try:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute((HERE / "schema.sql").read_text())
        with tempfile.TemporaryDirectory(prefix="pg-check-") as tmp:
            try:
                published, logs = asyncio.run(run(Path(tmp), dsn))
            except (TimeoutError, RuntimeError) as exc:
                print(f"FAILED: {exc}", file=sys.stderr)
                for n in (1, 2):
                    print(f"--- consumer {n}:\n{log_text(Path(tmp), n)[-3000:]}", file=sys.stderr)
                return 1
            problems = verify(dsn, published, logs)
    finally:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        admin.close()
    print(
        "\n".join(problems)
        or "OK: every reading in Postgres exactly once, values as served, "
        "both consumers inserted, duplicate ignored, bad payloads skipped"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
