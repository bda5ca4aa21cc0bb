"""Upgrade safety: the buffer 0.1.0 left is read by this version, whole, and a buffer of a newer
version than this one (a downgrade) is refused with one line, never taken for damage.

``fixtures/buffer-0.1.0/`` holds the files the 0.1.0 agent left after a ``kill -9``: ``data/``
(its data dir: ``buffer.sqlite`` with its write-ahead log, ``buffer.ids``) and ``run/`` (its
runtime dir: the crash journal). ``fixtures/make_buffer_0_1_0.py`` made them, once, with the code
of 0.1.0; its docstring tells how, and ``SAMPLES`` below what they hold. The tests open copies,
never the committed files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import zlib
from dataclasses import asdict
from pathlib import Path

import pytest

from agent import __version__
from agent.model import Sample
from agent.store import formats
from agent.store.buffer import Buffer, Complaints
from agent.store.formats import FORMAT, FORMATS_AHEAD, NewerFormat
from agent.store.ids import SLOT, IdLedger
from agent.store.inspect import stored_samples, stored_stats
from agent.store.journal import journal_path
from agent.store.salvage import user_version
from agent.testkit.process import cli

FIXTURE = Path(__file__).parent / "fixtures" / "buffer-0.1.0"
BOOT = "3f2a9c4e-7b1d-4e8a-9c6f-0d5e2b1a8c7f"  # the boot the fixture's runs were in
#: The buffer the fixture's journal names: the service's data dir, as on a gateway.
SERVICE_BUFFER = "/var/lib/edge-agent/buffer.sqlite"
T = 1_795_000_000_000
#: Every sample the fixture holds: committed (3 acknowledged, its delete not yet committed; 6 and
#: 8 with an untrusted clock, 8 sent as unsynced; 11-13 in the write-ahead log, and still in
#: the journal), and in the journal only (14, 16, 17). 10 is in the quarantine table.
SAMPLES = [
    Sample(3, "gps", T + 2000, {"lat": 47.376887, "lon": 8.541694, "fix": True, "sats": 9}),
    Sample(4, "débit-3", T + 3000, {"flow": 1.5, "unit": "m³/h"}),
    Sample(5, "door", T + 4000, {"open": False}),
    Sample(6, "soil-2", 86_400_123, {"moisture": 30.9, "temperature": 11.5}, 1234.567, BOOT),
    Sample(8, "soil-2", 86_401_000, {"moisture": 30.8}, mono=1240.0, boot=None),
    Sample(11, "meter-1", T + 20_000, {"voltage": 231.4, "current": 3.9}),
    Sample(12, "gps", T + 21_000, {"lat": 47.37695, "lon": 8.54172, "fix": False}),
    Sample(13, "soil-2", T + 22_000, {"moisture": 29.75, "temperature": 13.0}),
    Sample(14, "meter-1", T + 23_000, {"voltage": 230.9, "current": 4.1}),
    Sample(16, "soil-2", 86_500_000, {"moisture": 29.5}, mono=2000.25, boot=BOOT),
    Sample(17, "débit-3", T + 26_000, {"flow": 0.0, "unit": "m³/h"}),
]
#: The last id 0.1.0 handed out (15 was acknowledged: its sample is gone, its id is taken).
LAST_ID = 17
IN_JOURNAL_ONLY = {14, 16, 17}  # lost to a reboot during the upgrade


def installed(top: Path, journal: bool = True) -> Path:
    """A copy of the fixture under ``top`` (``data/``, ``run/``), as if 0.1.0 had run here; the
    path of its database. A journal names its buffer by absolute path (in its header and its
    file name): the copy's names the copy. Without ``journal``: a reboot emptied the runtime dir."""
    data, run = top / "data", top / "run"
    shutil.copytree(FIXTURE / "data", data)
    run.mkdir()
    db = data / "buffer.sqlite"
    [left] = (FIXTURE / "run").iterdir()
    assert left.name == journal_path(Path("/run/edge-agent"), Path(SERVICE_BUFFER)).name
    header, body = left.read_bytes().split(b"\n", 1)
    assert header == f"edge-agent journal 1 {BOOT} {SERVICE_BUFFER}".encode()
    if journal:
        header = header.replace(SERVICE_BUFFER.encode(), os.fsencode(db.absolute()))
        journal_path(run, db).write_bytes(header + b"\n" + body)
    return db


def buffer_at(db: Path) -> Buffer:
    return Buffer(db, 10_000_000, 60.0, journal_dir=db.parent.parent / "run", boot=BOOT)


def backlog(opened: Buffer) -> list[Sample]:
    taken = opened.take_backlog(1000)
    opened.release()
    return taken


