"""The faults a field gateway meets, to inject into a test of the real agent, and the accounting
that proves nothing was lost or repeated through them.

Disk: ``TinyFilesystem`` (a tmpfs of a few MB to fill), ``ReadOnlyMount`` (a directory remounted
read-only and back, as an SD card is after an I/O error), ``damage_bytes`` (random bytes of a
file flipped, as a failing card does). Process: ``AgentRunner.kill()`` at a moment drawn from a
seeded ``random.Random``. Broker: ``Broker.stop()``/``start()``. Slaves: ``SimSlave`` faults.

``IdLedger`` is the subscriber's side: every sample id seen, what it held, and at the end the
reconciliation ``generated = delivered + still buffered + dropped + lost to damage``, with the
ids that nobody can account for and those that came twice with different content. ``account``
does it all for an ``AgentRunner`` (the ``edge_agent`` fixture) once the agent is stopped;
``drained`` waits until its backlog is sent.

The mounts need root (``mount``); each is undone by the object that made it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from agent.errors import StorageError
from agent.store.buffer import BUFFER_FILE, BufferStats
from agent.store.inspect import stored_samples, stored_stats

if TYPE_CHECKING:
    from .runner import AgentRunner

#: A jump of ids this long with nothing between is not a loss: ids from the clock (about 10**15)
#: or a blind jump past a destroyed record (2**32).
JUMP = 10**9
#: The agent's own line for ids it never handed out.
_SKIP = re.compile(r"ids skip from (\d+) to (\d+)")


class MountError(RuntimeError):
    """A mount the test asked for cannot be made here (not root, no mount namespace rights)."""


def _mount(*args: str) -> None:
    if os.geteuid() != 0:
        raise MountError("mounting needs root")
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MountError(f"mount {' '.join(args)}: {done.stderr.strip()}")


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


class TinyFilesystem:
    """A tmpfs of ``size`` bytes mounted at ``path`` (made if missing): a disk that fills up.
    ``fill()`` takes what is left, ``free()`` gives it back; ``unmount()`` (or leaving the
    ``with`` block) removes it."""

    def __init__(self, path: Path, size: int = 4_000_000) -> None:
        self.path = path
        self.size = size
        self._filler = path / ".filler"
        self.mounted = False

    def mount(self) -> TinyFilesystem:
        self.path.mkdir(parents=True, exist_ok=True)
        _mount("-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs", str(self.path))
        self.mounted = True
        return self

    def fill(self, leave: int = 0) -> None:
        """Write a file until the file system is full (but ``leave`` bytes)."""
        with self._filler.open("ab") as file:
            chunk = b"\0" * 65536
            while True:
                free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
                if free <= leave:
                    return
                try:
                    file.write(chunk[: max(1, min(len(chunk), free - leave))])
                    file.flush()
                except OSError:
                    return

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            _unmount(self.path)
            self.mounted = False

    def __enter__(self) -> TinyFilesystem:
        return self.mount()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unmount()


class ReadOnlyMount:
    """``path`` bind-mounted onto itself, so that it can be remounted read-only and back while
    the agent runs: ``read_only()``, ``writable()``; ``release()`` removes the bind mount."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False

    def bind(self) -> ReadOnlyMount:
        _mount("--bind", str(self.path), str(self.path))
        self.mounted = True
        return self

    def read_only(self) -> None:
        _mount("-o", "remount,bind,ro", str(self.path))

    def writable(self) -> None:
        _mount("-o", "remount,bind,rw", str(self.path))

    def release(self) -> None:
        if self.mounted:
            _unmount(self.path)
            self.mounted = False

    def __enter__(self) -> ReadOnlyMount:
        return self.bind()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def damage_bytes(
    path: Path, rng: random.Random, count: int = 1, within: tuple[int, int] | None = None
) -> list[int]:
    """Flip ``count`` random bytes of ``path`` (inside ``within`` = (start, end) if given);
    returns their offsets. A missing or empty file is left alone."""
    try:
        data = bytearray(path.read_bytes())
    except FileNotFoundError:
        return []
    if not data:
        return []
    start, end = within or (0, len(data))
    end = min(end, len(data))
    if start >= end:
        return []
    offsets = sorted(rng.randrange(start, end) for _ in range(count))
    for offset in offsets:
        data[offset] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return offsets


