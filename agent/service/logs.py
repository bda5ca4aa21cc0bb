"""Logs on stderr: for journald when it reads them (docs/service.md, "Logs"), for a person
otherwise; rate limited.

Under systemd, journald stamps and stores each line; a ``<N>`` prefix (sd-daemon(3)) gives the
line its priority, so ``journalctl -p warning`` and the colours work. A gateway's SD card must not
take the same line every second, so repetitions of one event are limited (``RateLimit``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

#: sd-daemon(3) priorities, from the most severe level down (CRITICAL shares ERROR's, as
#: docs/service.md promises ``<3>`` to ``<7>``).
PRIORITIES = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

BURST = 5
WINDOW = 600.0
MAX_KEYS = 1000
#: How much of a message template and of its first argument make a key.
KEY_CHARS = 200


def priority(levelno: int) -> int:
    """The syslog priority journald gives a record of ``levelno``."""
    return next((p for level, p in PRIORITIES if levelno >= level), DEBUG_PRIORITY)


def journald_reads(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is the one systemd connected to journald: ``$JOURNAL_STREAM`` names
    its device and inode (systemd.exec(5)). A stream without a file descriptor is not."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False
    return f"{stat.st_dev}:{stat.st_ino}" == f"{device}:{inode}"


class JournalFormatter(logging.Formatter):
    """``<N>LEVEL name: message``, no timestamp. Each line of a multi-line record (a traceback)
    carries the prefix: journald makes one entry per line, and every one keeps the priority, so
    ``journalctl -p err`` shows the whole traceback rather than its first line."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


SUMMARY = "rate_limit_summary"  # set on the records RateLimit makes itself


class RateLimit(logging.Filter):
    """At most ``burst`` records of one key per ``window`` seconds; then one summary line.

    The key is the logger, the message template (its numbers blanked) and its first argument,
    which by convention names the device or bus (``log.warning("device %s: %s", name, error)``):
    each device is limited on its own, and different errors of one device count as the same
    event. When a key's window is over (seen at the next record of any key, or by ``flush``) a
    record "… (N similar messages suppressed in the last 10 min)" is handed to ``emit`` if the
    key had some dropped: one per key and window, so at most ``burst + 1`` lines per key and
    window. ``flush_all`` (at exit) summarises the open windows too. Records below
    ``min_level`` (debug, asked for on a bench) pass untouched. At most ``max_keys`` keys are
    kept: beyond, the oldest window is closed early (and summarised).
    """

    def __init__(
        self,
        emit: Callable[[logging.LogRecord], object],
        burst: int = BURST,
        window: float = WINDOW,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
        min_level: int = logging.INFO,
    ) -> None:
        super().__init__()
        self.emit = emit
        self.burst = burst
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self.min_level = min_level
        # Oldest window first: windows only start now, at the end, so the order is by start.
        self._windows: OrderedDict[tuple[str, str, str], _Window] = OrderedDict()
        self._lock = threading.Lock()  # records come from other threads too (gpiozero, paho)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level or getattr(record, SUMMARY, False):
            return True
        key = _key(record)
        with self._lock:
            now = self.clock()
            summaries = self._close_windows(now, key)
            window = self._windows.setdefault(key, _Window(now))
            window.count += 1
            passes = window.count <= self.burst
            if not passes:
                window.dropped += 1
                # Not the record: its traceback would keep every frame's objects alive.
                window.last = _Dropped(
                    record.name,
                    record.levelno,
                    record.pathname,
                    record.lineno,
                    record.funcName,
                    record.getMessage(),
                )
        self._emit_all(summaries)
        return passes

    def flush(self) -> None:
        """Close the windows that are over and emit their summaries now, not at the next record
        (for a periodic task). Open windows are left alone: a summary of each at every flush
        would be a line per key per flush, however often the event repeats."""
        with self._lock:
            summaries = self._close_windows(self.clock())
        self._emit_all(summaries)

    def flush_all(self) -> None:
        """Summarise what was dropped so far in every window, open ones too (at exit); the
        windows go on, so that this does not let a new burst through either."""
        summaries: list[logging.LogRecord] = []
        with self._lock:
            now = self.clock()
            for window in self._windows.values():
                summaries += window.summary(now, self.window)
        self._emit_all(summaries)

    def _close_windows(
        self, now: float, incoming: tuple[str, str, str] | None = None
    ) -> list[logging.LogRecord]:
        """Forget the windows that are over, oldest first, and the oldest beyond ``max_keys``
        when a record of a new key ``incoming`` comes; their summaries. Under the lock."""
        summaries: list[logging.LogRecord] = []
        while self._windows:
            oldest = next(iter(self._windows.values()))
            full = (
                incoming is not None
                and len(self._windows) >= self.max_keys
                and incoming not in self._windows
            )
            if now - oldest.start < self.window and not full:
                break
            self._windows.popitem(last=False)
            summaries += oldest.summary(now, self.window)
        return summaries

    def _emit_all(self, summaries: list[logging.LogRecord]) -> None:
        for summary in summaries:  # outside the lock: emit may come back to filter
            self.emit(summary)

    @property
    def keys(self) -> int:
        """How many keys are remembered."""
        return len(self._windows)


@dataclass(frozen=True)
class _Dropped:
    name: str
    levelno: int
    pathname: str
    lineno: int
    func: str | None
    message: str


