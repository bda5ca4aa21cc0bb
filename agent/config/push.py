"""A configuration pushed over MQTT, written over the running one as one transaction.

A push replaces several files (the main one and its includes). Before the first is touched,
a journal beside the main file (``.NAME.push.json``) holds every new text and every previous
one, synced; then each file is replaced atomically (a temporary file, synced, renamed). A
``kill -9`` anywhere leaves the journal, and ``edge-agent run`` finishes what it says before it
reads the configuration (``finish_interrupted``): the files are then all old or all new, never
half of each. The journal stays while the push waits for its confirmation, and holds the
previous texts a rollback writes back.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import sync_directory, write_atomically

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 gateways
    import tomli as tomllib

#: A pushed configuration is a few kB; these bound what a hostile or broken push can cost.
MAX_FILES = 64
MAX_BYTES = 512 * 1024
#: An agent that starts this often with a push unconfirmed (it crashes with it, and systemd
#: restarts it) rolls it back before it reads the configuration: no crash loop.
MAX_STARTS = 3
#: The phases of a push in the journal.
APPLYING, CONFIRMING, ROLLING_BACK = "applying", "confirming", "rolling back"

Texts = Mapping[str, str]
#: For a rollback: each file's text before the push; None where there was no such file.
Previous = Mapping[str, str | None]

_SECRET_VALUE = re.compile(
    # a key naming a secret, but not a file holding one (password_file is a path)
    r"""(?P<key>\b[\w-]*(?:password|passwd|secret|token)(?![\w-]*_file\b)[\w-]*["']?\s*=\s*)"""
    # multi-line strings first: their opening quotes would pass for an empty string
    r"""(?P<value>"{3}(?:[^\\]|\\.)*?"{3,5}|'{3}.*?'{3,5}"""
    r"""|"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^\s,}#]+)""",
    re.IGNORECASE | re.DOTALL,
)


def config_hash(files: Iterable[tuple[str, str]]) -> str:
    """One hash of a configuration's files (names and texts), as ``meta`` shows it: equal on
    two gateways exactly when they run the same files."""
    digest = hashlib.sha256()
    for name, text in sorted(files):
        digest.update(name.encode() + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0")
    return "sha256:" + digest.hexdigest()


def redacted(text: str) -> str:
    """``text`` with the value of every key that names a password, secret or token replaced:
    a configuration shown over MQTT never carries one (``${…}`` references stay as written,
    never their values)."""
    return _SECRET_VALUE.sub(
        lambda m: m["key"] + ('"<redacted>"' if m["value"][:1] in "\"'" else "<redacted>"), text
    )


def secret_values(text: str) -> list[str]:
    """The values written for keys that name a password, secret or token in ``text``."""
    values = []
    for match in _SECRET_VALUE.finditer(text):
        try:  # the value as TOML reads it (escapes and all), as the link would send it
            value = tomllib.loads(f"v = {match['value']}")["v"]
        except tomllib.TOMLDecodeError:
            value = match["value"]
        values.append(str(value))
    return values


def file_problem(name: str) -> str | None:
    """Why ``name`` cannot be a pushed file's name, or None: relative, below the main file's
    folder, a ``.toml`` file (what an include can match)."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        return "must be a relative path with / between folders"
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return "must stay below the configuration's folder (no '..', '.', hidden or empty parts)"
    if not name.endswith(".toml"):
        return "must be a .toml file"
    return None


def previous_path(config: Path) -> Path:
    """Where the files a confirmed push replaced are kept (one JSON file, hidden)."""
    return config.with_name(f".{config.name}.previous.json")


def keep_previous(config: Path, journal: Journal) -> None:
    """Keep what a confirmed push replaced, for a person to go back to."""
    kept = {"id": journal.id, "hash": journal.old_hash, "files": journal.previous}
    write_atomically(previous_path(config), json.dumps(kept, indent=1), mode=0o600)


def journal_path(config: Path) -> Path:
    """Beside the main file, hidden, and not a ``.toml`` file that an include could match."""
    return config.with_name(f".{config.name}.push.json")


@dataclass
class Journal:
    """A push between its first written byte and its end (confirmed, or rolled back)."""

    id: str | int
    phase: str
    #: The pushed files, by name relative to the main file's folder; None for each running
    #: one the push does not have (the push removes it).
    files: dict[str, str | None]
    #: What a rollback writes back: the running files, and None for each pushed one that did
    #: not exist (a rollback removes it).
    previous: dict[str, str | None]
    old_hash: str
    new_hash: str
    #: The reply a rollback owes the fleet, kept until it is in the agent's record.
    reply: dict[str, Any] | None = None
    #: ``edge-agent run`` started with it unconfirmed: beyond ``MAX_STARTS``, rolled back.
    starts: int = 0

    def roll_back(self, why: str) -> None:
        """From now on a rollback: its reply made (kept in the journal until delivered)."""
        self.phase = ROLLING_BACK
        self.reply = {
            "id": self.id,
            "ok": False,
            "state": "rolled_back",
            "error": why,
            "hash": self.old_hash,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "id": self.id,
            "phase": self.phase,
            "files": self.files,
            "previous": self.previous,
            "old_hash": self.old_hash,
            "new_hash": self.new_hash,
            "reply": self.reply,
            "starts": self.starts,
        }


def read_journal(config: Path) -> Journal | None:
    """The journal of a push under way, None when there is none; ``ValueError`` when it is
    not one (damaged: a person must look)."""
    path = journal_path(config)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ValueError(f"{path}: not the journal of a pushed configuration")
    try:
        journal = Journal(
            data["id"],
            data["phase"],
            dict(data["files"]),
            dict(data["previous"]),
            data["old_hash"],
            data["new_hash"],
            data.get("reply"),
            int(data.get("starts", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not the journal of a pushed configuration ({exc})") from None
    texts = [*journal.files.values(), *journal.previous.values()]
    if journal.phase not in (APPLYING, CONFIRMING, ROLLING_BACK) or not all(
        t is None or isinstance(t, str) for t in texts
    ):
        raise ValueError(f"{path}: not the journal of a pushed configuration")
    return journal


def write_journal(config: Path, journal: Journal) -> None:
    write_atomically(journal_path(config), json.dumps(journal.to_json()), mode=0o600)


def remove_journal(config: Path) -> None:
    journal_path(config).unlink(missing_ok=True)
    sync_directory(config.parent)


def write_files(config: Path, texts: Mapping[str, str | None]) -> None:
    """Each file (relative to ``config``'s folder) replaced atomically; None removes it."""
    base = config.parent
    for name, text in sorted(texts.items()):
        target = base / name
        if text is None:
            target.unlink(missing_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, text, mode=_mode_of(target))
    sync_directory(base)


def apply_journal(config: Path, journal: Journal) -> None:
    """Write a push's files as one transaction: the journal first (every new and previous
    text), then each file, then the journal says it waits for its confirmation."""
    journal.phase = APPLYING
    write_journal(config, journal)
    write_files(config, journal.files)
    journal.phase = CONFIRMING
    write_journal(config, journal)


def on_disk(config: Path, names: Iterable[str]) -> dict[str, str | None]:
    """The files' texts as they are now (None: missing or unreadable)."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = (config.parent / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            found[name] = None
    return found


def finish_interrupted(config: Path) -> str | None:
    """Finish a write that a stop (a ``kill -9``, a power cut) interrupted, before the
    configuration is read: an applying push is written whole, a rollback too. A line saying
    what was done, or None when nothing was under way. ``ValueError``: a damaged journal."""
    journal = read_journal(config)
    if journal is None:
        return None
    if journal.phase == APPLYING:
        write_files(config, journal.files)
        journal.phase = CONFIRMING
        journal.starts = 1
        write_journal(config, journal)
        return (
            f"config push {journal.id}: its files were being written when the agent stopped: "
            "written whole now; it is confirmed once the agent is back online with it"
        )
    if journal.phase == CONFIRMING:
        journal.starts += 1
        if journal.starts <= MAX_STARTS:
            write_journal(config, journal)
            return None
        why = f"the agent started {MAX_STARTS} times with it and never got online: rolled back"
        journal.roll_back(why)
        write_journal(config, journal)
        write_files(config, journal.previous)
        return f"config push {journal.id}: {why}"
    if journal.phase == ROLLING_BACK:
        write_files(config, journal.previous)
        return (
            f"config push {journal.id}: its rollback was under way when the agent stopped: "
            "the previous configuration is written back whole"
        )
    return None


def _mode_of(path: Path) -> int:
    """A replaced file keeps its mode (a config may be 0640, readable by a group)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o640
