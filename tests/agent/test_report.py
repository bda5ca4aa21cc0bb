"""Report by exception: deadband and heartbeat per point."""

from __future__ import annotations

from agent.config import PointConfig
from agent.poll.report import ReportFilter
from drivers.modbus.schema import ModbusPoint

TEMP = PointConfig("temp", deadband=0.5)
LEVEL = PointConfig("level", heartbeat=60.0)
BOTH = PointConfig("flow", deadband=1.0, heartbeat=300.0)
PLAIN = PointConfig("count")
DOOR = ModbusPoint("door", table="coil", type="bool", deadband=0.0)


def test_points_without_rules_are_always_sent() -> None:
    report = ReportFilter([PLAIN])
    assert report.apply({"count": 1}, 0) == {"count": 1}
    assert report.apply({"count": 1}, 1) == {"count": 1}


def test_deadband_holds_back_small_moves_measured_from_the_last_sent_value() -> None:
    report = ReportFilter([TEMP])
    assert report.apply({"temp": 20.0}, 0) == {"temp": 20.0}  # first value always goes
    assert report.apply({"temp": 20.3}, 1) == {}
    assert report.apply({"temp": 20.45}, 2) == {}  # creeping: still within 0.5 of 20.0
    assert report.apply({"temp": 20.5}, 3) == {"temp": 20.5}
    assert report.apply({"temp": 20.1}, 4) == {}
    assert report.apply({"temp": 19.9}, 5) == {"temp": 19.9}


def test_heartbeat_alone_sends_changes_and_a_value_every_period() -> None:
    report = ReportFilter([LEVEL])
    assert report.apply({"level": 3}, 0) == {"level": 3}
    assert report.apply({"level": 3}, 30) == {}
    assert report.apply({"level": 4}, 31) == {"level": 4}
    assert report.apply({"level": 4}, 90) == {}
    assert report.apply({"level": 4}, 91) == {"level": 4}  # 60 s after the last one sent


def test_deadband_with_heartbeat() -> None:
    report = ReportFilter([BOTH, PLAIN])
    assert report.apply({"flow": 10.0, "count": 1}, 0) == {"flow": 10.0, "count": 1}
    assert report.apply({"flow": 10.5, "count": 2}, 100) == {"count": 2}
    assert report.apply({"flow": 10.5, "count": 3}, 300) == {"flow": 10.5, "count": 3}


def test_booleans_and_strings_are_sent_on_change() -> None:
    report = ReportFilter([DOOR])
    assert report.apply({"door": False}, 0) == {"door": False}
    assert report.apply({"door": False}, 1) == {}
    assert report.apply({"door": True}, 2) == {"door": True}


def test_a_point_missing_from_a_poll_keeps_its_last_sent_value() -> None:
    report = ReportFilter([TEMP])
    report.apply({"temp": 20.0}, 0)
    assert report.apply({}, 1) == {}
    assert report.apply({"temp": 20.2}, 2) == {}