@dataclass
class _Window:
    start: float
    count: int = 0
    dropped: int = 0  # since ``since``
    since: float = -math.inf  # the start, or the last summary
    last: _Dropped | None = None  # the last one dropped

    def summary(self, now: float, window: float) -> list[logging.LogRecord]:
        """The line that says how many were dropped since the last one (like the last dropped),
        if any were."""
        since, last, dropped = max(self.since, self.start), self.last, self.dropped
        self.since, self.last, self.dropped = now, None, 0
        if not dropped or last is None:
            return []
        span = _duration(min(now, self.start + window) - since)
        message = (
            f"{last.message} ({dropped} similar message{'s' * (dropped != 1)} "
            f"suppressed in the last {span})"
        )
        record = logging.LogRecord(
            last.name, last.levelno, last.pathname, last.lineno, message, None, None, last.func
        )
        setattr(record, SUMMARY, True)
        return [record]


def _key(record: logging.LogRecord) -> tuple[str, str, str]:
    args = record.args
    first = args[0] if isinstance(args, tuple) and args else ""
    return record.name, _template(record.msg), str(first)[:KEY_CHARS]


def _template(msg: object) -> str:
    """The message template with its numbers blanked: a library that formats its own message
    (asyncio's "Fatal error … protocol: <… object at 0x7f…>", "Task-12") would otherwise make a
    new key of every repetition. Our templates carry numbers only as arguments; the first
    argument, a device's or bus's name, keeps its digits."""
    return _NUMBER.sub("#", str(msg)[:KEY_CHARS])


_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+")


def _duration(seconds: float) -> str:
    """An upper bound a person reads: ``"10 min"``, ``"45 s"``, ``"2 h"``."""
    if seconds <= 60:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds <= 3600:
        return f"{math.ceil(seconds / 60)} min"
    return f"{math.ceil(seconds / 3600)} h"


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our stderr handler: one per process (setup_logging replaces it); it summarises what its
    rate limit dropped when it is closed (logging closes it at exit)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream)
        # With no stream given, whatever sys.stderr is when a record comes (as logging's last
        # resort handler does): tests and tools replace it.
        self.follow_stderr = stream is None
        self.rate_limit = RateLimit(self.handle)
        self.addFilter(self.rate_limit)

    def emit(self, record: logging.LogRecord) -> None:
        if self.follow_stderr:
            self.stream = sys.stderr
        super().emit(record)

    def flush(self) -> None:
        if self.follow_stderr:
            self.stream = sys.stderr
        super().flush()

    def close(self) -> None:
        self.rate_limit.flush_all()
        # logging.shutdown flushed before closing, not after the summaries; a stream already
        # closed is no reason to fail (as logging.shutdown itself reasons).
        with contextlib.suppress(OSError, ValueError):
            self.flush()
        super().close()


def setup_logging(
    level: str, stream: TextIO | None = None, environ: Mapping[str, str] = os.environ
) -> None:
    """Log records at ``level`` and above to ``stream`` (stderr by default): with ``<N>``
    priority prefixes and no timestamp when journald reads it, else timestamped lines; the same
    event repeated is rate limited. Replaces the handler of an earlier call."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    handler = _Handler(stream)
    journal = journald_reads(stream if stream is not None else sys.stderr, environ)
    handler.setFormatter(JournalFormatter() if journal else logging.Formatter(PLAIN_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter is not the technician's business: pymodbus logs every failed connect and
    # every unanswered request (with a hex dump), which our transition logs say once instead.
    # (paho's own messages go through the uplink's logger, at debug.)
    logging.getLogger("pymodbus").setLevel(logging.NOTSET if level == "debug" else logging.CRITICAL)


def flush_suppressed() -> None:
    """Emit now the summaries of the rate limit's windows that are over (for a periodic task of
    the agent, so that "N similar messages suppressed" need not wait for the next log line)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _Handler):
            handler.rate_limit.flush()


#: Lines the technician's page shows, the latest; and the longest each is kept at.
RECENT_LINES = 200
RECENT_LINE_CHARS = 500


class RecentLines(logging.Handler):
    """The last ``RECENT_LINES`` log lines (info and up), in memory, for the technician's page:
    attached to the root logger while entered. A line is cut at ``RECENT_LINE_CHARS``, and a
    traceback's first line kept only, so that the ring stays small whatever is logged."""

    def __init__(self, size: int = RECENT_LINES) -> None:
        super().__init__(logging.INFO)
        self._lines: deque[tuple[int, str, str]] = deque(maxlen=size)

    def __enter__(self) -> RecentLines:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        logging.getLogger().removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = record.getMessage()
        except Exception:  # a bad format string is the record's problem, not the page's
            line = str(record.msg)
        line = line.splitlines()[0] if line else ""
        if len(line) > RECENT_LINE_CHARS:
            line = line[:RECENT_LINE_CHARS] + "…"
        self._lines.append((round(record.created * 1000), record.levelname.lower(), line))

    def lines(self) -> list[dict[str, object]]:
        """Oldest first: each line's time (ms), level and text."""
        self.acquire()  # emit's lock, held by handle(): other threads log too (gpiozero, paho)
        try:
            kept = list(self._lines)
        finally:
            self.release()
        return [{"ts": ts, "level": level, "text": text} for ts, level, text in kept]
