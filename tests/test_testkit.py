"""The test kit (``agent.testkit``) as users get it: its pytest plugin's fixtures from plain tests,
the faults they inject, and the promises around it (no pytest in ``agent``, one simulator)."""

from __future__ import annotations

import asyncio
import math
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from agent.aio import cancel_and_wait
from agent.testkit import run, toml
from agent.testkit.broker import Broker
from agent.testkit.faults import IdLedger
from agent.testkit.modbus import ModbusBus, SimSlave, template_points
from agent.testkit.mqtt import Subscriber
from agent.testkit.net import LOWEST_PORT, ephemeral_low, free_port, free_ports
from agent.testkit.runner import AgentRunner, site_config
from agent.testkit.sensor import SerialSensor
from agent.testkit.simulated import SimulatedBus
from agent.testkit.telemetry import Telemetry
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

LEVEL = ModbusPoint("level", table="holding", address=0, type="uint16")

HEAD = """
[agent]
id = "kit"
[mqtt]
topic_prefix = "t"
batch_interval = "100ms"
"""
TANK = """
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "192.0.2.1"
timeout = "300ms"
[[device]]
name = "tank"
bus = "plc"
unit = 4
interval = "200ms"
  [[device.point]]
  name = "level"
  table = "holding"
  address = 0
"""
WX = """
[[bus]]
name = "line"
type = "serial"
port = "/dev/ttyUSB9"
timeout = "300ms"
[[device]]
name = "wx"
bus = "line"
driver = "serial-line"
interval = "200ms"
command = '?\\r'
delimiter = ","
  [[device.point]]
  name = "wind"
  field = 1
"""
SITE = HEAD + TANK + WX


