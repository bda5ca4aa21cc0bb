"""What the technician's page keeps in memory: each point's last hour (bounded whatever the poll
rate, and blind to a clock set back), the recent log lines (bounded, one line each), and the
notes beside a device's raw frames."""

from __future__ import annotations

import logging
import math

from agent.service.history import SLOT_MS, SLOTS, WINDOW_MS, History
from agent.service.logs import RECENT_LINE_CHARS, RecentLines
from agent.service.web import answer
from drivers.modbus.frames import FrameRing

HOUR0 = 1_800_000_000_000  # a slot boundary


def test_a_point_keeps_one_value_per_slot_for_an_hour_whatever_its_rate() -> None:
    history = History()
    # ten polls a second for two hours
    for ms in range(0, 2 * WINDOW_MS, 100):
        history.add("tank", HOUR0 + ms, {"level": ms / 1000, "name": "text", "on": True})
    now = HOUR0 + 2 * WINDOW_MS - 100
    kept = history.of("tank", now)
    assert set(kept) == {"level", "on"}  # text is not plotted
    level = kept["level"]
    assert len(level) == SLOTS
    assert [ts for ts, _ in level] == sorted(ts for ts, _ in level)
    assert level[0][0] > now - WINDOW_MS
    assert level[-1] == (now, (now - HOUR0) / 1000)  # the last one read in its slot
    assert {v for _, v in kept["on"]} == {1.0}


def test_what_is_not_a_finite_number_is_not_plotted_and_a_clock_set_back_shows_nothing_ahead() -> (
    None
):
    history = History()
    history.add("tank", HOUR0, {"level": 1.0})
    history.add("tank", HOUR0 + SLOT_MS, {"level": math.nan})
    history.add("tank", HOUR0 + 2 * SLOT_MS, {"level": math.inf})
    assert history.of("tank", HOUR0 + 3 * SLOT_MS) == {"level": [(HOUR0, 1.0)]}
    # the clock set back an hour: what was stamped "later" is not shown as the future
    history.add("tank", HOUR0 - WINDOW_MS, {"level": 2.0})
    assert history.of("tank", HOUR0 - WINDOW_MS) == {"level": [(HOUR0 - WINDOW_MS, 2.0)]}


def test_a_reload_forgets_what_is_no_longer_configured() -> None:
    history = History()
    history.add("tank", HOUR0, {"level": 1, "old": 2})
    history.add("pump", HOUR0, {"speed": 3})
    history.keep_only({"tank": ["level"]})
    assert history.of("tank", HOUR0) == {"level": [(HOUR0, 1.0)]}
    assert history.of("pump", HOUR0) == {}


def test_the_recent_log_lines_are_bounded_and_one_line_each() -> None:
    logger = logging.getLogger("test.recent")
    logger.setLevel(logging.DEBUG)
    with RecentLines(size=3) as recent:
        logger.debug("not kept: below info")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("device %s: failed", "tank")
        logger.warning("x" * 10_000)
        logger.info("first\nsecond")
        # a broken record (as only a bug makes) is kept as it was written
        broken = logger.makeRecord("t", logging.ERROR, "f", 1, "bad %d format", ("x",), None)
        recent.handle(broken)
    logger.info("after: not kept")
    lines = recent.lines()
    assert [(line["level"], line["text"]) for line in lines] == [
        ("warning", "x" * RECENT_LINE_CHARS + "…"),
        ("info", "first"),
        ("error", "bad %d format"),
    ]
    assert recent not in logging.getLogger().handlers


def test_a_failed_exchange_is_noted_beside_its_last_frame() -> None:
    ring = FrameRing(size=3)
    ring.note("nothing to note on")  # an empty ring
    ring.add(True, b"\x01\x03")
    ring.note("no response within 0.3 s")
    ring.add(True, b"\x01\x03")
    ring.add(False, b"\x01\x83")
    ring.add(False, b"\x01\x83\x02")  # the same answer, more of it
    ring.note("exception 2")
    assert ring.lines() == (
        "sent 01 03  <- no response within 0.3 s",
        "sent 01 03",
        "received 01 83 02  <- exception 2",
    )


def test_json_answers_carry_no_nan() -> None:
    body = answer(200, {"values": {"a": math.nan, "b": [math.inf, 1.5]}}).body
    assert body == b'{"values":{"a":null,"b":[null,1.5]}}'
