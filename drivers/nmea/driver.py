"""``nmea``: a GPS (GNSS) receiver printing NMEA 0183 sentences on a serial port.

Its device sits on a ``[[bus]]`` of ``type = "serial"`` (keys ``port``, ``baudrate`` — most
receivers print at 4800 or 9600 —, ``parity``, ``stopbits``, ``bytesize``, ``timeout``, as for
``modbus-rtu``) and says ``driver = "nmea"``. The sentences are parsed here (no dependency):
``GGA`` (position, altitude, fix quality, satellites, HDOP) and ``RMC`` (status, speed, course,
date and time), from any of the talkers ``GP`` (GPS), ``GN`` (combined), ``GL`` (GLONASS),
``GA`` (Galileo) and ``BD`` (BeiDou). Other sentences (GSV, GSA, VTG…) are ignored.

Each sentence's checksum (``*HH``, the XOR of the characters between ``$`` and ``*``) is
verified: a sentence without one, or with a wrong one, is counted as ``bad_checksum`` and
ignored.

Device keys:

* ``line_timeout`` — how long a poll reads sentences (default: the bus ``timeout``). A poll ends
  as soon as it has both a GGA and an RMC, and reports the latest of each; sentences that arrived
  between polls are dropped, so make it longer than the receiver's period (``"2s"`` for the usual
  1 Hz receiver).

Point keys:

* ``field`` — what the point reports (default: the point's name): ``latitude`` and
  ``longitude`` (decimal degrees, negative south and west), ``altitude`` (metres above mean sea
  level), ``fix_quality`` (GGA's: 0 none, 1 GPS, 2 DGPS, 4 RTK…), ``satellites`` (in use),
  ``hdop``, ``speed`` (m/s, from RMC's knots), ``course`` (degrees true), ``gps_time`` (the
  receiver's UTC date and time, in milliseconds since the epoch), ``fix`` (true while the fix is
  valid). ``scale`` and ``offset`` apply to all but ``fix``.

**A lost fix is reported, not a position of 0,0**: when GGA's fix quality is 0 or RMC's status
is ``V``, the position, altitude, speed and course points are absent, ``fix`` is false,
``fix_quality`` 0, and the poll's error says "no fix". A field a poll did not get (no RMC within
the timeout, an empty course) is an error for its point only; no valid sentence at all within
the timeout fails the poll.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar

# pyserial ships no types (types-pyserial is not a dependency): its few calls here are checked
# by the tests on real pseudo-terminals.
from agent.api import (
    BusConfig,
    DeviceConfig,
    DeviceError,
    DriverContext,
    PointConfig,
    Poll,
    Value,
    scaled,
)
from agent.api import keys as conv
from agent.api.keys import Convert, suggest
from agent.api.serial import SerialDriver, line_timeout

#: What a point may report.
FIELDS = (
    "latitude",
    "longitude",
    "altitude",
    "fix_quality",
    "satellites",
    "hdop",
    "speed",
    "course",
    "gps_time",
    "fix",
)
#: The fields that only mean something with a valid fix.
FIX_ONLY = frozenset({"latitude", "longitude", "altitude", "speed", "course"})
TALKERS = frozenset({"GP", "GN", "GL", "GA", "BD"})
#: Metres per second in a knot (1852 m per hour).
KNOT = 1852 / 3600


def _field_name(value: Any) -> str:
    """A field name; whether it is one of ``FIELDS`` is checked by ``validate`` (which also
    checks the default, the point's name), so that both get the same message."""
    return conv.text(value)


class NmeaDriver(SerialDriver):
    """One serial port with one GPS receiver; each poll reads its latest GGA and RMC."""

    driver_name: ClassVar[str] = "nmea"
    device_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "line_timeout": conv.positive_duration,
    }
    point_options: ClassVar[Mapping[str, Convert[Any]]] = {
        "field": _field_name,
    }

    def __init__(self, bus: BusConfig, context: DriverContext | None = None) -> None:
        super().__init__(bus, context)
        #: Per device name: ``sentences`` (valid GGA/RMC), ``bad_checksum``, ``timeouts``,
        #: ``no_fix`` (polls without a valid fix).
        self.counters: dict[str, Counter[str]] = {}

    @classmethod
    def validate(cls, bus: BusConfig, devices: Sequence[DeviceConfig]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        problems.extend(cls.bus_problems(bus))
        for device in devices:
            for point in device.points:
                at = f"device.{device.name}.point.{point.name}"
                field = _field(point)
                if field not in FIELDS:
                    key = "field" if "field" in point.options else "name"
                    problems.append(
                        (
                            f"{at}.{key}",
                            f'no field "{field}"{suggest(field, FIELDS)}; '
                            f"the fields: {', '.join(FIELDS)}",
                        )
                    )
                elif field == "fix" and (point.scale != 1 or point.offset != 0):
                    problems.append((f"{at}.scale", "scale and offset apply to numbers, not fix"))
        return problems

    def describe(self, device: DeviceConfig) -> list[str]:
        return [f"read GGA and RMC sentences for up to {line_timeout(self.bus, device):g}s"]

    async def read(self, device: DeviceConfig) -> Poll:
        """Read sentences until a GGA and an RMC came (or the line timeout); report the latest."""
        counters = self.counters.setdefault(device.name, Counter())
        timeout = line_timeout(self.bus, device)
        self._line.discard_stale(timeout)
        deadline = time.monotonic() + timeout
        latest: dict[str, list[str]] = {}
        bad_before = counters["bad_checksum"]
        try:
            while not ("GGA" in latest and "RMC" in latest):
                fields = _sentence(await self._line.read_line(b"\n", deadline))
                if fields is None:
                    counters["bad_checksum"] += 1
                    continue
                kind = _kind(fields[0])
                if kind in ("GGA", "RMC"):
                    counters["sentences"] += 1
                    latest[kind] = fields
        except TimeoutError:
            if not latest:
                counters["timeouts"] += 1
                bad = counters["bad_checksum"] - bad_before
                also = f" ({bad} with a bad checksum)" if bad else ""
                raise DeviceError(
                    f"device {device.name}: no GGA or RMC sentence{also} within {timeout:g}s"
                    f" on {self.bus.serial_port}"
                ) from None
        found, missing = _fields(latest)
        values: dict[str, Value] = {}
        errors: list[str] = []
        if not found["fix"]:
            counters["no_fix"] += 1
            errors.append(f"device {device.name}: no fix")
        for point in device.points:
            field = _field(point)
            value = found.get(field)
            if value is None:
                if not (field in FIX_ONLY and not found["fix"]):
                    why = missing.get(field, f"no {field} in the sentences")
                    errors.append(f"device {device.name}: {point.name}: {why}")
                continue
            values[point.name] = scaled(point, value)
        return Poll(values, tuple(errors))


# --- parsing


def _field(point: PointConfig) -> str:
    return str(point.options.get("field", point.name))


def checksum(body: str) -> int:
    """The XOR of the characters of ``body`` (what lies between ``$`` and ``*``)."""
    total = 0
    for char in body.encode("ascii", "replace"):
        total ^= char
    return total


def _sentence(line: str) -> list[str] | None:
    """The comma-separated fields of a sentence (the address first), or None when the line is
    not a sentence with a right checksum. Noise before the ``$`` is dropped."""
    start = line.rfind("$")
    star = line.rfind("*")
    if start < 0 or star < start:
        return None
    body, given = line[start + 1 : star], line[star + 1 :].strip()
    try:
        if len(given) != 2 or int(given, 16) != checksum(body):
            return None
    except ValueError:
        return None
    return body.split(",")


def _kind(address: str) -> str | None:
    """``GGA`` for ``GPGGA``, ``GNGGA``…; None for another talker (or a proprietary ``P…``)."""
    if len(address) == 5 and address[:2] in TALKERS:
        return address[2:]
    return None


def _at(fields: list[str], index: int) -> str:
    return fields[index].strip() if index < len(fields) else ""


def _angle(text: str, hemisphere: str, negative: str) -> float | None:
    """Degrees from NMEA's ``(d)ddmm.mmmm`` and its hemisphere letter."""
    if not text or hemisphere not in ("N", "S", "E", "W"):
        return None
    dot = text.find(".")
    split = (dot if dot >= 0 else len(text)) - 2
    if split < 0:
        return None
    try:
        degrees = int(text[:split] or "0") + float(text[split:]) / 60
    except ValueError:
        return None
    return -degrees if hemisphere == negative else degrees


def _number(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _integer(text: str) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _time_ms(clock: str, date: str) -> int | None:
    """RMC's ``hhmmss(.sss)`` and ``ddmmyy`` as milliseconds since the epoch (UTC); two-digit
    years 80 to 99 are 1980 to 1999, the others 2000 to 2079."""
    if len(clock) < 6 or len(date) != 6:
        return None
    try:
        year = int(date[4:6])
        moment = datetime(
            year + (1900 if year >= 80 else 2000),
            int(date[2:4]),
            int(date[0:2]),
            int(clock[0:2]),
            int(clock[2:4]),
            int(clock[4:6]),
            tzinfo=timezone.utc,
        )
        fraction = float("0" + clock[6:]) if clock[6:] else 0.0
    except ValueError:
        return None
    return int(moment.timestamp()) * 1000 + round(fraction * 1000)


def _fields(latest: Mapping[str, list[str]]) -> tuple[dict[str, Value | None], dict[str, str]]:
    """Every field's value from the latest GGA and RMC (None when not known), and, per field
    not known, why. ``fix`` is always known; the position ones are None without a fix."""
    found: dict[str, Value | None] = dict.fromkeys(FIELDS)
    missing: dict[str, str] = {}
    gga, rmc = latest.get("GGA"), latest.get("RMC")
    for name in ("latitude", "longitude", "altitude", "fix_quality", "satellites", "hdop"):
        if gga is None:
            missing[name] = "no GGA sentence within the timeout"
    for name in ("speed", "course", "gps_time"):
        if rmc is None:
            missing[name] = "no RMC sentence within the timeout"
    quality = _integer(_at(gga, 6)) if gga is not None else None
    status = _at(rmc, 2) if rmc is not None else None
    fix = (gga is None or bool(quality)) and (rmc is None or status == "A")
    found["fix"] = fix
    if not fix:  # known to be lost, whichever sentence said so
        found["fix_quality"] = 0
        missing.pop("fix_quality", None)
    if gga is not None:
        found["fix_quality"] = quality if fix else 0
        found["satellites"] = _integer(_at(gga, 7))
        found["hdop"] = _number(_at(gga, 8))
        if fix:
            found["latitude"] = _angle(_at(gga, 2), _at(gga, 3), "S")
            found["longitude"] = _angle(_at(gga, 4), _at(gga, 5), "W")
            found["altitude"] = _number(_at(gga, 9))
    if rmc is not None:
        found["gps_time"] = _time_ms(_at(rmc, 1), _at(rmc, 9))
        if fix:
            knots = _number(_at(rmc, 7))
            found["speed"] = None if knots is None else knots * KNOT
            found["course"] = _number(_at(rmc, 8))
            if gga is None:  # RMC has a position too
                found["latitude"] = _angle(_at(rmc, 3), _at(rmc, 4), "S")
                found["longitude"] = _angle(_at(rmc, 5), _at(rmc, 6), "W")
    return found, missing