def test_importing_agent_or_the_plugin_imports_neither_pytest_nor_the_rig() -> None:
    code = (
        "import sys, agent, agent.cli.main, agent.testkit\n"
        "assert 'pytest' not in sys.modules, 'agent imports pytest'\n"
        "import agent.testkit.plugin\n"
        "heavy = {'aiomqtt', 'pymodbus', 'agent.testkit.broker'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_plugin_is_registered_through_its_entry_point() -> None:
    from importlib.metadata import entry_points

    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("edge_agent") == "agent.testkit.plugin"


def test_the_kit_serves_with_the_simulator_of_edge_agent_simulate(
    modbus_bus: Callable[..., ModbusBus],
) -> None:
    bus = modbus_bus("tcp")
    assert isinstance(bus.simulation.simulator, ModbusSimulator)  # type: ignore[attr-defined]


def test_a_tcp_slave_from_a_template_answers_what_the_test_set(
    modbus_slave: Callable[..., SimSlave],
) -> None:
    meter = modbus_slave(template="eastron-sdm120", unit=7)
    assert set(meter.points) == {p.name for p in template_points("eastron-sdm120")}
    meter.set("voltage", 229.5)
    assert meter.get("voltage") == 229.5

    async def body() -> None:
        async with AsyncModbusTcpClient(meter.bus.host, port=meter.bus.port, timeout=0.3) as c:
            answer = await c.read_input_registers(0, count=2, device_id=7)
            assert answer.registers == [0x4365, 0x8000]  # 229.5 as a big-endian float32
            meter.exception = 4
            failed = await c.read_input_registers(0, count=2, device_id=7)
            assert failed.isError()
            assert failed.exception_code == 4
            meter.exception = None
            meter.slow_ms = 150
            started = time.monotonic()
            await c.read_input_registers(0, count=2, device_id=7)
            assert time.monotonic() - started >= 0.14
            meter.slow_ms = 0
            meter.dead = True
            with pytest.raises(ModbusException):
                await c.read_input_registers(0, count=2, device_id=7)

    run(body(), timeout=30)
    assert meter.requests == 3  # the dead one was not answered
    with pytest.raises(NotImplementedError, match="RTU"):
        meter.bus.corrupt("crc")


def test_a_slave_from_points_and_a_missing_template_is_named() -> None:
    with pytest.raises(KeyError, match="no built-in template 'nope'; there are: apogee"):
        template_points("nope")


def test_an_rtu_bus_spoils_answers_and_the_agent_counts_them(
    modbus_bus: Callable[..., ModbusBus], edge_agent: AgentRunner
) -> None:
    bus = modbus_bus("rtu")
    tank = bus.add(4, points=[LEVEL])
    tank.set("level", 42)
    site = HEAD + TANK.replace('type = "modbus-tcp"\nhost = "192.0.2.1"', 'type = "modbus-rtu"')
    edge_agent.start(site, buses={"plc": bus})
    edge_agent.wait_sample("tank", "level", 42)
    bus.corrupt("crc", 2)
    bus.corrupt("unit", 1)
    edge_agent.telemetry.wait_for(lambda _: bus.faults_pending == 0, timeout=10)
    tank.set("level", 43)
    edge_agent.wait_sample("tank", "level", 43)  # it answers well again
    faults = edge_agent.status()["devices"]["tank"]
    assert faults["errors"] >= 2, faults
    assert faults["state"] == "ok", faults


def test_a_serial_sensor_answers_commands_and_prints_on_a_schedule(
    serial_sensor: Callable[..., SerialSensor],
) -> None:
    sensor = serial_sensor(terminator="\n")
    sensor.answer("?\r", ["first", "second"])
    sensor.answer("N\r", lambda command: None)  # heard, not answered

    async def body() -> list[bytes]:
        import serial  # type: ignore[import-untyped]

        port = serial.Serial(str(sensor.path), timeout=2)
        try:
            lines = []
            for _ in range(3):
                port.write(b"?\r")
                lines.append(port.readline())
            port.write(b"N\r")
            sensor.every(0.05, "tick", "tock")
            lines += [port.readline(), port.readline()]
            return lines
        finally:
            port.close()

    assert run(body()) == [b"first\n", b"second\n", b"second\n", b"tick\n", b"tock\n"]
    assert sensor.commands == 4


def test_the_agent_runner_points_buses_and_runs_the_agent(
    modbus_slave: Callable[..., SimSlave],
    serial_sensor: Callable[..., SerialSensor],
    edge_agent: AgentRunner,
    mosquitto: Broker,
) -> None:
    tank = modbus_slave(points=[LEVEL], unit=4)
    tank.set("level", 7)
    wx = serial_sensor()
    wx.answer("?\r", "W,3.5,N")
    edge_agent.start(SITE, buses={"plc": tank.bus, "line": wx})
    written = tomllib.loads(edge_agent.config_path.read_text())
    assert written["bus"][0]["host"] == "127.0.0.1"
    assert written["bus"][0]["port"] == tank.bus.port
    assert written["bus"][1]["port"] == str(wx.path)
    assert written["mqtt"]["url"] == mosquitto.url
    assert written["agent"]["data_dir"] == str(edge_agent.data_dir)

    assert edge_agent.wait_sample("wx", "wind", 3.5)["device"] == "wx"
    edge_agent.wait_sample("tank", "level", 7)
    assert edge_agent.status()["devices"]["tank"]["state"] == "ok"
    edge_agent.wait_log("running: 2 device")

    edge_agent.hup()
    edge_agent.wait_log("reload")
    assert edge_agent.running
    assert edge_agent.kill() == -9
    assert not edge_agent.running
    edge_agent.start(SITE, buses={"plc": tank.bus, "line": wx})  # the same data dir again
    tank.set("level", 8)
    edge_agent.wait_sample("tank", "level", 8)
    assert edge_agent.term() == 0
    ids = [s["id"] for s in edge_agent.samples("tank")]
    assert ids == sorted(ids)


def test_a_failed_start_says_why(edge_agent: AgentRunner) -> None:
    with pytest.raises(RuntimeError, match="exited with 2"):
        edge_agent.start('[agent]\nid = "x"\nbogus = 1\n', timeout=15)


def test_telemetry_rides_through_a_broker_restart(
    telemetry: Telemetry,
    mosquitto: Broker,
    modbus_slave: Callable[..., SimSlave],
    edge_agent: AgentRunner,
) -> None:
    tank = modbus_slave(points=[LEVEL], unit=4)
    edge_agent.start(HEAD + TANK, buses={"plc": tank.bus})
    telemetry.wait_samples(2, device="tank")
    mosquitto.restart()
    count = len(telemetry.samples())
    telemetry.wait_samples(count + 3, timeout=30)
    assert telemetry.connections >= 2


def test_site_config_from_a_dict_writes_toml_that_reads_back() -> None:
    data = tomllib.loads(SITE)
    data["device"][0]["point"][0]["not_available"] = [0xFFFF, float("nan")]
    data["agent"]["include"] = ["extra/*.toml"]
    data["mqtt"]["topic_prefix"] = 'quote " and \\ and é'
    back = tomllib.loads(toml.dumps(data))
    nan = back["device"][0]["point"][0]["not_available"].pop()
    assert math.isnan(nan)
    data["device"][0]["point"][0]["not_available"].pop()
    assert back == data

    changed = site_config(
        data,
        buses={"plc": "127.0.0.1:1502", "line": Path("/dev/pts/9")},
        mqtt_url="mqtt://127.0.0.1:1",
        overrides={"mqtt": {"health_interval": "1s"}, "buffer": {"max_size": "1MB"}},
    )
    assert changed["bus"][0] | {} == {**data["bus"][0], "host": "127.0.0.1", "port": 1502}
    assert changed["bus"][1]["port"] == "/dev/pts/9"
    assert changed["mqtt"]["health_interval"] == "1s"
    assert changed["mqtt"]["topic_prefix"]
    assert changed["buffer"] == {"max_size": "1MB"}
    assert data["bus"][1]["port"] == "/dev/ttyUSB9"  # the caller's dict is left alone
    with pytest.raises(KeyError, match=r"no bus 'rs485' \(buses: plc, line\)"):
        site_config(data, buses={"rs485": "/dev/pts/1"})
    with pytest.raises(ValueError, match="HOST:PORT"):
        site_config(data, buses={"plc": "/dev/pts/1"})


def test_a_slaves_wire_faults_are_set_on_its_simslave(
    modbus_slave: Callable[..., SimSlave],
) -> None:
    meter = modbus_slave(points=[LEVEL])
    meter.wrong_tid, meter.garbage, meter.noise, meter.drip_ms = True, True, True, 40
    seeded = random.Random(5)
    meter.random = seeded
    simulated = meter.simulated
    assert (simulated.wrong_tid, simulated.garbage, simulated.noise) == (True, True, True)
    assert simulated.drip == 0.04
    assert simulated.random is seeded
    meter.corrupt = None  # nothing to clear on TCP: no error either
    with pytest.raises(NotImplementedError, match="RTU"):
        meter.corrupt = "crc"
    for kind in ("rtu", "rtu-over-tcp"):
        with pytest.raises(NotImplementedError, match="transaction ids are Modbus TCP's"):
            modbus_slave(points=[LEVEL], kind=kind).wrong_tid = True


def test_one_rtu_slave_is_corrupted_on_its_own(modbus_bus: Callable[..., ModbusBus]) -> None:
    bus = modbus_bus("rtu")
    healthy, spoilt = bus.add(1, points=[LEVEL]), bus.add(2, points=[LEVEL])
    with pytest.raises(ValueError, match="corrupt must be one of crc, truncate, unit, drop"):
        spoilt.corrupt = "bogus"  # type: ignore[assignment]
    spoilt.corrupt = "crc"
    assert spoilt.corrupt == "crc"
    assert healthy.corrupt is None

    async def body() -> None:
        client = AsyncModbusSerialClient(str(bus.address), timeout=0.2, retries=0)
        assert await client.connect()
        try:
            for _ in range(3):
                with pytest.raises(ModbusException):
                    await client.read_holding_registers(0, count=1, device_id=2)
                assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()
            spoilt.corrupt = None
            assert not (await client.read_holding_registers(0, count=1, device_id=2)).isError()
        finally:
            client.close()

    run(body(), timeout=30)
    assert bus.faults_pending == 0  # the slave's own fault is not a queued one


def test_an_rtu_answer_drips_through_the_proxy_as_it_comes(
    modbus_bus: Callable[..., ModbusBus],
) -> None:
    bus = modbus_bus("rtu")
    meter = bus.add(1, points=[LEVEL])
    meter.drip_ms = 50
    request = bytes.fromhex("01 03 0000 0001 840a")  # FC 3, one register, its CRC

    def arrivals() -> list[float]:
        import serial

        port = serial.Serial(str(bus.address), timeout=1)
        try:
            port.write(request)
            started = time.monotonic()
            times: list[float] = []
            while len(times) < 7 and port.read(1):
                times.append(time.monotonic() - started)
            return times
        finally:
            port.close()

    times = arrivals()
    assert len(times) == 7
    assert times[0] < 0.1  # the first byte did not wait for the rest of the frame
    assert times[-1] - times[0] >= 6 * 0.05 * 0.9


def test_a_subscriber_leaving_keeps_what_its_client_had_already_acknowledged(
    mosquitto: Broker,
) -> None:
    """paho acknowledges a QoS 1 message as it queues it: a subscriber that leaves before
    reading it must still record it, or the broker's "delivered" is a sample nobody saw."""

    async def scenario() -> list[int]:
        subscriber = Subscriber("127.0.0.1", mosquitto.port, "kit/queued")
        async with subscriber:
            # its reader stopped, so that what arrives stays in paho's queue: the case at hand
            assert subscriber._reader is not None  # noqa: SLF001
            await cancel_and_wait(subscriber._reader)  # noqa: SLF001 (acknowledged, not read yet)
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as publisher:
                for n in range(5):
                    await publisher.publish("kit/queued", str(n), qos=1)
            while len(subscriber.client.messages) < 5:  # noqa: ASYNC110 (bounded by run())
                await asyncio.sleep(0.01)  # paho's queue has no event to await
        return [payload for _, payload, _ in subscriber.messages]

    assert run(scenario(), timeout=20) == [0, 1, 2, 3, 4]


def test_the_ledger_counts_a_jump_past_what_len_can_hold() -> None:
    """After a lost ``buffer.ids`` the ids jump by 2**32, which ``len()`` of a range cannot
    count on a 32-bit gateway (armhf, where ssize_t is 32 bits); 2**64 fails everywhere. The
    jump is no sample lost, and a hole after it still is."""
    ledger = IdLedger()
    after = 2**64 + 10
    ids = [1, 2, after, after + 2]
    ledger.record([{"id": i, "device": "d", "ts": i, "values": {}} for i in ids])
    reconciled = ledger.reconcile(buffered=[], dropped=0, lost=0)
    assert reconciled.generated == 5
    assert reconciled.unaccounted == [after + 1]


def test_rig_ports_lie_below_the_range_outgoing_connections_take() -> None:
    """A broker restarted on its port must find it free: no client may have taken it meanwhile."""
    low = ephemeral_low()
    ports = [free_port() for _ in range(50)]
    assert all(LOWEST_PORT <= port < low for port in ports)
    first = free_ports(3)
    assert first >= LOWEST_PORT
    assert first + 3 <= low


METER_SITE = """
[agent]
id = "kit"
[mqtt]
topic_prefix = "t"
batch_interval = "100ms"
[[bus]]
name = "meters"
type = "serial"
port = "/dev/ttyUSB0"
timeout = "500ms"
[[bus]]
name = "optical"
type = "serial"
port = "/dev/ttyUSB1"
bytesize = 8                       # a pseudo-terminal may refuse 7E1 re-applied
parity = "N"
timeout = "1s"
[[device]]
name = "house"
bus = "meters"
driver = "dlt645"
address = "000012345678"
interval = "200ms"
  [[device.point]]
  name = "voltage"
  di = "02010100"
  [[device.point]]
  name = "energy"
  di = "00010000"
[[device]]
name = "heat"
bus = "optical"
driver = "iec62056"
reaction_time = "20ms"
interval = "200ms"
  [[device.point]]
  name = "import"
  obis = "1.8.0"
"""


def test_any_drivers_bus_is_simulated_from_the_site_and_its_devices_take_faults(
    simulated_bus: Callable[..., SimulatedBus], edge_agent: AgentRunner
) -> None:
    meters = simulated_bus(METER_SITE, "meters", {"house": {"voltage": 231.5, "energy": 1234.56}})
    optical = simulated_bus(METER_SITE, "optical", {"heat": {"import": 12.345}})
    edge_agent.start(METER_SITE, buses={"meters": meters, "optical": optical})
    sample = edge_agent.wait_sample("house", "voltage", 231.5)
    assert sample["values"]["energy"] == 1234.56
    edge_agent.wait_sample("heat", "import", 12.345)
    house = meters.device("house")  # the driver's own emulated meter, with its faults
    house.bad_checksum = 2

    def counted() -> bool:
        return bool(edge_agent.status()["devices"]["house"]["errors"])

    edge_agent.telemetry.wait_for(lambda _: counted(), timeout=20)
    assert house.bad_checksum == 0  # both spoilt replies were sent, and read as such
    before = len(edge_agent.telemetry.values("house", "voltage"))
    edge_agent.telemetry.wait_for(
        lambda t: len(t.values("house", "voltage")) > before, timeout=20
    )  # and the meter is read again


def test_a_simulated_bus_names_a_device_it_does_not_serve(
    simulated_bus: Callable[..., SimulatedBus],
) -> None:
    meters = simulated_bus(METER_SITE, "meters")
    assert Path(meters.address).exists()
    with pytest.raises(KeyError, match=r"serves no device 'heat' \(devices: house\)"):
        meters.device("heat")


def test_a_broker_whose_port_another_process_holds_does_not_pass_for_started(
    tmp_path: Path,
) -> None:
    """Something else listening there would answer a connection test: the broker must say it
    runs itself."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        broker = Broker(tmp_path, port=holder.getsockname()[1])
        with pytest.raises(TimeoutError, match="Address already in use"):
            broker.start()
