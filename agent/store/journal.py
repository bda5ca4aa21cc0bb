"""The crash journal: what the buffer holds in memory only, kept in the runtime directory (tmpfs).

A sample waits in memory until the broker acknowledges it or the buffer commits it to disk (most
never touch the SD card). A ``kill -9`` (or an out-of-memory kill, or a crash) would lose those
samples, and with them the knowledge of which ids were handed out. The journal is an append-only
file in RAM — ``$RUNTIME_DIRECTORY`` under systemd (kept until the next boot by
``RuntimeDirectoryPreserve=yes``), else ``/dev/shm`` — that records each sample as it is
added and each id as it leaves memory. It costs no disk write at all; it survives the process but
not a reboot, which is what a power cut costs anyway (at most one ``flush_interval``).

A start in the same boot reads it back: the samples that were in memory come back to the
buffer, and the ids resume right after the last one handed out. If a write to the journal ever
fails, the journal is removed and not used again by this run: a journal that missed a sample
must not tell the next start a wrong last id.

It outlives the process, so a package upgrade's new version reads the journal of the old one:
its header names its format (``FORMAT``). A start reads a journal of its own format (or an older
one, once there is one: a new format keeps a reader for the old) and rewrites it in its own; a
journal of a newer format (a downgrade) is refused by the buffer, never read or replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..model import COMPACT_JSON, Sample

log = logging.getLogger(__name__)

#: The journal's format, named in its header after the prefix: 1 since 0.1.0.
FORMAT = 1
_PREFIX = b"edge-agent journal "
MAGIC = f"{_PREFIX.decode()}{FORMAT}"
#: Rewritten with only the samples still in memory once it has grown this much.
COMPACT_AFTER = 4 * 1024 * 1024


def runtime_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the journal lives: systemd's runtime directory, else a private one in /dev/shm;
    None where there is no RAM-backed directory (the buffer then runs without a journal)."""
    given = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if given:
        return Path(given)
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return None
    private = shm / f"edge-agent-{os.geteuid()}"
    try:
        private.mkdir(mode=0o700, exist_ok=True)
        info = private.lstat()
    except OSError:
        return None
    # another user's directory, or a link planted there: not ours to trust with readings
    if info.st_uid != os.geteuid() or info.st_mode & 0o077 or not private.is_dir():
        return None
    return private


#: systemd's RuntimeDirectory= for the unit: where ``edge-agent buffer`` looks for its journal.
SERVICE_RUNTIME = Path("/run/edge-agent")


