"""The fleet's simulated Modbus TCP slaves, served by processes of their own.

Every agent polls the same few units (the same values for all), but not all from one server:
the agents' polls are aligned to the wall clock, so a thousand agents ask at the same instant,
and one Python process answering them all (beside the benchmark's subscriber) would answer the
last ones after the agents' timeout. A few processes, each serving a share of the fleet, each
get their own share of the cores at that instant.

    python -m bench._fleet_slaves DEVICES   # prints its port, serves until SIGTERM
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

from ._rig import VALUES
from .suite import POINTS


def simulated_slaves(devices: int) -> list[SimulatedSlave]:
    """Units 1…``devices``, each of 20 float32 points with the benchmarks' values."""
    slaves = [SimulatedSlave(unit, POINTS) for unit in range(1, devices + 1)]
    for slave in slaves:
        for name, value in VALUES.items():
            slave.set_value(name, value)
    return slaves


class SlaveFarm:
    """``processes`` slave servers; ``port_for(n)`` is the one the n-th agent polls."""

    def __init__(self, processes: int, devices: int) -> None:
        self.servers = [
            subprocess.Popen(
                [sys.executable, "-m", "bench._fleet_slaves", str(devices)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        self.ports = [int(self._first_line(server)) for server in self.servers]

    @staticmethod
    def _first_line(server: subprocess.Popen[str]) -> str:
        assert server.stdout is not None
        return server.stdout.readline()

    def port_for(self, n: int) -> int:
        return self.ports[n % len(self.ports)]

    @property
    def pids(self) -> list[int]:
        return [server.pid for server in self.servers]

    def stop(self) -> None:
        for server in self.servers:
            server.send_signal(signal.SIGTERM)
        for server in self.servers:
            server.wait(timeout=30)


async def serve(devices: int) -> None:
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    async with ModbusSimulator(simulated_slaves(devices)) as simulator:
        print(simulator.port, flush=True)
        await stopped.wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