def files(top: Path) -> dict[str, bytes]:
    """Every file under ``top`` and its bytes (the data dir's lock aside: not the buffer's)."""
    return {
        str(p.relative_to(top)): p.read_bytes()
        for p in sorted(top.rglob("*"))
        if p.is_file() and p.name != "agent.lock"
    }


def columns(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
        return {row[1] for row in conn.execute("PRAGMA table_info(samples)")}


# --- an upgrade


def test_the_fixture_is_as_0_1_0_left_it() -> None:
    """What the other tests rely on: no version recorded, a write-ahead log not checkpointed."""
    db = FIXTURE / "data" / "buffer.sqlite"
    assert user_version(db, FIXTURE / "data" / "buffer.sqlite-wal") == 0
    assert (FIXTURE / "data" / "buffer.sqlite-wal").stat().st_size > 0
    assert sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file()) < 64_000


def test_every_sample_0_1_0_left_is_read_with_its_id_and_clock_markers(tmp_path: Path) -> None:
    db = installed(tmp_path)
    with buffer_at(db) as opened:
        assert backlog(opened) == SAMPLES  # id, device, ts, values, mono and boot, in order
        assert opened.depth == len(SAMPLES)
        assert opened.next_id > LAST_ID
        assert (opened.dropped, opened.lost) == (1, 1)  # the counts 0.1.0 kept go on
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == FORMAT
        # the damaged row 0.1.0 kept for a person to look at is still there
        assert [r[0] for r in conn.execute("SELECT id FROM quarantine")] == [10]
    with buffer_at(db) as again:  # and a second start of this version finds the same
        assert backlog(again) == SAMPLES


def test_the_readers_read_0_1_0_files_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``edge-agent buffer stats`` and ``export`` before the new version's first start: they
    read the old format and never migrate (they only read)."""
    db = installed(tmp_path)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    before = files(tmp_path)
    assert list(stored_samples(db, boot=BOOT)) == SAMPLES
    stats = stored_stats(db, boot=BOOT)
    assert (stats.depth, stats.in_memory) == (len(SAMPLES), 3)
    assert stats.next_id > LAST_ID
    assert (stats.dropped, stats.lost) == (1, 1)
    assert user_version(db, db.with_name("buffer.sqlite-wal")) == 0
    assert {k: v for k, v in files(tmp_path).items() if not k.endswith("-shm")} == before


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "rebooted"])
def test_ids_go_on_beyond_every_id_0_1_0_handed_out(tmp_path: Path, journal: bool) -> None:
    """With the journal the ids go on exactly; without it (a reboot during the upgrade: its
    samples are lost, as a power cut loses them) beyond the reservation. Never a repeat."""
    db = installed(tmp_path, journal)
    with buffer_at(db) as opened:
        new = [opened.add("meter-1", T + 30_000 + i, {"v": i}) for i in range(3)]
        ids = [s.id for s in new if s is not None]
        stored = [s.id for s in backlog(opened)]
    assert len(ids) == 3
    assert min(ids) > LAST_ID
    if journal:
        assert ids[0] == LAST_ID + 1  # no gap: the journal said exactly where 0.1.0 stopped
        assert stored == [s.id for s in SAMPLES]
    else:
        assert stored == [s.id for s in SAMPLES if s.id not in IN_JOURNAL_ONLY]
    with buffer_at(db) as again:
        later = again.add("meter-1", T + 40_000, {"v": 9})
        assert later is not None
        assert later.id > max(ids)
        all_ids = [s.id for s in backlog(again)]
    assert len(all_ids) == len(set(all_ids))


# --- migrations


def add_site(db: sqlite3.Connection) -> None:
    """A step to a format 2, for the tests: a new column, filled in."""
    db.execute("ALTER TABLE samples ADD COLUMN site TEXT")
    db.execute("UPDATE samples SET site = 'north'")


def add_zone(db: sqlite3.Connection) -> None:
    """And one to a format 3."""
    db.execute("ALTER TABLE samples ADD COLUMN zone INTEGER")


def test_every_format_has_its_step() -> None:
    assert len(formats._STEPS) == FORMAT  # noqa: SLF001 (the migration steps, on purpose)


def test_the_steps_run_from_the_format_found_once_and_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []

    def to_1(db: sqlite3.Connection) -> None:
        ran.append("to 1")
        formats._to_format_1(db)  # noqa: SLF001 (the real first step, spied on)

    def to_2(db: sqlite3.Connection) -> None:
        assert db.in_transaction  # the step before it is in the same transaction
        ran.append("to 2")
        add_site(db)

    monkeypatch.setattr(formats, "_STEPS", (to_1,))
    db = installed(tmp_path)
    with buffer_at(db):  # this version: 0.1.0's database is stamped format 1
        pass
    assert ran == ["to 1"]
    monkeypatch.setattr(formats, "FORMAT", 2)  # a later version, with a step of its own
    monkeypatch.setattr(formats, "_STEPS", (to_1, to_2))
    with buffer_at(db) as upgraded:
        assert backlog(upgraded) == SAMPLES
    assert ran == ["to 1", "to 2"]
    assert user_version(db, db.with_name("buffer.sqlite-wal")) == 2
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert set(conn.execute("SELECT site FROM samples")) == {("north",)}
    with buffer_at(db) as again:
        assert backlog(again) == SAMPLES
    assert ran == ["to 1", "to 2"]  # a database of the current format takes no step
    # 0.1.0's straight to format 2, and a new database: every step, in one transaction
    with buffer_at(installed(tmp_path / "other")):
        pass
    with buffer_at(tmp_path / "new" / "buffer.sqlite"):
        pass
    assert ran == ["to 1", "to 2", "to 1", "to 2", "to 1", "to 2"]
    assert "site" in columns(tmp_path / "new" / "buffer.sqlite")


KILLED_IN_A_STEP = """
import os, sys
from pathlib import Path
from agent.store import buffer, formats

