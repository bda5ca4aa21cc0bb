"""edge-agent's test kit: the rig the project tests itself with, for integrators' own CI.

Simulated field buses (Modbus slaves over TCP or RTU on a pseudo-terminal, scripted serial
sensors), a real Mosquitto broker, and ``edge-agent run`` as a child process, offered as pytest
fixtures by ``agent.testkit.plugin`` (registered through pytest's ``pytest11`` entry point: the
fixtures are there in any test of a project that has edge-agent installed, and nothing runs
unless a test asks for one). See README.md, "Testing your site: the test kit".

The modules work without pytest too: ``broker.Broker``, ``mqtt.Subscriber``,
``process.AgentProcess``, ``serial.SerialProxy``, ``modbus.ModbusBus``, ``sensor.SerialSensor``,
``runner.AgentRunner``, ``telemetry.Telemetry``. Importing ``agent`` never imports this package,
and only ``plugin`` imports pytest.
"""

from __future__ import annotations

from .aio import run, until

__all__ = ["run", "until"]
