"""Time per RTU transaction against the time its bytes need on the wire.

A simulated slave on a pseudo-terminal pair answers a 10-register read; the agent's driver
repeats it. A pseudo-terminal does not pace bytes, so the measured time is the agent's (and
pymodbus's) own overhead; the wire time is computed for the baud rate and framing.

Run: python -m bench.rtu_overhead [--baud 9600] [--transactions 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from agent.api.pty import PtyLink
from agent.config import BusConfig, DeviceConfig
from drivers.modbus import ModbusDriver
from drivers.modbus.schema import ModbusPoint
from drivers.modbus.simulator import ModbusSimulator, SimulatedSlave

REGISTERS = 10
POINTS = tuple(
    ModbusPoint(f"r{i}", table="holding", address=i, type="uint16") for i in range(REGISTERS)
)


def wire_seconds(baud: int, parity: str, stopbits: int, registers: int) -> float:
    """Request (8 bytes) + answer (5 + 2n bytes) + two 3.5-character silences."""
    bits_per_char = 1 + 8 + (parity != "N") + stopbits
    chars = 8 + 5 + 2 * registers + 2 * 3.5
    return chars * bits_per_char / baud


async def measure(baud: int, transactions: int) -> list[float]:
    async with PtyLink() as link:
        slave_end, agent_end = link.paths
        async with ModbusSimulator(
            [SimulatedSlave(1, POINTS)], rtu=True, serial_port=slave_end, baudrate=baud
        ):
            bus = BusConfig("bench", "modbus-rtu", serial_port=agent_end, baudrate=baud)
            device = DeviceConfig("meter", "bench", "modbus", 1.0, unit=1, points=POINTS)
            times = []
            async with ModbusDriver(bus) as driver:
                for _ in range(transactions):
                    start = time.perf_counter()
                    await driver.read(device)
                    times.append(time.perf_counter() - start)
            return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--transactions", type=int, default=300)
    args = parser.parse_args()
    times = sorted(asyncio.run(measure(args.baud, args.transactions)))
    wire = wire_seconds(args.baud, "N", 1, REGISTERS)
    median, p95 = statistics.median(times), times[int(len(times) * 0.95)]
    print(f"{REGISTERS}-register read at {args.baud} baud 8N1")
    print(f"  on the wire (computed):      {wire * 1000:6.1f} ms")
    print(f"  agent overhead, median/p95:  {median * 1000:6.2f} / {p95 * 1000:.2f} ms (over a pty)")
    print(f"  overhead share of a transaction on a real line: {median / (wire + median):.1%}")


if __name__ == "__main__":
    main()