def add_site(db):
    db.execute("ALTER TABLE samples ADD COLUMN site TEXT")
    db.execute("UPDATE samples SET site = 'north'")

def killed(db):
    db.execute("ALTER TABLE samples ADD COLUMN zone INTEGER")
    os._exit(9)  # the power goes, or the OOM killer comes

formats.FORMAT, formats._STEPS = 3, (*formats._STEPS, add_site, killed)
buffer.Buffer(Path(sys.argv[1]), 10_000_000, 60.0).open()
"""


@pytest.mark.parametrize("how", ["failed", "killed"])
def test_an_interrupted_migration_leaves_the_old_format_and_the_next_open_migrates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Three steps (0.1.0's to 1, then to 2 and to 3): the last one fails or is killed."""
    db = installed(tmp_path)
    if how == "killed":
        done = subprocess.run([sys.executable, "-c", KILLED_IN_A_STEP, str(db)], check=False)
        assert done.returncode == 9
    else:

        def fails(db: sqlite3.Connection) -> None:
            add_zone(db)
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(formats, "FORMAT", 3)
        monkeypatch.setattr(formats, "_STEPS", (formats._to_format_1, add_site, fails))  # noqa: SLF001
        with buffer_at(db) as meanwhile:  # the agent goes on, the samples in memory
            assert meanwhile._db is None  # noqa: SLF001 (no database open: no public view)
    # the old format, whole: no step's work and no stamp was committed
    assert user_version(db, db.with_name("buffer.sqlite-wal")) == 0
    assert not {"site", "zone"} & columns(db)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    assert list(stored_samples(db, boot=BOOT)) == SAMPLES

    monkeypatch.setattr(formats, "FORMAT", 3)
    monkeypatch.setattr(formats, "_STEPS", (formats._to_format_1, add_site, add_zone))  # noqa: SLF001
    with buffer_at(db) as upgraded:
        assert backlog(upgraded) == SAMPLES
    assert user_version(db, db.with_name("buffer.sqlite-wal")) == 3
    assert {"site", "zone"} <= columns(db)


# --- a downgrade: files of a newer version


def newer_database(db: Path) -> None:
    """As a newer version leaves it when killed: its format in the write-ahead log only (the
    database file's own header still says 0.1.0's)."""
    shutil.copytree(db.parent, db.parent.with_name("newer"))
    newer = db.parent.with_name("newer") / db.name
    with contextlib.closing(sqlite3.connect(newer)) as conn:
        conn.execute(f"PRAGMA user_version = {FORMAT + 1}")
        for suffix in ("", "-wal"):  # copied while it is open: nothing checkpointed
            shutil.copyfile(f"{newer}{suffix}", f"{db}{suffix}")
    shutil.rmtree(newer.parent)


def newer_journal(db: Path) -> Path:
    journal = journal_path(db.parent.parent / "run", db)
    text = journal.read_bytes()
    journal.write_bytes(text.replace(b"edge-agent journal 1 ", b"edge-agent journal 2 ", 1))
    return journal


def newer_ids(db: Path) -> Path:
    """Both slots of ``buffer.ids`` hold a record of format 2 (it names its format)."""
    path = db.with_suffix(".ids")
    body = json.dumps(
        {**asdict(IdLedger(path).peek()), "format": 2}, sort_keys=True, separators=(",", ":")
    )
    slot = f'{body[:-1]},"crc":{zlib.crc32(body.encode())}}}'.encode().ljust(SLOT - 1) + b"\n"
    path.write_bytes(slot * 2)
    return path


