"""Clock trust: samples taken before the wall clock is right are re-stamped or marked."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from agent.clock import RELEASE_MS, TOLERANCE_MS, Clock, ClockGuard, kernel_clock_synced
from agent.model import Sample

BOOT_1970 = 5_000  # ms: a Pi without RTC, a few seconds after boot
NOW = RELEASE_MS + 30 * 86_400_000  # a plausible time, a month after release


@dataclass(frozen=True)
class FakeClock(Clock):
    """A Pi's clock: wall time set by the test (1970 until "NTP" sets it), monotonic time too."""

    boot: str = "boot-a"
    now: list[float] = field(default_factory=lambda: [BOOT_1970 / 1000, 5.0])  # wall, monotonic

    def wall(self) -> float:
        return self.now[0]

    def monotonic(self) -> float:
        return self.now[1]

    def boot_id(self) -> str:
        return self.boot


def untrusted(guard: ClockGuard, ts: int, mono: float) -> Sample:
    assert not guard.trusted(ts, mono)
    return Sample(1, "meter", ts, {"v": 1}, mono=mono, boot=guard.boot)


def test_a_1970_clock_is_not_trusted_and_samples_are_restamped_once_it_is() -> None:
    guard = ClockGuard(FakeClock())
    early = untrusted(guard, BOOT_1970, mono=5.0)
    assert guard.restamp(early) == early  # nothing known yet: sent as unsynced
    assert early.to_json()["clock"] == "unsynced"
    assert guard.trusted(NOW, mono=65.0)  # NTP answered a minute later
    fixed = guard.restamp(early)
    assert fixed.ts == NOW - 60_000  # 60 s of monotonic time before the trusted reading
    assert "clock" not in fixed.to_json()
    assert fixed.id == early.id


def test_a_clock_behind_the_newest_stored_time_is_not_trusted() -> None:
    guard = ClockGuard(FakeClock(), newest_stored_ms=NOW)
    untrusted(guard, NOW - TOLERANCE_MS - 1, mono=1.0)  # booted at its last shutdown time, earlier
    assert guard.trusted(NOW - TOLERANCE_MS + 1, mono=2.0)  # within the tolerance


def test_samples_from_another_boot_cannot_be_restamped() -> None:
    guard = ClockGuard(FakeClock(boot="boot-b"))
    assert guard.trusted(NOW, mono=100.0)
    old = Sample(7, "meter", BOOT_1970, {"v": 1}, mono=5.0, boot="boot-a")
    assert guard.restamp(old) == old  # its monotonic time belongs to the previous boot


def test_a_plausible_clock_is_trusted_without_ntp() -> None:
    guard = ClockGuard(FakeClock())
    assert guard.trusted(NOW, mono=1.0)
    trusted_sample = Sample(1, "meter", NOW, {"v": 1})
    assert guard.restamp(trusted_sample) is trusted_sample


def test_restamping_looks_at_the_clock_when_no_poll_has_seen_it_right() -> None:
    clock = FakeClock()
    guard = ClockGuard(clock)
    early = untrusted(guard, BOOT_1970, mono=5.0)
    clock.now[:] = [NOW / 1000, 65.0]  # NTP set the clock; the next poll has not run yet
    assert guard.restamp(early).ts == NOW - 60_000


def test_asking_whether_the_kernel_clock_is_synced_starts_no_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It is asked for every sample's id. Finding libc by name ran ``ldconfig`` each time:
    most of the agent's CPU, at every reading. Now one system call, and no process."""
    import subprocess

    started: list[object] = []

    def refused(*args: object, **kwargs: object) -> None:
        started.append(args)
        raise OSError("no process may be started here")

    monkeypatch.setattr(subprocess, "Popen", refused)
    answers = {kernel_clock_synced() for _ in range(50)}
    assert started == []
    assert len(answers) == 1  # the same answer each time: the kernel's, not a failure's
