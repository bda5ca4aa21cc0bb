"""``[mqtt] compression = "zlib"`` end to end: a real agent, a real Mosquitto, and the PostgreSQL
example's own payload decoding (``examples/timeseries-postgres/edge_telemetry.py``) on what a
real MQTT 5 subscriber receives. Every sample id arrives, live and from the backlog."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.testkit.aio import KitLoop
from agent.testkit.broker import Broker
from agent.testkit.faults import drained
from agent.testkit.modbus import ModbusBus
from agent.testkit.runner import AgentRunner
from agent.testkit.telemetry import Telemetry
from agent.uplink.wire import ZLIB_CONTENT_TYPE
from drivers.modbus.schema import ModbusPoint

EXAMPLE = Path(__file__).parents[1] / "examples" / "timeseries-postgres" / "edge_telemetry.py"
POINTS = [ModbusPoint(f"p{i:02d}", table="holding", address=i, type="uint16") for i in range(20)]
SITE = """
[agent]
id = "zgw"
[buffer]
flush_interval = "400ms"
[mqtt]
topic_prefix = "z"
batch_interval = "100ms"
compression = "zlib"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
timeout = "300ms"
[[device]]
name = "meter"
bus = "plc"
interval = "100ms"
""" + "".join(f'  [[device.point]]\n  name = "p{i:02d}"\n  address = {i}\n' for i in range(20))


def consumer_decoding() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edge_telemetry", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["edge_telemetry"] = module
    spec.loader.exec_module(module)
    return module


class RawSubscriber:
    """MQTT 5, QoS 1, persistent: the telemetry messages as they come, payload and properties."""

    def __init__(self, kit: KitLoop, broker: Broker) -> None:
        self.kit, self.broker = kit, broker
        self.received: list[tuple[str, bytes, str | None, int | None]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> RawSubscriber:
        ready = self.kit.call(self._start())
        assert ready
        return self

    async def _start(self) -> bool:
        subscribed = asyncio.Event()
        self._task = asyncio.create_task(self._run(subscribed))
        await asyncio.wait_for(subscribed.wait(), 10)
        return True

    async def _run(self, subscribed: asyncio.Event) -> None:
        """Through broker restarts: its session (and what came meanwhile) is kept."""
        expiry = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        expiry.SessionExpiryInterval = 300
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier="raw-consumer",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=expiry,
                ) as client:
                    await client.subscribe("z/+/telemetry", qos=1)
                    subscribed.set()
                    async for message in client.messages:
                        self._add(message)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # the broker is away: try again soon

    def _add(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
        props = message.properties
        kind = getattr(props, "ContentType", None)
        self.received.append(
            (str(message.topic), data, kind, getattr(props, "PayloadFormatIndicator", None))
        )

    def stop(self) -> None:
        if self._task is not None:
            self.kit.call(self._cancel())

    async def _cancel(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def test_compressed_telemetry_reaches_the_consumer_whole_live_and_from_the_backlog(
    edge_agent: AgentRunner,
    modbus_bus: Callable[..., ModbusBus],
    mosquitto: Broker,
    kit_loop: KitLoop,
) -> None:
    decoding = consumer_decoding()
    bus = modbus_bus("tcp")
    bus.add(1, points=POINTS)
    raw = RawSubscriber(kit_loop, mosquitto).start()
    try:
        edge_agent.start(SITE, buses={"plc": bus})
        edge_agent.telemetry.wait_samples(5, "meter", timeout=20)
        mosquitto.stop()  # a backlog builds up, to go out in large compressed batches
        edge_agent.wait_log(r"link lost")
        until_depth(edge_agent, 60)
        mosquitto.start()
        assert drained(edge_agent, timeout=60), edge_agent.log
        assert edge_agent.term() == 0
        last = max(s["id"] for s in edge_agent.samples())
        rows: dict[int, set[str]] = {}
        wait_for_ids(raw, decoding, rows, last)
    finally:
        raw.stop()
    assert set(rows) == set(range(1, last + 1))  # every id, once decoded
    assert all(points == {p.name for p in POINTS} for points in rows.values())
    kinds = {(kind, fmt) for _, _, kind, fmt in raw.received}
    assert kinds == {(ZLIB_CONTENT_TYPE, 0)}  # said in MQTT 5 properties, not UTF-8
    backlog = [p for _, p, _, _ in raw.received if decoding.decoded(p).get("backlog")]
    assert backlog, "no backlog batch arrived"
    # and without the properties (a 3.1.1 consumer), the first byte tells
    assert decoding.readings("z/zgw/telemetry", raw.received[0][1])


def until_depth(runner: AgentRunner, depth: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if runner.status()["buffer"]["depth"] >= depth:
                return
        except Exception:  # not answering yet
            pass
        time.sleep(0.1)  # another process's state: asked, not awaited
    raise TimeoutError(f"no backlog of {depth} samples")


def wait_for_ids(
    raw: RawSubscriber, decoding: ModuleType, rows: dict[int, set[str]], last: int
) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows.clear()
        for topic, payload, kind, _ in list(raw.received):
            for _agent, _device, sid, _ts, point, *_ in decoding.readings(topic, payload, kind):
                rows.setdefault(sid, set()).add(point)
        if len(rows) >= last:
            return
        time.sleep(0.1)  # messages still arriving from the broker
    detail: Any = sorted(set(range(1, last + 1)) - set(rows))[:20]
    raise TimeoutError(f"ids missing at the consumer: {detail}")


def test_the_telegraf_bridge_republishes_compressed_telemetry_as_plain_json(
    edge_agent: AgentRunner,
    modbus_bus: Callable[..., ModbusBus],
    mosquitto: Broker,
    kit_loop: KitLoop,
    tmp_path: Path,
) -> None:
    """Telegraf cannot decompress: ``examples/telegraf/inflate.py`` gives it plain copies."""
    script = EXAMPLE.parents[1] / "telegraf" / "inflate.py"
    log = (tmp_path / "inflate.log").open("wb")
    bridge = subprocess.Popen(
        [sys.executable, str(script), mosquitto.url, "z", "--to", "plain", "--client-id", "inf"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        plain = Telemetry(kit_loop, mosquitto.host, mosquitto.port, "plain/+/telemetry").start()
        until_log(tmp_path / "inflate.log", "inflating")
        bus = modbus_bus("tcp")
        bus.add(1, points=POINTS)
        edge_agent.start(SITE, buses={"plc": bus})
        plain.wait_samples(20, "meter", timeout=30)
        assert edge_agent.term() == 0
        last = max(s["id"] for s in edge_agent.samples())
        samples = plain.wait_samples(last, "meter", timeout=15)
        assert {s["id"] for s in samples} == set(range(1, last + 1))
        assert all(len(s["values"]) == len(POINTS) for s in samples)
        assert {m.topic for m in plain.messages} == {"plain/zgw/telemetry"}
        plain.stop()
    finally:
        bridge.terminate()
        assert bridge.wait(timeout=10) == 0
        log.close()
    assert "Traceback" not in (tmp_path / "inflate.log").read_text()


def until_log(path: Path, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {text!r} in {path}")
        time.sleep(0.05)  # another process's log: polled