def journal_dirs(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where a journal may be, for a reader that is not the agent (``edge-agent buffer``)."""
    found = [d for d in (runtime_dir(environ), SERVICE_RUNTIME) if d is not None]
    return list(dict.fromkeys(found))


def journal_path(directory: Path, buffer_path: Path) -> Path:
    """One journal per buffer, named after the buffer's absolute path."""
    key = hashlib.sha256(os.fsencode(buffer_path.absolute())).hexdigest()[:16]
    return directory / f"buffer-{key}.journal"


def format_of(path: Path) -> int:
    """The format the header of the journal at ``path`` names; 0 without a journal (or one
    whose header names none)."""
    try:
        with path.open("rb") as file:
            head = file.read(64)
    except OSError:
        return 0
    number = head.removeprefix(_PREFIX).partition(b" ")[0] if head.startswith(_PREFIX) else b""
    return int(number) if number.isdigit() else 0


@dataclass
class Recovered:
    """What a journal of the same boot held: the samples that were in memory only, and the
    first id that was never handed out."""

    samples: dict[int, Sample] = field(default_factory=dict)
    next_id: int = 0
    #: The run that wrote it (``IdLedger.run``), and the run whose mark of the ids file it
    #: started from: its next id speaks for the ids only if no later run marked the file.
    run: str = ""
    base: str = ""


class Journal:
    """The append-only journal at ``path`` for the buffer at ``buffer_path``, in boot ``boot``."""

    def __init__(self, path: Path, buffer_path: Path, boot: str) -> None:
        self.path = path
        self.header = f"{MAGIC} {boot} {buffer_path.absolute()}\n".encode()
        self._fd: int | None = None
        self._size = 0
        self._run = ""
        #: A write failed and the journal was removed: ``start`` again when memory allows.
        self.failed = False

    @property
    def active(self) -> bool:
        return self._fd is not None

    def recover(self) -> Recovered:
        """What an earlier run in this boot left (nothing from another boot or buffer)."""
        try:
            with self.path.open("rb") as file:
                if file.readline() != self.header:
                    return Recovered()
                return _replay(file)
        except OSError:
            return Recovered()

    def start(self, samples: Iterable[Sample], next_id: int, run: str, base: str) -> None:
        """Begin a fresh journal holding ``samples`` (what memory holds now), for ``run``
        (started from the mark of ``base``); also after a failure: from then on it is complete
        again."""
        self._run = f"{run} {base}"
        self.failed = False
        self._rewrite(samples, next_id)

    def added(self, sample: Sample) -> None:
        self._write(b"+" + _encode(sample) + b"\n")

    def removed(self, ids: Iterable[int]) -> None:
        """These ids left memory: acknowledged, committed to disk, or dropped."""
        text = ",".join(map(str, ids))
        if text:
            self._write(f"-{text}\n".encode())

    def maybe_compact(self, samples: Iterable[Sample], next_id: int) -> None:
        if self._fd is not None and self._size > COMPACT_AFTER:
            self._rewrite(samples, next_id)

    def close(self, keep: bool) -> None:
        """Stop writing; remove the journal unless it still holds samples (``keep``)."""
        self._close_fd()
        if not keep:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _rewrite(self, samples: Iterable[Sample], next_id: int) -> None:
        body = b"".join(b"+" + _encode(s) + b"\n" for s in samples)
        content = self.header + f"={next_id} {self._run}\n".encode() + body
        tmp = self.path.with_suffix(".tmp")
        self._close_fd()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                _write_all(fd, content)
            finally:
                os.close(fd)
            tmp.replace(self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            self._size = len(content)
        except OSError as exc:
            self._give_up(exc)

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            return
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self._give_up(exc)
            return
        self._size += len(data)

    def _give_up(self, exc: OSError) -> None:
        """A journal that missed a record would mislead the next start: remove it."""
        self._close_fd()
        self.failed = True
        for path in (self.path, self.path.with_suffix(".tmp")):
            with contextlib.suppress(OSError):
                path.unlink()
        log.warning(
            "buffer journal %s: %s; going on without it until it can be written again (a kill "
            "-9 meanwhile would lose the samples not yet on disk)",
            self.path,
            exc.strerror or exc,
        )

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _encode(sample: Sample) -> bytes:
    """``[id, device, ts, values, mono, boot]`` as compact JSON, around the sample's values
    encoded once (``Sample.values_json``)."""
    if type(sample.id) is not int or type(sample.ts) is not int:  # not what %d writes
        row = [sample.id, sample.device, sample.ts, dict(sample.values), sample.mono, sample.boot]
        return COMPACT_JSON.encode(row).encode()
    device = COMPACT_JSON.encode(sample.device).encode()
    head = b"[%d,%s,%d," % (sample.id, device, sample.ts)
    if sample.mono is None and sample.boot is None:
        return head + sample.values_json + b",null,null]"
    tail = COMPACT_JSON.encode([sample.mono, sample.boot])[1:].encode()
    return head + sample.values_json + b"," + tail


def _replay(lines: Iterable[bytes]) -> Recovered:
    found = Recovered()
    for line in lines:
        if not line.endswith(b"\n"):
            break  # the last write, cut by the kill
        kind, body = line[:1], line[1:-1]
        with contextlib.suppress(ValueError, TypeError, UnicodeDecodeError):
            if kind == b"+":
                sample = _decode(body)
                found.samples[sample.id] = sample
                found.next_id = max(found.next_id, sample.id + 1)
            elif kind == b"-":
                for text in body.split(b","):
                    found.samples.pop(int(text), None)
            elif kind == b"=":
                next_id, _, runs = body.decode("ascii").partition(" ")
                found.run, _, found.base = runs.partition(" ")
                found.next_id = max(found.next_id, int(next_id))
    return found


def _decode(body: bytes) -> Sample:
    sample_id, device, ts, values, mono, boot = json.loads(body)
    if not (isinstance(sample_id, int) and isinstance(device, str) and isinstance(ts, int)):
        raise ValueError("not a sample")
    if not isinstance(values, dict):
        raise ValueError("not a sample")
    if not (mono is None or isinstance(mono, int | float)) or not (
        boot is None or isinstance(boot, str)
    ):
        raise ValueError("not a sample")
    return Sample(sample_id, device, ts, values, mono=mono, boot=boot)
