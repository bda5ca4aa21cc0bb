"""Requests per poll for each built-in template: planned (merged) against one request per point.

Run: python -m bench.plan_requests   (prints a Markdown table for the README)
"""

from __future__ import annotations

from agent.config import BusConfig, builtin_templates
from drivers.modbus.plan import plan_requests
from drivers.modbus.schema import modbus_points


def main() -> None:
    bus = BusConfig("bench", "modbus-rtu")  # the defaults: merge_gap 8, 125 registers per read
    print("| template | points | requests per poll (one per point) | registers read |")
    print("| --- | --- | --- | --- |")
    for template in sorted(builtin_templates(), key=lambda t: t.name):
        requests = plan_requests(modbus_points(template.points), bus)
        registers = sum(r.count for r in requests)
        print(
            f"| `{template.name}` | {len(template.points)} | {len(requests)} "
            f"({len(template.points)}) | {registers} |"
        )


if __name__ == "__main__":
    main()
