"""The rigs the tests run edge-agent against: a real Mosquitto, real Modbus slaves, the real CLI."""
