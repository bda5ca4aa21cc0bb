"""At most once: which commands ran is remembered for as long as a copy could pass the age
check (``ts`` + ``command_ttl``), whatever else arrives meanwhile, across a restart, through a
damaged or unwritable record and a wall clock that steps back. The device is a relay on
gpiozero's mock pins, driven by its real poll loop; the wall clock is the test's."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from agent.aio import cancel_and_wait
from agent.clock import Clock
from agent.config import Config, load_config
from agent.model import Value
from agent.service.app import Agent, build_pollers
from agent.testkit import run
from agent.uplink import commands as commands_module
from agent.uplink.commands import COMMANDS_FILE, CommandRecord, Commands
from tests.agent.test_commands import now_ms, pins, site

__all__ = ["pins"]  # the fixture, shared with test_commands

T0 = now_ms()
TTL_MS = 60_000  # command_ttl in the site of test_commands
LOST = "the record of the commands carried out before then was lost"
FORGOTTEN = "older than the commands this agent still remembers: it may have run already"


class WallClock:
    """The trusted wall clock as the commands see it, in ms: set by the test; None: no NTP."""

    def __init__(self, ms: int | None = T0) -> None:
        self.ms = ms

    def __call__(self) -> int | None:
        return self.ms


class Gateway:
    """The relay's poll loop running for real, and the agent's Commands over it (on the test's
    wall clock); ``restart()`` makes the Commands of a new agent on the same data dir."""

    def __init__(self, config: Config, clock: WallClock) -> None:
        self.config = config
        self.clock = clock
        self.polled = asyncio.Event()
        self.pollers = build_pollers(config, self._polled, Clock())
        self.commands = self.restart()
        self._tasks: list[asyncio.Task[None]] = []

    def _polled(self, device: str, *_: Any) -> None:
        if device == "pumps":
            self.polled.set()

    def restart(self) -> Commands:
        self.commands = Commands(
            lambda: self.config, lambda: self.pollers, self.clock, self.config.agent.data_dir
        )
        return self.commands

    async def send(
        self, ident: str | int, value: Value = 1, ts: int | None = None, point: str = "pump"
    ) -> dict[str, Any]:
        sent: dict[str, object] = {"device": "pumps", "point": point, "value": value}
        sent |= {"id": ident, "ts": self.clock.ms if ts is None else ts}
        reply = await asyncio.wait_for(
            self.commands.handle(json.dumps(sent).encode(), "c/gw/cmd"), 10
        )
        assert reply is not None
        return reply

    async def __aenter__(self) -> Gateway:
        self._tasks = [asyncio.create_task(p.run()) for p in self.pollers]
        await asyncio.wait_for(self.polled.wait(), 10)  # connected, and polling
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await cancel_and_wait(*self._tasks)


def switched_on(pin: MockPin) -> int:
    """How many times the relay was switched on (the mock pin records each change; the relay is
    released, off, when its poll loop stops)."""
    return sum(s.state for s in pin.states)


def on_gateway(
    tmp_path: Path, clock: WallClock, body: Callable[[Gateway], Any], timeout: float = 30
) -> None:
    config, _ = load_config(site(tmp_path), environ={})

    async def scenario() -> None:
        async with Gateway(config, clock) as gateway:
            await body(gateway)

    run(scenario(), timeout)


def record_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / COMMANDS_FILE


# --- in one run


def test_a_repeat_after_a_thousand_refused_commands_is_not_run_again(
    tmp_path: Path, pins: MockFactory
) -> None:
    """The field bug: 1001 refused commands pushed the id out of a last-1000 memory, and the
    copy that came 11 s later, well within command_ttl, switched the pump on again."""
    pump, clock = pins.pin(20), WallClock()

    async def body(gateway: Gateway) -> None:
        first = await gateway.send("on", 1)
        assert first == {"id": "on", "ok": True, "value": True}
        for n in range(1001):
            refused = await gateway.send(f"fan-{n}", 1, point="fan")
            assert refused["error"] == "fan is not writable"
        assert (await gateway.send("reset", 0))["ok"] is True
        clock.ms = T0 + 11_000
        assert await gateway.send("on", 1, ts=T0) == first
        assert gateway.commands.counts["repeated"] == 1

    on_gateway(tmp_path, clock, body, timeout=60)
    assert switched_on(pump) == 1


def test_a_refused_command_is_judged_again_when_it_comes_again(
    tmp_path: Path, pins: MockFactory
) -> None:
    """Nothing moved for a refusal, so it is not remembered: a copy sent once the reason is
    gone (here: the sender's clock was set right, so it is within its TTL) runs."""
    pump, clock = pins.pin(20), WallClock()

    async def body(gateway: Gateway) -> None:
        early = await gateway.send("soon", 1, ts=T0 + 2 * TTL_MS)
        assert early["error"].endswith("in the future: check the sender's clock")
        clock.ms = T0 + 2 * TTL_MS
        assert await gateway.send("soon", 1, ts=T0 + 2 * TTL_MS) == {
            "id": "soon",
            "ok": True,
            "value": True,
        }
        assert gateway.commands.counts == {"refused": 1, "ok": 1}

    on_gateway(tmp_path, clock, body)
    assert switched_on(pump) == 1


def test_a_command_is_remembered_until_its_ts_plus_ttl_even_when_sent_from_the_future(
    tmp_path: Path, pins: MockFactory
) -> None:
    pump, clock = pins.pin(20), WallClock()

    async def body(gateway: Gateway) -> None:
        ahead = T0 + 50_000  # a sender whose clock is 50 s fast: still within the TTL
        assert (await gateway.send("fast", 1, ts=ahead))["ok"] is True
        assert (await gateway.send("reset", 0))["ok"] is True
        clock.ms = ahead + TTL_MS  # 110 s after it arrived: a copy would still pass the check
        assert (await gateway.send("fast", 1, ts=ahead))["value"] is True
        assert gateway.commands.counts["repeated"] == 1
        clock.ms = ahead + TTL_MS + 1
        expired = await gateway.send("fast", 1, ts=ahead)
        assert expired["error"].startswith("expired: sent 60s ago")

    on_gateway(tmp_path, clock, body)
    assert switched_on(pump) == 1


def test_a_forgotten_command_is_refused_even_when_the_clock_steps_back(
    tmp_path: Path, pins: MockFactory
) -> None:
    pump, clock = pins.pin(20), WallClock()

    async def body(gateway: Gateway) -> None:
        assert (await gateway.send("a", 1, ts=T0))["ok"] is True
        clock.ms = T0 + TTL_MS + 1_000  # "a" expires: forgotten
        assert (await gateway.send("reset", 0))["ok"] is True
        clock.ms = T0 + 30_000  # the wall clock steps back (NTP corrects a fast RTC)
        again = await gateway.send("a", 1, ts=T0)
        assert again["ok"] is False
        assert again["error"].startswith(FORGOTTEN)
        # what was sent after the forgotten command still runs
        assert (await gateway.send("b", 1, ts=T0 + 1))["ok"] is True
        assert [s.state for s in pump.states] == [False, True, False, True]

    on_gateway(tmp_path, clock, body)


def test_beyond_the_bound_the_earliest_sent_is_forgotten_and_older_ones_refused(
    tmp_path: Path, pins: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of commands carried out within one TTL: memory is bounded, and what it cannot
    hold any more is refused rather than run twice. The earliest *sent* goes first (a heap on
    ts), not the earliest arrived."""
    monkeypatch.setattr(commands_module, "MAX_REMEMBERED", 4)
    pump, clock = pins.pin(20), WallClock(T0 + 10_000)
    sent_at = {"c3": T0 + 3, "c1": T0 + 1, "c5": T0 + 5, "c2": T0 + 2, "c4": T0 + 4, "c6": T0 + 6}

    async def body(gateway: Gateway) -> None:
        for n, (ident, ts) in enumerate(sent_at.items()):
            assert (await gateway.send(ident, n % 2, ts=ts))["ok"] is True
        assert len(gateway.commands.record) == 4
        for ident in ("c1", "c2"):  # pushed out: may have run, so refused, not run again
            again = await gateway.send(ident, 1, ts=sent_at[ident])
            assert again["error"].startswith(FORGOTTEN), again
        for ident in ("c3", "c4", "c5", "c6"):
            assert (await gateway.send(ident, 1, ts=sent_at[ident]))["ok"] is True
        assert gateway.commands.counts["repeated"] == 4
        unknown_but_old = await gateway.send("new-old", 1, ts=T0 + 2)
        assert unknown_but_old["error"].startswith(FORGOTTEN)
        assert await gateway.send("new", 0, ts=T0 + 3) == {"id": "new", "ok": True, "value": False}

    on_gateway(tmp_path, clock, body)
    assert switched_on(pump) == 3  # by c1, c2 and c6 (values 0 1 0 1 0 1), never again


def test_the_same_id_twice_at_once_runs_once(tmp_path: Path, pins: MockFactory) -> None:
    pump = pins.pin(20)

    async def body(gateway: Gateway) -> None:
        first, copy = await asyncio.gather(gateway.send("twin", 1), gateway.send("twin", 1))
        assert first == copy == {"id": "twin", "ok": True, "value": True}
        assert gateway.commands.counts == {"ok": 1, "repeated": 1}

    on_gateway(tmp_path, WallClock(), body)
    assert switched_on(pump) == 1


# --- across a restart


def test_a_copy_after_a_restart_gets_the_first_reply(tmp_path: Path, pins: MockFactory) -> None:
    pump, clock = pins.pin(20), WallClock()

    async def body(gateway: Gateway) -> None:
        first = await gateway.send("on", 1)
        assert (await gateway.send("reset", 0))["ok"] is True
        clock.ms = T0 + 20_000
        gateway.restart()
        assert await gateway.send("on", 1, ts=T0) == first
        assert gateway.commands.counts == {"repeated": 1}

    on_gateway(tmp_path, clock, body)
    assert switched_on(pump) == 1
    record = record_path(tmp_path)
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert [p.name for p in record.parent.iterdir() if p.name.startswith(COMMANDS_FILE)] == [
        COMMANDS_FILE  # no temporary file left behind
    ]
    saved = json.loads(record.read_text())["commands"]
    assert [(c["id"], c["ts"]) for c in saved] == [("on", T0), ("reset", T0)]


def test_the_agent_keeps_its_record_in_its_data_dir(tmp_path: Path, pins: MockFactory) -> None:
    config, _ = load_config(site(tmp_path), environ={})
    agent = Agent(config)
    assert agent.commands.record.path == config.agent.data_dir / COMMANDS_FILE


def test_a_restart_forgets_what_expired_meanwhile(tmp_path: Path, pins: MockFactory) -> None:
    clock = WallClock()

    async def body(gateway: Gateway) -> None:
        assert (await gateway.send("old", 1, ts=T0 - 50_000))["ok"] is True
        assert (await gateway.send("recent", 0, ts=T0))["ok"] is True
        clock.ms = T0 + 30_000
        gateway.restart()
        assert gateway.commands.record.get("old") is None
        assert gateway.commands.record.get("recent") is not None
        clock.ms = T0 - 40_000  # stepped back: "old" would pass the age check again
        refused = await gateway.send("old", 1, ts=T0 - 50_000)
        assert refused["error"].startswith(FORGOTTEN)

    on_gateway(tmp_path, clock, body)


def test_a_write_under_way_when_the_agent_stopped_is_not_run_again(
    tmp_path: Path, pins: MockFactory
) -> None:
    """The record as a ``kill -9`` (or a power cut) during a write leaves it: marked under way
    before the write went out, no reply yet."""
    pump = pins.pin(20)
    CommandRecord(record_path(tmp_path)).under_way("cut", T0)

    async def body(gateway: Gateway) -> None:
        reply = await gateway.send("cut", 1, ts=T0)
        assert reply == {
            "id": "cut",
            "ok": False,
            "error": "was being carried out when the agent stopped: it may or may not have "
            "been made; not run again",
        }

    on_gateway(tmp_path, WallClock(T0 + 5_000), body)
    assert switched_on(pump) == 0


DAMAGED: list[bytes | None] = [
    b'{"version":1,"commands":[{"id":"a","ts":1',  # cut short
    b"\xff\xfe\x00garbage",
    b'{"version":1,"commands":[{"id":"a"}]}',  # no ts
    b'{"version":1,"commands":[{"id":"a","ts":1,"reply":{"id":"a","ok":"yes"}}]}',
    b'{"version":1,"forgotten_before":1e400,"commands":[]}',
    b'{"version":1,"commands":[{"id":"\\ud800","ts":1,"under_way":true}]}',
    b'{"version":1,"commands":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'["version",1]',
    b"",
    None,  # a directory where the file should be: cannot be read
]


@pytest.mark.parametrize("content", DAMAGED, ids=range(len(DAMAGED)))
def test_a_damaged_record_refuses_what_was_sent_before_the_start(
    tmp_path: Path, pins: MockFactory, content: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    record = record_path(tmp_path)
    record.parent.mkdir()
    if content is None:
        record.mkdir()
    else:
        record.write_bytes(content)
    pump = pins.pin(20)

    async def body(gateway: Gateway) -> None:
        before = await gateway.send("before", 1, ts=T0 - 1)
        assert before["ok"] is False
        assert LOST in before["error"]
        assert (await gateway.send("after", 1, ts=T0))["ok"] is True

    with caplog.at_level(logging.INFO, "agent.uplink.commands"):
        on_gateway(tmp_path, WallClock(T0), body)
    logged = [r for r in caplog.records if r.name == "agent.uplink.commands"]
    assert all(r.exc_info is None for r in logged)  # no traceback for what a file holds
    assert len([r for r in logged if "cannot read" in r.getMessage()]) == 1, logged
    assert switched_on(pump) == 1


def test_a_damaged_record_found_before_ntp_refuses_what_was_sent_before_the_start(
    tmp_path: Path, pins: MockFactory
) -> None:
    record = record_path(tmp_path)
    record.parent.mkdir()
    record.write_text("{")
    clock = WallClock(None)  # started without a trusted clock: its start is known only later

    async def body(gateway: Gateway) -> None:
        clock.ms = T0  # NTP answers: the start was a moment (real, monotonic time) before T0
        before = await gateway.send("before", 1, ts=T0 - 10_000)
        assert LOST in before["error"]
        assert (await gateway.send("after", 1, ts=T0))["ok"] is True

    on_gateway(tmp_path, clock, body)


def test_an_unwritable_record_is_logged_once_and_kept_in_memory(
    tmp_path: Path, pins: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A full or read-only card: commands still run, still once, and the journal gets one line
    (at most one a minute), not one per write."""
    pump = pins.pin(20)

    async def body(gateway: Gateway) -> None:
        (tmp_path / "data").write_text("a file where the data dir should be")
        first = await gateway.send("on", 1)
        assert (await gateway.send("off", 0))["ok"] is True
        assert await gateway.send("on", 1) == first

    with caplog.at_level(logging.INFO, "agent.uplink.commands"):
        on_gateway(tmp_path, WallClock(), body)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "cannot write" in errors[0], errors
    assert switched_on(pump) == 1
