"""Check ``telegraf.conf`` beside this file against what edge-agent really publishes, without
Telegraf (it is not packaged in Debian).

1. Starts a Mosquitto (``agent.testkit``), a simulated Modbus TCP slave and ``edge-agent run``,
   and two consumers subscribed to the conf's shared subscription (``$share/telegraf/...``,
   over MQTT 3.1.1 as Telegraf's client speaks it): every sample must reach exactly one of them.
2. Applies the conf's ``json_v2`` object rules to every payload, the way Telegraf's parser does
   (``path`` → one metric per array element, ``tags``, ``excluded_keys``,
   ``disable_prepend_keys``, ``timestamp_key`` with ``unix_ms``) plus the ``topic_parsing`` tag,
   and prints the line protocol: each sample must give one metric with the agent and device as
   tags, every point as a numeric field and the sample's time in nanoseconds.

Run from the repository root with the dev virtualenv: ``python examples/telegraf/check_config.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiomqtt

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from agent.testkit.broker import Broker
from agent.testkit.process import AgentProcess
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

CONF = Path(__file__).with_name("telegraf.conf")
POINTS = (
    ModbusPoint("power", table="holding", address=0, type="float32"),
    ModbusPoint("energy", table="holding", address=2, type="uint32"),
    ModbusPoint("running", table="coil", address=0, type="bool"),
)


def consumer_conf() -> dict[str, Any]:
    """The ``mqtt_consumer`` section, with environment placeholders left as they are."""
    return dict(tomllib.loads(CONF.read_text())["inputs"]["mqtt_consumer"][0])


def flatten(value: object, key: str, prepend: bool) -> dict[str, object]:
    """json_v2's flattening of nested objects: ``a.b`` becomes ``a_b`` (or ``b`` without
    prepending)."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{key}_{k}" if prepend and key else k, prepend))
        return out
    return {key: value}


def topic_tags(rule: dict[str, str], topic: str) -> dict[str, str]:
    """``topic_parsing``: the names in ``tags`` at the positions of the topic's levels."""
    pattern, names, levels = rule["topic"].split("/"), rule["tags"].split("/"), topic.split("/")
    assert len(pattern) == len(levels), f"{topic} does not match {rule['topic']}"
    for want, got in zip(pattern, levels, strict=True):
        assert want in ("+", got), f"{topic} does not match {rule['topic']}"
    return {name: level for name, level in zip(names, levels, strict=True) if name != "_"}


def metrics(conf: dict[str, Any], topic: str, payload: dict[str, Any]) -> list[str]:
    """The line protocol Telegraf's json_v2 ``object`` rules make of one message."""
    rules = conf["json_v2"][0]
    rule = rules["object"][0]
    assert rule["timestamp_format"] == "unix_ms"
    base_tags = topic_tags(conf["topic_parsing"][0], topic)
    lines = []
    for element in payload[rule["path"]]:  # GJSON path "samples": the array, one metric each
        fields = flatten(element, "", not rule.get("disable_prepend_keys", False))
        ts_ms = fields.pop(rule["timestamp_key"])
        for key in rule.get("excluded_keys", []):
            fields.pop(key, None)
        tags = dict(base_tags)
        for key in rule.get("tags", []):
            tags[key] = str(fields.pop(key))
        assert isinstance(ts_ms, int), f"ts {ts_ms!r} is not unix_ms"
        for name, value in fields.items():
            assert isinstance(value, int | float | bool), f"field {name}={value!r} is not a number"
        tag_text = ",".join(f"{k}={v}" for k, v in sorted(tags.items()))
        field_text = ",".join(f"{k}={line_value(v)}" for k, v in fields.items())
        lines.append(f"{rules['measurement_name']},{tag_text} {field_text} {ts_ms * 1_000_000}")
    return lines


def line_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value}i" if isinstance(value, int) else repr(value)


def site_config(workdir: Path, broker: Broker, modbus_port: int, prefix: str) -> Path:
    points = "".join(
        f'[[device.point]]\nname = "{p.name}"\ntable = "{p.table}"\naddress = {p.address}\n'
        f'type = "{p.type}"\n'
        for p in POINTS
    )
    path = workdir / "site.toml"
    path.write_text(
        f'[agent]\nid = "gw-check"\ndata_dir = "{workdir / "data"}"\n'
        f'[mqtt]\nurl = "{broker.url}"\ntopic_prefix = "{prefix}"\n'
        f'[[bus]]\nname = "plc"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = {modbus_port}\n'
        f'[[device]]\nname = "meter1"\nbus = "plc"\nunit = 1\ninterval = "0.2s"\n{points}'
    )
    return path


async def consume(
    port: int, topic: str, name: str, got: list[tuple[str, str, dict[str, Any]]]
) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=name, protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        await client.subscribe(topic, qos=1)
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            got.append((name, str(message.topic), json.loads(message.payload)))


async def main() -> int:
    conf = consumer_conf()
    (shared,) = conf["topics"]
    prefix = shared.split("/")[2]  # $share/<group>/<prefix>/+/telemetry
    with tempfile.TemporaryDirectory(prefix="telegraf-check-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir)
        broker.start()
        slave = SimulatedSlave(1, POINTS)
        slave.set_value("power", 1.5)
        slave.set_value("energy", 123456)
        slave.set_value("running", True)
        try:
            async with ModbusSimulator([slave]) as simulator:
                got: list[tuple[str, str, dict[str, Any]]] = []
                consumers = [
                    asyncio.create_task(consume(broker.port, shared, f"telegraf-{n}", got))
                    for n in (1, 2)
                ]
                await asyncio.sleep(0.5)
                agent = AgentProcess(site_config(workdir, broker, simulator.port, prefix))
                agent.start()
                await asyncio.sleep(8)
                await asyncio.to_thread(agent.stop)
                await asyncio.sleep(0.5)
                for task in consumers:
                    task.cancel()
                await asyncio.gather(*consumers, return_exceptions=True)
        finally:
            broker.stop()
    ids = [s["id"] for _, _, p in got for s in p["samples"]]
    by_consumer = {
        name: sum(len(p["samples"]) for n, _, p in got if n == name) for name, _, _ in got
    }
    lines = [line for _, topic, payload in got for line in metrics(conf, topic, payload)]
    print(
        f"{len(got)} messages, {len(ids)} samples; samples per consumer of the group: {by_consumer}"
    )
    print("first metrics as Telegraf would write them:")
    print("\n".join(lines[:3]))
    problems = []
    if not ids or sorted(ids) != list(range(1, max(ids) + 1)):
        problems.append("sample ids missing or delivered twice across the group")
    if len(by_consumer) < 2:
        problems.append("the shared subscription did not spread messages over both consumers")
    if len(lines) != len(ids):
        problems.append("not one metric per sample")
    print("\n".join(problems) or "OK: one metric per sample, each sample to one consumer")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
