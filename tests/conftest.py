"""What every test shares beyond the test kit's fixtures (``agent.testkit.plugin``, loaded through
its ``pytest11`` entry point: ``mosquitto``, ``telemetry``, ``modbus_bus``, ``modbus_slave``,
``serial_sensor``, ``edge_agent``): the name ``broker`` for ``mosquitto``, and a thread-leak check."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agent.testkit.broker import Broker


@pytest.fixture
def broker(mosquitto: Broker) -> Broker:
    """The kit's ``mosquitto``, under the name the suite has always used."""
    return mosquitto


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running behind it (pymodbus's lesson)."""
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=2)  # asyncio's child watcher ends just after its child: let it
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads leaked: {leaked}"
