"""Logs: journald priority prefixes exactly when journald reads stderr, and repetition limited."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from agent.service.logs import RateLimit, flush_suppressed, journald_reads, setup_logging

REPO = Path(__file__).resolve().parents[2]
PLAIN = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<rest>.*)")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Give back the root logger (and pymodbus's level) as they were: setup_logging is global."""
    root, pymodbus = logging.getLogger(), logging.getLogger("pymodbus")
    handlers, level, pymodbus_level = root.handlers[:], root.level, pymodbus.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    pymodbus.setLevel(pymodbus_level)


def journal_of(file: TextIO) -> dict[str, str]:
    """The environment systemd gives a service whose stderr is ``file`` and goes to journald."""
    stat = os.fstat(file.fileno())
    return {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}


def log_one_of_each(name: str) -> None:
    log = logging.getLogger(name)
    log.debug("debug %s", "d")
    log.info("info %s", "i")
    log.warning("warning %s", "w")
    log.error("error %s", "e")
    log.critical("critical %s", "c")


# --- journald or plain ----------------------------------------------------------------------


@pytest.mark.usefixtures("root_logging")
def test_priority_prefixes_when_journal_stream_is_our_stderr(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stderr:
        setup_logging("debug", stderr, journal_of(stderr))
        log_one_of_each("tests.journal")
    assert (tmp_path / "stderr").read_text().splitlines() == [
        "<7>DEBUG tests.journal: debug d",
        "<6>INFO tests.journal: info i",
        "<4>WARNING tests.journal: warning w",
        "<3>ERROR tests.journal: error e",
        "<3>CRITICAL tests.journal: critical c",
    ]


@pytest.mark.usefixtures("root_logging")
def test_a_traceback_keeps_its_priority_on_every_line(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stderr:
        setup_logging("info", stderr, journal_of(stderr))
        try:
            raise RuntimeError("a bug")
        except RuntimeError:
            logging.getLogger("tests.journal").exception("bus %s: unexpected error", "rs485")
    lines = (tmp_path / "stderr").read_text().splitlines()
    assert lines[0] == "<3>ERROR tests.journal: bus rs485: unexpected error"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>RuntimeError: a bug"
    assert all(line.startswith("<3>") for line in lines)


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize("journal", ["other file", "unset", "garbage"])
def test_plain_lines_when_journald_does_not_read_our_stderr(tmp_path: Path, journal: str) -> None:
    with (tmp_path / "other").open("w") as other, (tmp_path / "stderr").open("w") as stderr:
        environ = {
            "other file": journal_of(other),  # e.g. inherited from a parent service
            "unset": {},
            "garbage": {"JOURNAL_STREAM": "nonsense"},
        }[journal]
        setup_logging("info", stderr, environ)
        log_one_of_each("tests.plain")
    rests = [PLAIN.fullmatch(line) for line in (tmp_path / "stderr").read_text().splitlines()]
    assert [m["rest"] if m else None for m in rests] == [
        "INFO tests.plain: info i",
        "WARNING tests.plain: warning w",
        "ERROR tests.plain: error e",
        "CRITICAL tests.plain: critical c",
    ]


def test_a_stream_without_a_file_descriptor_is_not_journald(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as file:
        environ = journal_of(file)
        assert journald_reads(file, environ)
    assert not journald_reads(file, environ)  # closed
    assert not journald_reads(io.StringIO(), environ)


@pytest.mark.usefixtures("root_logging")
def test_setup_replaces_its_handler_and_silences_pymodbus_above_debug() -> None:
    root, before = logging.getLogger(), len(logging.getLogger().handlers)
    setup_logging("warning", io.StringIO())
    setup_logging("info", io.StringIO())
    assert len(root.handlers) == before + 1
    assert root.level == logging.INFO
    assert logging.getLogger("pymodbus").level == logging.CRITICAL
    setup_logging("debug", io.StringIO())
    assert logging.getLogger("pymodbus").level == logging.NOTSET


@pytest.mark.usefixtures("root_logging")
def test_without_a_stream_it_follows_sys_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("info")
    logging.getLogger("tests.follow").warning("one")
    assert capsys.readouterr().err.endswith("WARNING tests.follow: one\n")


# --- rate limiting --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Limited:
    """A RateLimit with a fake clock; what passes and what it summarises, as messages."""

    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.out: list[str] = []
        self.limit = RateLimit(self._summary, clock=self.clock, **options)

    def _summary(self, record: logging.LogRecord) -> None:
        assert self.limit.filter(record)  # a summary passes its own filter
        self.out.append(f"{record.levelname} {record.getMessage()}")

    def log(self, level: int, msg: str, *args: object) -> None:
        record = logging.LogRecord("agent.poll.scheduler", level, __file__, 1, msg, args, None)
        if self.limit.filter(record):
            self.out.append(f"{record.levelname} {record.getMessage()}")

    def fail(self, device: str, error: str = "timeout", times: int = 1) -> None:
        for _ in range(times):
            self.log(logging.WARNING, "device %s: %s", device, error)

    def take(self) -> list[str]:
        out, self.out = self.out, []
        return out


def test_a_burst_passes_the_rest_is_summarised_when_the_window_ends() -> None:
    logs = Limited()
    logs.fail("pump", times=3)
    logs.fail("pump", "crc error", times=1000)  # another error of the same device: same event
    assert (
        logs.take() == ["WARNING device pump: timeout"] * 3 + ["WARNING device pump: crc error"] * 2
    )
    logs.clock.now += 599
    logs.fail("pump")
    assert logs.take() == []
    logs.clock.now += 1  # the window is over: the next record of any kind says so first
    logs.log(logging.INFO, "bus %s: connected", "rs485")
    assert logs.take() == [
        "WARNING device pump: timeout (999 similar messages suppressed in the last 10 min)",
        "INFO bus rs485: connected",
    ]
    logs.fail("pump", times=6)  # a new window: a new burst
    assert logs.take() == ["WARNING device pump: timeout"] * 5


def test_two_devices_are_limited_apart() -> None:
    logs = Limited()
    for _ in range(10):
        logs.fail("pump")
        logs.fail("well")
    assert logs.take() == ["WARNING device pump: timeout", "WARNING device well: timeout"] * 5
    logs.clock.now += 600
    logs.fail("well")
    assert logs.take() == [
        "WARNING device pump: timeout (5 similar messages suppressed in the last 10 min)",
        "WARNING device well: timeout (5 similar messages suppressed in the last 10 min)",
        "WARNING device well: timeout",
    ]


def test_a_flapping_device_writes_a_few_lines_per_window() -> None:
    logs = Limited()
    for _ in range(3600):  # an hour of fail, answer, fail… on a 1 s interval
        logs.fail("pump")
        logs.log(logging.INFO, "device %s: answering again", "pump")
        logs.clock.now += 1
    out = logs.take()
    assert len(out) == 6 * (5 + 5) + 5 * 2  # bursts each window, summaries of the closed ones
    assert out[10:12] == [
        "WARNING device pump: timeout (595 similar messages suppressed in the last 10 min)",
        "INFO device pump: answering again (595 similar messages suppressed in the last 10 min)",
    ]


def test_errors_from_bugs_are_limited_too_debug_is_not() -> None:
    logs = Limited()
    for _ in range(10):
        logs.log(logging.ERROR, "bus %s: unexpected error; restarting its polling", "rs485")
        logs.log(logging.DEBUG, "bus %s: sent %s", "rs485", "01 03")
    assert logs.take().count("ERROR bus rs485: unexpected error; restarting its polling") == 5
    logs.clock.now += 600
    logs.log(logging.DEBUG, "bus %s: sent %s", "rs485", "01 03")
    logs.log(logging.ERROR, "bus %s: unexpected error; restarting its polling", "rs485")
    assert logs.take() == [
        "DEBUG bus rs485: sent 01 03",
        "ERROR bus rs485: unexpected error; restarting its polling (5 similar messages "
        "suppressed in the last 10 min)",
        "ERROR bus rs485: unexpected error; restarting its polling",
    ]


def test_flush_summarises_the_windows_that_are_over_without_waiting_for_a_record() -> None:
    logs = Limited()
    logs.fail("pump", times=8)
    logs.take()
    logs.clock.now += 90
    logs.limit.flush()
    assert logs.take() == []  # the window goes on: its summary comes when it is over
    logs.fail("pump", times=4)  # still the same window: no new burst
    logs.clock.now += 510
    logs.limit.flush()
    assert logs.take() == [
        "WARNING device pump: timeout (7 similar messages suppressed in the last 10 min)"
    ]
    logs.limit.flush()
    assert logs.take() == []  # said once
    logs.fail("pump", times=6)  # a new window: a new burst
    assert logs.take() == ["WARNING device pump: timeout"] * 5


def test_a_periodic_flush_does_not_let_repetitions_through_as_summaries() -> None:
    """The field report: a flush every 0.25 s turned each repetition past the burst into a line
    "… (1 similar message suppressed in the last 1 s)"."""
    logs = Limited()
    for _ in range(2400):  # 10 minutes of a flapping bus, flushed every quarter second
        logs.log(logging.WARNING, "bus %s: lost: %s", "plc", "out of step")
        logs.log(logging.INFO, "bus %s: connected", "plc")
        logs.clock.now += 0.25
        logs.limit.flush()
    out = logs.take()
    assert out[:10] == ["WARNING bus plc: lost: out of step", "INFO bus plc: connected"] * 5
    assert out[10:] == [
        "WARNING bus plc: lost: out of step (2395 similar messages suppressed in the last 10 min)",
        "INFO bus plc: connected (2395 similar messages suppressed in the last 10 min)",
    ]


def test_flush_all_summarises_the_open_windows_too_and_they_go_on() -> None:
    logs = Limited()
    logs.fail("pump", times=8)
    logs.take()
    logs.clock.now += 90
    logs.limit.flush_all()
    assert logs.take() == [
        "WARNING device pump: timeout (3 similar messages suppressed in the last 2 min)"
    ]
    logs.limit.flush_all()
    assert logs.take() == []  # nothing new
    logs.fail("pump", times=4)  # still the same window: no new burst
    logs.clock.now += 600
    logs.fail("pump")
    assert logs.take() == [
        "WARNING device pump: timeout (4 similar messages suppressed in the last 9 min)",
        "WARNING device pump: timeout",
    ]


def test_the_memory_of_keys_is_bounded() -> None:
    logs = Limited(max_keys=3)
    for device in ("a", "b", "c"):
        logs.fail(device, times=7)
    logs.take()
    for n in range(100):
        logs.fail(f"d{n}")
        assert logs.limit.keys <= 3
    out = logs.take()  # the oldest windows were closed early, their drops summarised
    assert out[:2] == [
        "WARNING device a: timeout (2 similar messages suppressed in the last 1 s)",
        "WARNING device d0: timeout",
    ]
    assert len(out) == 3 + 100
    logs.clock.now += 600
    logs.fail("z")
    assert logs.limit.keys == 1  # expired windows are forgotten


def test_the_message_template_and_logger_are_part_of_the_key() -> None:
    logs = Limited(burst=1)
    logs.log(logging.WARNING, "device %s: %s", "pump", "timeout")
    logs.log(logging.WARNING, "device %s: a poll could not start before the next was due", "pump")
    logs.log(logging.WARNING, "%s", "a message without a name")
    logs.log(logging.WARNING, "%s", "another one")
    logs.log(logging.WARNING, "no arguments")
    logs.log(logging.WARNING, "no arguments")
    assert len(logs.take()) == 5


def test_a_library_message_with_changing_numbers_is_limited_as_one() -> None:
    """asyncio formats its own message, with the protocol's address: new at every reconnect."""
    logs = Limited()
    for n in range(20):
        # formatted before it is logged, with no arguments, as asyncio does: the point of the test
        logs.log(
            logging.ERROR,
            "Fatal error: protocol.data_received() call failed.\n"  # noqa: G004
            f"protocol: <pymodbus.transaction.TransactionManager object at {0x7F00 + n:#x}>\n"
            f"transport: <_SelectorSocketTransport fd={7 + n} read=polling>",
        )
    assert len(logs.take()) == 5
    for unit in ("pump1", "pump2"):  # a name's digits still tell devices apart
        logs.fail(unit, times=6)
    assert (
        logs.take() == ["WARNING device pump1: timeout"] * 5 + ["WARNING device pump2: timeout"] * 5
    )


# --- end to end ------------------------------------------------------------------------------


def test_a_dead_device_under_journald_writes_a_few_lines(tmp_path: Path) -> None:
    child = textwrap.dedent(
        """
        import logging
        from agent.service.logs import setup_logging
        setup_logging("info")
        log = logging.getLogger("agent.poll.scheduler")
        for _ in range(1000):
            log.warning("device %s: %s", "pump", "no answer from unit 3")
        """
    )
    with (tmp_path / "stderr").open("w") as stderr:
        env = {**os.environ, **journal_of(stderr)}
        subprocess.run(
            [sys.executable, "-c", child],
            stderr=stderr,
            env=env,
            cwd=REPO,
            timeout=60,
            check=True,
        )
    lines = (tmp_path / "stderr").read_text().splitlines()
    assert lines[:5] == ["<4>WARNING agent.poll.scheduler: device pump: no answer from unit 3"] * 5
    assert len(lines) == 6
    assert re.fullmatch(
        r"<4>WARNING agent\.poll\.scheduler: device pump: no answer from unit 3 "
        r"\(995 similar messages suppressed in the last \d+ s\)",
        lines[5],
    ), lines[5]


def our_handler() -> Any:
    """The handler setup_logging installed (its rate limit's clock can be replaced)."""
    return next(h for h in logging.getLogger().handlers if hasattr(h, "rate_limit"))


@pytest.mark.usefixtures("root_logging")
def test_flush_suppressed_goes_through_the_handler(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stderr:
        setup_logging("info", stderr, journal_of(stderr))
        clock = Clock()
        our_handler().rate_limit.clock = clock
        for _ in range(7):
            logging.getLogger("tests.flush").warning("device %s: %s", "pump", "timeout")
        flush_suppressed()
        stderr.flush()
        assert len((tmp_path / "stderr").read_text().splitlines()) == 5  # the window goes on
        clock.now += 600
        flush_suppressed()
    lines = (tmp_path / "stderr").read_text().splitlines()
    assert len(lines) == 6
    assert lines[-1] == (
        "<4>WARNING tests.flush: device pump: timeout (2 similar messages suppressed in the "
        "last 10 min)"
    )


@pytest.mark.usefixtures("root_logging")
def test_closing_the_handler_at_exit_summarises_the_open_windows(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stderr:
        setup_logging("info", stderr, journal_of(stderr))
        for _ in range(7):
            logging.getLogger("tests.flush").warning("device %s: %s", "pump", "timeout")
        our_handler().close()  # as logging.shutdown does at exit
    lines = (tmp_path / "stderr").read_text().splitlines()
    assert len(lines) == 6
    assert lines[-1].startswith(
        "<4>WARNING tests.flush: device pump: timeout (2 similar messages suppressed in the last"
    )
