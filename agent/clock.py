"""Time as the agent sees it, and whether the wall clock can be trusted yet.

A Pi without a real-time clock boots at 1970, or at its last shutdown time, and keeps that until
NTP answers. A sample is never held back for the clock: one taken while the wall clock cannot be
trusted keeps its monotonic time and boot id, is re-stamped once the clock is trustworthy (the
offset between the two clocks is then known, within the same boot), and otherwise goes out marked
``"clock": "unsynced"`` (journald's model: realtime, monotonic and boot id per entry).
"""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

from .model import Sample

#: The agent's release date (2026-11-01 UTC, in ms): a wall clock before it is certainly wrong.
RELEASE_MS = 1_793_491_200_000
#: How far behind the newest stored sample time a clock may be and still be trusted (ms):
#: NTP corrections, and a device polled just before a slightly earlier one.
TOLERANCE_MS = 5 * 60 * 1000
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
#: adjtimex(2)'s answer while the clock is not synchronised.
_TIME_ERROR = 5


def kernel_clock_synced() -> bool:
    """adjtimex(2) without changing anything: False while the kernel has no synchronised
    time source (or where it cannot be asked). One system call: asked for a sample's id when
    the id reservation on disk is not durable (ids then come from the clock)."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return False
    timex = ctypes.create_string_buffer(512)  # struct timex with modes 0: a read
    return bool(adjtimex(timex) not in (-1, _TIME_ERROR))


@functools.cache
def _adjtimex() -> Callable[[ctypes.Array[ctypes.c_char]], int] | None:
    """The C library's adjtimex, looked up once for the process, as an import is: finding the
    library by name (``ctypes.util.find_library``) runs ``ldconfig``, a process, each time,
    which cost most of the agent's CPU when it was done for every sample."""
    try:
        function = ctypes.CDLL(None, use_errno=True).adjtimex  # the libc the interpreter uses
    except (OSError, AttributeError):
        return None
    return cast(Callable[[ctypes.Array[ctypes.c_char]], int], function)


@dataclass(frozen=True)
class Clock:
    """Wall-clock and monotonic time in seconds; replace either in tests."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return int(self.wall() * 1000)

    def ntp_synced(self) -> bool:
        """Whether the kernel says the wall clock is synchronised (NTP, chrony, timesyncd):
        only then can it not repeat itself across boots (a clock restored at boot from the last
        shutdown time, or from an RTC, can)."""
        return kernel_clock_synced()

    def boot_id(self) -> str:
        """Identifies this boot: monotonic times compare only within one."""
        try:
            return BOOT_ID.read_text().strip()
        except OSError:  # not Linux: the process start stands in for the boot
            return f"process-{int(time.time() - time.monotonic())}"


class ClockGuard:
    """Decides whether a wall-clock time is plausible, and re-stamps samples taken before it was.

    Plausible: not before the agent's release date, and not before the newest time already
    stored (beyond ``TOLERANCE_MS``). A plausible clock is trusted even where the kernel does not
    report NTP sync (containers, RTC boards).
    """

    def __init__(self, clock: Clock, newest_stored_ms: int = 0) -> None:
        self.clock = clock
        self.boot = clock.boot_id()
        self._newest_ms = newest_stored_ms
        self._offset: float | None = None  # wall - monotonic, seconds, once trusted

    def remember(self, newest_stored_ms: int) -> None:
        """The newest sample time the buffer ever stored (it survives restarts)."""
        self._newest_ms = max(self._newest_ms, newest_stored_ms)

    def trusted(self, wall_ms: int, mono: float) -> bool:
        """Whether ``wall_ms``, read at monotonic ``mono``, can be trusted; learns the offset."""
        if wall_ms < RELEASE_MS or wall_ms < self._newest_ms - TOLERANCE_MS:
            return False
        self._newest_ms = max(self._newest_ms, wall_ms)
        self._offset = wall_ms / 1000 - mono
        return True

    def restamp(self, sample: Sample) -> Sample:
        """``sample`` with a trustworthy time when that can now be known, else unchanged."""
        if sample.mono is None or sample.boot != self.boot:
            return sample
        if self._offset is None:  # no poll has seen a good clock yet: look at it now
            self.trusted(self.clock.wall_ms(), self.clock.monotonic())
        if self._offset is None:
            return sample
        ts = int((sample.mono + self._offset) * 1000)
        return replace(sample, ts=ts, mono=None, boot=None)
