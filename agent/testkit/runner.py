"""``edge-agent run`` for a test: a site configuration given as TOML text or a dict, pointed at
the test's simulated buses and broker, with a data dir of its own; signals, its log, samples and
health states to wait for."""

from __future__ import annotations

import copy
import re
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.service.status import StatusError, query_status, status_path

from . import toml
from .aio import KitLoop
from .broker import Broker
from .modbus import ModbusBus
from .process import AgentProcess
from .sensor import SerialSensor
from .simulated import SimulatedBus
from .telemetry import Telemetry

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

#: What a bus may be pointed at: a simulated bus or sensor, a serial port path, or ``HOST:PORT``.
BusTarget = ModbusBus | SerialSensor | SimulatedBus | str | Path

_TCP_BUSES = ("modbus-tcp", "modbus-rtu-over-tcp")


def site_config(
    config: str | Path | Mapping[str, Any],
    *,
    buses: Mapping[str, BusTarget] | None = None,
    mqtt_url: str | None = None,
    data_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration ``config`` (TOML text, a TOML file or a dict) as a dict, with each bus
    named in ``buses`` pointed at its target (a serial bus's ``port``, a TCP bus's ``host`` and
    ``port``), ``[mqtt] url`` and ``[agent] data_dir`` replaced, and ``overrides`` merged in (a
    dict of tables: ``{"mqtt": {"health_interval": "1s"}}``). ``${NAME}`` stays for the agent."""
    if isinstance(config, Path):
        data: dict[str, Any] = tomllib.loads(config.read_text())
    elif isinstance(config, str):
        data = tomllib.loads(config)
    else:
        data = copy.deepcopy(dict(config))
    for name, target in (buses or {}).items():
        _point_bus(data, name, target)
    if mqtt_url is not None:
        data.setdefault("mqtt", {})["url"] = mqtt_url
    if data_dir is not None:
        data.setdefault("agent", {})["data_dir"] = str(data_dir)
    _merge(data, overrides or {})
    return data


def _point_bus(data: dict[str, Any], name: str, target: BusTarget) -> None:
    buses = data.get("bus", [])
    bus = next((b for b in buses if isinstance(b, dict) and b.get("name") == name), None)
    if bus is None:
        known = ", ".join(str(b.get("name")) for b in buses if isinstance(b, dict)) or "none"
        raise KeyError(f"the configuration has no bus {name!r} (buses: {known})")
    if isinstance(target, ModbusBus | SimulatedBus):
        address = target.address
    elif isinstance(target, SerialSensor):
        address = target.path
    else:
        address = str(target)
    if bus.get("type") in _TCP_BUSES:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"bus {name} is a TCP bus: point it at HOST:PORT, not {address!r}")
        bus["host"], bus["port"] = host.strip("[]"), int(port)
    else:
        bus["port"] = address


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


class AgentRunner:
    """One ``edge-agent run`` at a time, in ``directory`` (the ``edge_agent`` fixture).

    ``start(config, buses=…)`` writes the configuration to ``directory/site.toml`` with the data
    dir ``directory/data`` and the broker's URL, starts the agent as systemd would (with a
    ``NOTIFY_SOCKET``) and waits for it to be ready. Then: ``hup()``, ``term()``, ``kill()``,
    ``wait()``, ``log``, ``wait_log(text)``, ``status()``, ``wait_sample(device, point, …)``,
    ``wait_health(device, state)``. ``telemetry`` holds what the agent published since it started.
    """

    def __init__(self, kit: KitLoop, directory: Path, broker: Broker | None = None) -> None:
        self.kit = kit
        self.directory = directory
        self.broker = broker
        self.config_path = directory / "site.toml"
        self.data_dir = directory / "data"
        self.config: dict[str, Any] = {}
        self.process: AgentProcess | None = None
        self._telemetry: Telemetry | None = None

    def start(
        self,
        config: str | Path | Mapping[str, Any],
        *,
        buses: Mapping[str, BusTarget] | None = None,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        ready: bool = True,
        timeout: float = 20.0,
    ) -> AgentRunner:
        """Start the agent on ``config``; with ``ready``, return once it told systemd READY=1
        (a failed start raises ``RuntimeError`` with its log). See ``site_config``."""
        if self.running:
            raise RuntimeError("the agent is running already: stop it first")
        self.config = site_config(
            config,
            buses=buses,
            mqtt_url=self.broker.url if self.broker is not None else None,
            data_dir=self.data_dir,
            overrides=overrides,
        )
        self.config_path.write_text(toml.dumps(self.config))
        if self.broker is not None and self._telemetry is None:
            prefix = self.config.get("mqtt", {}).get("topic_prefix", "edge")
            self._telemetry = Telemetry(self.kit, self.broker.host, self.broker.port, f"{prefix}/#")
            self._telemetry.start()
        self.process = AgentProcess(self.config_path, env=env)
        self.process.start()
        if ready:
            try:
                self.process.wait_notified("READY=1", timeout)
            except TimeoutError:
                code = self.process.poll()
                if code is not None:
                    self.process.wait()  # reaped, its notify socket closed
                    raise RuntimeError(f"edge-agent run exited with {code}:\n{self.log}") from None
                raise
        return self

    @property
    def telemetry(self) -> Telemetry:
        if self._telemetry is None:
            raise RuntimeError("no broker: the runner was made without one, or not started")
        return self._telemetry

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def _process(self) -> AgentProcess:
        if self.process is None:
            raise RuntimeError("the agent is not started")
        return self.process

    def signal(self, sig: signal.Signals) -> None:
        self._process().signal(sig)

    def hup(self) -> None:
        """SIGHUP: the agent reloads its configuration (edit ``config_path`` first)."""
        self.signal(signal.SIGHUP)

    def term(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit code (the agent flushes its buffer and says offline)."""
        return self._process().stop(timeout)

    def kill(self) -> int:
        """SIGKILL, as a power cut would (nothing is flushed); returns the exit code."""
        process = self._process()
        process.signal(signal.SIGKILL)
        return process.wait()

    def wait(self, timeout: float = 20.0) -> int:
        return self._process().wait(timeout)

    def stop(self) -> None:
        """Stop whatever is left: the agent (SIGTERM, then SIGKILL) and the subscriber."""
        if self.process is not None:
            self.process.stop()
        if self._telemetry is not None:
            self._telemetry.stop()
            self._telemetry = None

    @property
    def log(self) -> str:
        """What the agent printed (stdout and stderr) since the first start."""
        return self.process.output() if self.process is not None else ""

    def wait_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait for a log line matching the regular expression ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log, re.MULTILINE)
            if found:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern!r} in the log in {timeout}s:\n{self.log}")
            time.sleep(0.05)  # a file written by another process: nothing to await

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """What ``edge-agent status`` shows (``StatusError`` if the agent does not answer)."""
        return self.kit.call(query_status(status_path(self.data_dir), timeout), timeout + 5)

    def wait_health(
        self, device: str, state: str = "failing", timeout: float = 30.0
    ) -> dict[str, Any]:
        """Wait until the agent's status gives ``device`` the ``state`` (``ok`` or ``failing``),
        asked on its status socket (no need to wait for ``mqtt.health_interval``); returns the
        device's status. ``telemetry.wait_health`` waits for the MQTT ``health`` report instead."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = self.status()["devices"].get(device)
            except (StatusError, KeyError) as exc:
                last = exc
            if isinstance(last, dict) and last.get("state") == state:
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"{device} not {state} within {timeout}s; status: {last}")
            time.sleep(0.1)  # the status socket is asked, not subscribed to

    def wait_sample(
        self,
        device: str,
        point: str | None = None,
        value: Any = ...,
        **options: Any,
    ) -> dict[str, Any]:
        """``telemetry.wait_sample``: a sample of ``device`` (with ``point``, ``== value``)."""
        if value is ...:
            return self.telemetry.wait_sample(device, point, **options)
        return self.telemetry.wait_sample(device, point, value, **options)

    def samples(self, device: str | None = None, point: str | None = None) -> list[dict[str, Any]]:
        return self.telemetry.samples(device, point)
