"""Requests per poll for each built-in template: planned (merged) against one request per point.
A SunSpec template's points are placed on the map ``edge-agent simulate`` serves (a real unit's
reads depend on its chain of models), their scale factors read with them.

Run: python -m bench.plan_requests   (prints a Markdown table for the README)
"""

from __future__ import annotations

from agent.config import BusConfig, DeviceConfig, TemplateConfig, builtin_templates
from drivers.modbus.plan import plan_requests
from drivers.modbus.schema import ModbusPoint, modbus_points
from drivers.modbus.sunspec_points import place, simulated_map, sunspec_points


def points_read(template: TemplateConfig) -> list[ModbusPoint]:
    """The points a poll of a device of ``template`` reads, SunSpec ones placed."""
    points = modbus_points(template.points)
    if not sunspec_points(points):
        return points
    device = DeviceConfig(template.name, "bench", "modbus", 10.0, points=template.points)
    return list(place(points, simulated_map(device).chain).points)


def main() -> None:
    bus = BusConfig("bench", "modbus-rtu")  # the defaults: merge_gap 8, 125 registers per read
    print("| template | points | requests per poll (one per point) | registers read |")
    print("| --- | --- | --- | --- |")
    for template in sorted(builtin_templates(), key=lambda t: t.name):
        requests = plan_requests(points_read(template), bus)
        registers = sum(r.count for r in requests)
        print(
            f"| `{template.name}` | {len(template.points)} | {len(requests)} "
            f"({len(template.points)}) | {registers} |"
        )


if __name__ == "__main__":
    main()