def content_key(sample: Mapping[str, Any]) -> str:
    """What a sample says, for telling a repeat (same content) from a clash (other content)."""
    body = {k: sample.get(k) for k in ("device", "ts", "values", "clock")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Reconciled:
    """The accounting at the end of a run."""

    generated: int  # ids the agent handed out (by its own next id, less what it skipped)
    delivered: int
    buffered: int
    dropped: int
    lost: int
    unaccounted: list[int]  # ids neither delivered nor buffered, beyond the counts
    clashes: list[int]  # ids delivered twice with different content

    @property
    def ok(self) -> bool:
        return not self.unaccounted and not self.clashes

    def __str__(self) -> str:
        shown = self.unaccounted[:20]
        return (
            f"generated {self.generated} = delivered {self.delivered} + buffered {self.buffered}"
            f" + dropped {self.dropped} + lost {self.lost}; unaccounted {len(self.unaccounted)}"
            f" {shown}; clashes {len(self.clashes)} {self.clashes[:20]}"
        )


@dataclass
class IdLedger:
    """Every sample id a subscriber saw and what it held (Jepsen's way: account for every
    write at the client)."""

    seen: dict[int, str] = field(default_factory=dict)
    clashes: set[int] = field(default_factory=set)
    deliveries: int = 0

    def record(self, samples: Iterable[Mapping[str, Any]]) -> None:
        for sample in samples:
            sample_id, key = int(sample["id"]), content_key(sample)
            self.deliveries += 1
            if self.seen.setdefault(sample_id, key) != key:
                self.clashes.add(sample_id)

    def reconcile(
        self,
        buffered: Iterable[int],
        dropped: int,
        lost: int,
        skipped: Iterable[range] = (),
        first: int = 1,
    ) -> Reconciled:
        """Account for every id from ``first`` to the highest seen or buffered: delivered,
        still in the buffer (``buffered``: what ``edge-agent buffer export`` lists), or counted
        by the agent as dropped or lost. ``skipped`` are the id ranges the agent says it never
        handed out (``ids skip from A to B`` in its log: ids from the clock); a jump of more
        than ``JUMP`` with nothing between is taken for one too."""
        waiting = set(buffered)
        known = sorted(set(self.seen) | waiting)
        holes = [range(a + 1, b) for a, b in zip([first - 1, *known], known, strict=False)]
        never = sorted(skipped, key=lambda r: r.start)
        missing: list[int] = []
        count = 0
        for hole in holes:
            if _size(hole) > JUMP:
                continue
            for part in _outside(hole, never):
                count += _size(part)
                missing.extend(part[: max(0, 1000 - len(missing))])
        explained = dropped + lost
        return Reconciled(
            len(known) + count,
            len(set(self.seen) - waiting),
            len(waiting),
            dropped,
            lost,
            missing[explained:] if count > explained else [],
            sorted(self.clashes),
        )


def _size(ids: range) -> int:
    """How many ids ``ids`` holds. Not ``len()``: on a 32-bit gateway (armhf) it overflows for
    a range past 2**31 ids, as the jump after a lost ``buffer.ids`` is (2**32)."""
    return max(0, ids.stop - ids.start)


def _outside(hole: range, never: list[range]) -> list[range]:
    """The parts of ``hole`` that no range of ``never`` (sorted by start) covers."""
    parts, start = [], hole.start
    for gap in never:
        if gap.stop <= start or gap.start >= hole.stop:
            continue
        if gap.start > start:
            parts.append(range(start, gap.start))
        start = max(start, gap.stop)
    if start < hole.stop:
        parts.append(range(start, hole.stop))
    return parts


def drained(runner: AgentRunner, timeout: float = 60.0) -> bool:
    """Wait until the running agent is connected with nothing left in its buffer (asked on its
    status socket); False when that did not happen within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # not answering yet: asked again
            status = runner.status()
            if status["link"]["state"] == "connected" and status["buffer"]["depth"] == 0:
                return True
        time.sleep(0.2)  # another process's state: asked, not awaited
    return False


def account(runner: AgentRunner, settle: float = 10.0) -> Reconciled:
    """Every id of a stopped agent's run(s), accounted for: what its telemetry subscriber
    received, what its buffer still holds (``edge-agent buffer export``), what it counted as
    dropped or lost, and the ids its log says it never handed out. Waits up to ``settle``
    seconds for what the broker took to reach the subscriber."""
    path = runner.data_dir / BUFFER_FILE
    try:
        buffered = [s.id for s in stored_samples(path)]
        stats = stored_stats(path)
    except StorageError:  # the disk never took a buffer (read-only from the start)
        buffered, stats = [], BufferStats(0, 0, 0, None, 0, 0, 0)
    last = stats.next_id - 1
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        ids = {s["id"] for s in runner.telemetry.samples()} | set(buffered)
        if last <= 0 or (ids and max(ids) >= last):
            break
        time.sleep(0.1)  # on its way from the broker to the subscriber
    ledger = IdLedger()
    ledger.record(runner.telemetry.samples())
    skipped = [range(int(a), int(b)) for a, b in _SKIP.findall(runner.log)]
    return ledger.reconcile(buffered, stats.dropped, stats.lost, skipped)