def refusal(file: Path, version: int, fix: str) -> str:
    return (
        f"{file} is format {version}, newer than this edge-agent {__version__} reads "
        f"({version - 1}): install the newer edge-agent again{fix}"
    )


def newer(kind: str, db: Path) -> str:
    """Make one of the buffer's files a newer version's; the line that refuses it."""
    if kind == "database":
        newer_database(db)
        return refusal(db, FORMAT + 1, ", or move it and its -wal away to start empty")
    if kind == "journal":
        return refusal(newer_journal(db), 2, ", or move it away to start empty")
    return refusal(newer_ids(db), 2, "")


@pytest.mark.parametrize("kind", ["database", "journal", "ids"])
def test_a_file_of_a_newer_version_is_refused_and_left_as_it_is(tmp_path: Path, kind: str) -> None:
    db = installed(tmp_path)
    line = newer(kind, db)
    before = files(tmp_path)
    with pytest.raises(NewerFormat) as refused:
        buffer_at(db).open()
    assert str(refused.value) == line
    assert files(tmp_path) == before  # byte for byte: nothing rebuilt, moved aside, stamped


@pytest.mark.parametrize("damaged", [FORMAT + FORMATS_AHEAD + 1, 2**24 + 1, -1])
def test_a_format_no_release_wrote_is_damage_not_a_newer_version(
    tmp_path: Path, damaged: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The format's 4 bytes in the header have no checksum: garbage there must not stop the
    agent for good as a "newer version" would. The database is read, and stamped again."""
    db = installed(tmp_path)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(f"PRAGMA user_version = {damaged}")
    with caplog.at_level(logging.WARNING), contextlib.closing(buffer_at(db).open()) as buffer:
        assert buffer.stats().on_disk > 0
    assert f"its header says format {damaged}, which no edge-agent wrote" in caplog.text
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == FORMAT


@pytest.mark.parametrize("kind", ["database", "journal", "ids"])
def test_the_readers_refuse_a_newer_version_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    db = installed(tmp_path)
    line = newer(kind, db)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    before = files(tmp_path)
    with pytest.raises(NewerFormat, match="newer than this edge-agent"):
        list(stored_samples(db, boot=BOOT))
    with pytest.raises(NewerFormat) as refused:
        stored_stats(db, boot=BOOT)
    assert str(refused.value) == line
    assert files(tmp_path) == before


def test_a_newer_database_found_after_the_start_is_not_migrated_either(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The card was not there at the start (the buffer went on in memory) and, once it is,
    holds a newer version's database: the buffer goes on in memory and says why; the file keeps
    its format (a migration to this version's would stamp it older)."""
    card = tmp_path / "card"
    card.write_text("not mounted yet")
    late = Buffer(card / "buffer.sqlite", 10_000_000, 60.0).open()
    assert late._db is None  # noqa: SLF001 (no database open: no public view)
    card.unlink()
    card.mkdir()
    db = card / "buffer.sqlite"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE samples (id INTEGER PRIMARY KEY, site TEXT)")
        conn.execute(f"PRAGMA user_version = {FORMAT + 1}")
    before = db.read_bytes()
    late.complaints = Complaints()  # a minute later: the disk is tried again, and trouble said
    late.flush()
    assert late._db is None  # noqa: SLF001
    assert db.read_bytes() == before
    line = refusal(db, FORMAT + 1, ", or move it and its -wal away to start empty")
    assert f"{line}; samples wait in memory" in caplog.messages


SITE = """
[agent]
id = "gw"
data_dir = "data"
[[bus]]
name = "plc"
type = "modbus-tcp"
host = "127.0.0.1"
[[device]]
name = "meter"
bus = "plc"
  [[device.point]]
  name = "v"
  address = 0
"""


@pytest.mark.parametrize(
    ("kind", "command"),
    [
        ("database", "run"),
        ("database", "buffer stats"),
        ("database", "buffer export"),
        ("database", "buffer purge"),
        ("journal", "run"),
        ("journal", "buffer export"),
    ],
)
def test_the_command_line_says_one_line_and_exits_2(
    tmp_path: Path, kind: str, command: str
) -> None:
    """Exit 2: systemd does not restart on it (``RestartPreventExitStatus=2``), as for an invalid
    configuration: only a person can fix it."""
    db = installed(tmp_path)
    line = newer(kind, db)
    config = tmp_path / "site.toml"
    config.write_text(SITE)
    before = files(tmp_path)
    result = cli(
        *command.split(), "-c", str(config), env={"RUNTIME_DIRECTORY": str(tmp_path / "run")}
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [said] = result.stderr.splitlines()
    assert said.endswith(line)
    assert files(tmp_path) == before
