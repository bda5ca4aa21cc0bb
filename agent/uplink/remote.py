"""A configuration pushed over MQTT (``config/set``): checked, applied, confirmed — or rolled back
by the agent itself — and the running one shown (``config/get``). docs/remote.md is the contract.

One push at a time, owned by ``RemotePushes.run``. The files move through ``agent.config.push``'s
journal, so that a stop at any moment leaves the old configuration or the new one. A push is
confirmed once ``meta`` of its configuration is published (the agent is on a broker with it);
otherwise, after ``confirm_within``, the previous files are written back and applied.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..config.loader import included_on_disk
from ..config.push import (
    APPLYING,
    CONFIRMING,
    MAX_BYTES,
    MAX_FILES,
    ROLLING_BACK,
    Journal,
    apply_journal,
    config_hash,
    file_problem,
    finish_interrupted,
    keep_previous,
    on_disk,
    read_journal,
    redacted,
    remove_journal,
    write_files,
    write_journal,
)
from ..config.secrets import known_secrets, scrubbed
from ..errors import ConfigError
from ..files import write_atomically
from .commands import TS_LIMIT, Ident, Reply, command_id, payload_id, shown

log = logging.getLogger(__name__)

REPLY_TOPIC = "config/reply"
#: The pushes remembered (by id, with their replies) so that a copy is answered, not applied.
REMEMBERED = 100
#: Under the data dir: those pushes, and the replies still owed to the fleet.
RECORD_FILE = "remote.json"
#: How often a reply owed is tried again while the link is down.
RETRY_EVERY = 1.0
#: A push's payload at most: its files, and the JSON around them.
MAX_PUSH = MAX_BYTES + 64 * 1024
#: Pushes that arrived together (a session's queue) checked in turn; more are refused.
WAITING = 8
#: A push's own ttl is at most this (a month).
MAX_TTL = 30 * 24 * 3600

Restarts = Callable[[Config, Config], list[str]]


class PushRefused(ValueError):
    """A push that is not applied; ``problems`` are the check's lines."""

    def __init__(self, why: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(why)
        self.problems = problems


@dataclass
class Push:
    id: Ident
    ts: int
    ttl: float
    #: The main file's text, and each included file's by its path relative to the main one.
    main: str
    files: dict[str, str]
    remote_off: bool = False

    def texts(self, main_name: str) -> dict[str, str]:
        """Every file by name, the main one as ``main_name``."""
        if main_name in self.files:
            raise PushRefused(f'"files": {shown(main_name)} is the main file: send it as "config"')
        return {main_name: self.main, **self.files}


@dataclass
class _Record:
    """The pushes answered (the last ``REMEMBERED``), the replies not yet delivered, and the
    last push's outcome for ``health``; in ``<data_dir>/remote.json``."""

    path: Path
    done: dict[Ident, Reply] = field(default_factory=dict)
    outbox: list[Reply] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_bytes())
            self.done = {r["id"]: r for r in data["done"] if command_id(r) is not None}
            self.outbox = [r for r in data["outbox"] if command_id(r) is not None]
            self.last = dict(data.get("last") or {})
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error(
                "remote: cannot read %s (%s): the pushes answered before are forgotten",
                self.path,
                str(exc)[:200],
            )

    def answered(self, reply: Reply, at: int | None, deliver: bool = True) -> None:
        self.done[reply["id"]] = reply
        while len(self.done) > REMEMBERED:
            del self.done[next(iter(self.done))]
        if deliver and reply not in self.outbox:
            self.outbox.append(reply)
        self.last = {"id": reply["id"], "state": reply["state"], "at": at}
        self.save()

    def delivered(self, reply: Reply) -> None:
        if reply in self.outbox:
            self.outbox.remove(reply)
            self.save()

    def save(self) -> None:
        state = {"version": 1, "done": list(self.done.values()), "outbox": self.outbox}
        state["last"] = self.last
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps(state))
        except (OSError, ValueError, TypeError) as exc:
            log.error("remote: cannot write %s (%s): kept in memory only", self.path, exc)


class RemotePushes:
    """Takes pushes one at a time: check, write, apply, confirm or roll back; answers them."""

    def __init__(
        self,
        config: Callable[[], Config],
        apply: Callable[[Config], Awaitable[None]],
        publish: Callable[[Reply, str], Awaitable[bool]],
        published: asyncio.Event,
        now_ms: Callable[[], int | None],
        restarts: Restarts,
        link_error: Callable[[], str] = lambda: "",
        turn: asyncio.Lock | None = None,
    ) -> None:
        self._config = config
        #: Applies a configuration; called holding ``turn``.
        self._apply = apply
        #: Held by whatever reads the files and applies them (a reload too): a push is checked,
        #: written and applied in one turn, so that no reload reads its files half-way.
        self._turn = turn or asyncio.Lock()
        self._publish = publish
        #: Set by the link once ``meta`` of the current configuration is on the broker.
        self._published = published
        self._now_ms = now_ms
        self._restarts = restarts
        self._link_error = link_error
        self.record = _Record(config().agent.data_dir / RECORD_FILE)
        self.record.load()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        #: The push being applied or confirmed (at most one).
        self.current: Ident | None = None
        self._superseded = asyncio.Event()
        #: Why the push just written could not be applied (it is then rolled back at once).
        self._unapplied: str | None = None
        self._owed = asyncio.Event()
        if self.record.outbox:
            self._owed.set()

    # --- what arrives

    async def arrived(self, subtopic: str, data: bytes) -> None:
        """A message on ``config/set`` or ``config/get``."""
        if subtopic == "config/get":
            await self._answer_get(data)
        elif self.current is not None and _id_of(data) == self.current:
            # a copy of the push under way: its one reply is the outcome, sent when it ends
            log.info(
                "config push %s: repeated while under way: answered when it ends",
                shown(str(self.current)),
            )
        elif self.current is not None:
            await self._refuse_now(data, f"busy: push {shown(str(self.current))} is under way")
        elif self._queue.qsize() >= WAITING:
            await self._refuse_now(data, f"busy: {WAITING} pushes are waiting already")
        else:  # checked in turn: a session's queued pushes arrive together
            self._queue.put_nowait(data)

    async def _answer_get(self, data: bytes) -> None:
        ident = _id_of(data)
        if ident is None:
            log.warning('remote: config/get without a usable "id": not answered')
            return
        config = self._config()
        names = dict(config.files)
        main = config.source.name
        reply = {
            "id": ident,
            "ok": True,
            "state": "running",
            "hash": config_hash(config.files),
            "config": redacted(names.pop(main, "")),
            "files": {name: redacted(text) for name, text in names.items()},
        }
        await self._publish(reply, REPLY_TOPIC)

    async def _refuse_now(self, data: bytes, why: str) -> None:
        ident = _id_of(data)
        log.warning("config push %s: refused: %s", shown(str(ident)), why)
        if ident is not None:
            await self._publish(_reply(ident, "refused", error=why), REPLY_TOPIC)

    # --- the owner task

    async def run(self) -> None:
        """Resume a push a restart interrupted, then take pushes and deliver replies owed."""
        deliver = asyncio.create_task(self._deliver_owed(), name="remote replies")
        try:
            await self._resume()
            while True:
                data = await self._queue.get()
                try:
                    await self._take(data)
                except Exception:  # a bug costs this push, never the agent
                    ident = _id_of(data)
                    log.exception("config push %s: internal error", shown(str(ident)))
                    if ident is not None:
                        self._answer(_reply(ident, "refused", error="internal error"))
                finally:
                    self.current = None
        finally:
            deliver.cancel()
            await asyncio.gather(deliver, return_exceptions=True)

    async def _deliver_owed(self) -> None:
        while True:
            await self._owed.wait()
            for reply in list(self.record.outbox):
                await self._published.wait()  # on a broker with the configuration now running
                while True:  # the link may go between its ``meta`` and this reply
                    if await self._publish(reply, REPLY_TOPIC):
                        break
                    await asyncio.sleep(RETRY_EVERY)
                self.record.delivered(reply)
            if not self.record.outbox:
                self._owed.clear()

    def _answer(self, reply: Reply, deliver: bool = True) -> None:
        self.record.answered(reply, self._now_ms(), deliver)
        if deliver:
            self._owed.set()

    def reloaded(self, config: Config) -> None:
        """The file was read again (SIGHUP): a push waiting for its confirmation is given up
        if what was read is not what it wrote (a technician's file wins)."""
        journal = self._journal()
        if journal is not None and config_hash(config.files) != journal.new_hash:
            self._superseded.set()

    def health(self) -> dict[str, Any]:
        config = self._config()
        info: dict[str, Any] = {"hash": config_hash(config.files)}
        if self.record.last:
            info["push"] = dict(self.record.last)
        return info

    # --- one push

    async def _take(self, data: bytes) -> None:
        ident = _id_of(data)
        if ident is None:
            log.warning('config push: no usable "id" (a string of 1-128 characters or an integer)')
            return
        if ident in self.record.done:
            log.info(
                "config push %s: repeated: answered again, not applied twice", shown(str(ident))
            )
            await self._publish(self.record.done[ident], REPLY_TOPIC)
            return
        async with self._turn:
            journal = await self._check_and_apply(ident, data)
        if journal is None:
            return
        if self._unapplied is not None:  # written, but it would not apply: not waited for
            await self._roll_back(journal, self._config().source, self._unapplied)
            return
        await self._confirm(journal)

    async def _check_and_apply(self, ident: Ident, data: bytes) -> Journal | None:
        """Check the push and write and apply it; its journal, None when it ends here."""
        config = self._config()
        try:
            push = parse_push(data, config.remote.push_ttl)
            self._check_age(push)
            new = self._checked(push, config)
        except PushRefused as exc:
            log.warning("config push %s: refused: %s", shown(str(ident)), exc)
            for problem in exc.problems:
                log.warning("config push %s: %s", shown(str(ident)), problem)
            reply = _reply(ident, "refused", error=str(exc), problems=list(exc.problems))
            # its own secrets too: a problem must not quote a password the push carried
            self._answer(scrubbed(reply, known_secrets(config, _pushed_texts(data))))
            return None
        old_hash, new_hash = config_hash(config.files), config_hash(new.files)
        if old_hash == new_hash:
            self._answer(_reply(ident, "unchanged", ok=True, hash=new_hash))
            return None
        return await self._write_and_apply(push, config, old_hash, new_hash)

    def _check_age(self, push: Push) -> None:
        now = self._now_ms()
        if now is None:
            raise PushRefused(
                "the gateway's clock is not set yet (no NTP): the push's age cannot be told"
            )
        if now - push.ts > push.ttl * 1000:
            raise PushRefused(
                f"expired: sent {(now - push.ts) / 1000:.0f}s ago, its ttl is {push.ttl:g}s"
            )
        if push.ts - now > push.ttl * 1000:
            raise PushRefused(
                f"sent {(push.ts - now) / 1000:.0f}s in the future: check the sender's clock"
            )

    def _checked(self, push: Push, running: Config) -> Config:
        """The pushed configuration as ``check`` would load it where it is to be written."""
        path = running.source
        if not os.access(path.parent, os.W_OK):
            raise PushRefused(
                f"cannot write {path.parent}: let the agent write its configuration's folder "
                "(docs/remote.md, 'Running it under systemd')"
            )
        outside = [n for n in push.files if not _below(path.parent, path.parent / n)]
        if outside:
            raise PushRefused(
                f'"files": {shown(outside[0])} leads out of {path.parent} through a symbolic '
                "link: a push writes only below the configuration's folder"
            )
        written = dict(running.files)
        if on_disk(path, written) != written:
            raise PushRefused(
                f"{path} was changed on site and not reloaded yet: the site's file wins; "
                "reload it (systemctl reload edge-agent) before pushing"
            )
        try:
            new, _ = load_config(path, texts=push.texts(path.name))
        except ConfigError as exc:
            problems = tuple(str(p) for p in exc.problems if not p.warning)
            why = f"the configuration has {len(problems)} problem(s)"
            raise PushRefused(why, problems) from None
        stray = _not_carried(path, new, push.texts(path.name), dict(running.files))
        if stray:
            raise PushRefused(
                f"its includes match {', '.join(map(shown, stray[:5]))} on disk, which the push "
                "neither carries nor removes: the push is the whole configuration; add them to "
                '"files" or narrow [agent] include'
            )
        if running.remote.config and not new.remote.config and not push.remote_off:
            raise PushRefused(
                "it turns [remote] config off, which would end remote configuration of this "
                'gateway: send "remote_off": true with it to mean that'
            )
        restarts = self._restarts(running, new)
        if restarts:
            raise PushRefused(
                f"it changes [{'], ['.join(restarts)}], which only a restart applies: change "
                "those on site"
            )
        return new

    async def _write_and_apply(
        self, push: Push, running: Config, old_hash: str, new_hash: str
    ) -> Journal:
        path = running.source
        self.current = push.id  # one at a time: another push is refused until this one ends
        texts = push.texts(path.name)
        names = set(texts) | set(dict(running.files))
        files: dict[str, str | None] = {name: texts.get(name) for name in names}
        journal = Journal(push.id, APPLYING, files, on_disk(path, names), old_hash, new_hash)
        apply_journal(path, journal)
        log.info(
            "config push %s: applied (%s→%s); confirming within %gs",
            shown(str(push.id)),
            old_hash,
            new_hash,
            running.remote.confirm_within,
        )
        self.record.last = {"id": push.id, "state": "confirming", "at": self._now_ms()}
        self._unapplied = None
        try:
            await self._load_and_apply(path)
        except Exception as exc:  # a file changed under it, a bug: the files are rolled back
            log.exception("config push %s: could not be applied", shown(str(push.id)))
            self._unapplied = f"it could not be applied ({type(exc).__name__}: {exc}): rolled back"
        return journal

    async def _load_and_apply(self, path: Path) -> None:
        self._superseded.clear()
        config, _ = load_config(path)
        await self._apply(config)

    async def _confirm(self, journal: Journal) -> None:
        """Confirmed once ``meta`` of the new configuration is published; else rolled back."""
        self.current = journal.id
        within = self._config().remote.confirm_within
        published = asyncio.create_task(self._published.wait())
        superseded = asyncio.create_task(self._superseded.wait())
        try:
            await asyncio.wait(
                [published, superseded], timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            published.cancel()
            superseded.cancel()
        path = self._config().source
        if self._superseded.is_set() or on_disk(path, journal.files) != journal.files:
            self._give_up(journal, path)
        elif self._published.is_set():
            keep_previous(path, journal)
            log.info(
                "config push %s: confirmed: online with %s",
                shown(str(journal.id)),
                journal.new_hash,
            )
            reply = _reply(
                journal.id, "confirmed", ok=True, hash=journal.new_hash, previous=journal.old_hash
            )
            self._answer(reply)  # recorded before the journal goes: a power cut loses neither
            remove_journal(path)
        else:
            error = self._link_error() or "no answer from the broker"
            why = f"not back online with it within {within:g}s ({error}): rolled back"
            await self._roll_back(journal, path, why)

    def _give_up(self, journal: Journal, path: Path) -> None:
        why = "the configuration file was changed on site meanwhile: the site's file stands"
        log.warning("config push %s: given up: %s", shown(str(journal.id)), why)
        self._answer(_reply(journal.id, "superseded", error=why))
        remove_journal(path)

    async def _roll_back(self, journal: Journal, path: Path, why: str) -> None:
        journal.roll_back(why)
        async with self._turn:
            write_journal(path, journal)
            write_files(path, journal.previous)
            log.error(
                "config push %s: %s to the previous configuration (%s)",
                shown(str(journal.id)),
                why,
                journal.old_hash,
            )
            await self._finish_rollback(journal, path)

    async def _finish_rollback(self, journal: Journal, path: Path, apply: bool = True) -> None:
        if apply:
            await self._load_and_apply(path)
        if journal.reply is not None:
            self._answer(journal.reply)
        remove_journal(path)

    async def _resume(self) -> None:
        """A push a stop interrupted: its confirmation starts again (an agent that died with the
        new configuration is rolled back too); a rollback is finished."""
        path = self._config().source
        journal = self._journal()
        if journal is None:
            return
        if journal.phase == APPLYING:  # not through ``edge-agent run`` (which finishes it)
            async with self._turn:
                said = finish_interrupted(path)
                log.warning("%s", said)
                await self._load_and_apply(path)
            journal.phase = CONFIRMING
        if journal.phase == ROLLING_BACK:
            await self._finish_rollback(journal, path, apply=False)
            return
        if journal.id in self.record.done:  # answered just before a stop: only the journal left
            remove_journal(path)
            return
        if config_hash(self._config().files) != journal.new_hash:
            self._give_up(journal, path)
            return
        log.info(
            "config push %s: not confirmed before the agent stopped: confirming within %gs",
            shown(str(journal.id)),
            self._config().remote.confirm_within,
        )
        await self._confirm(journal)
        self.current = None

    def _journal(self) -> Journal | None:
        try:
            return read_journal(self._config().source)
        except ValueError as exc:
            log.error("remote: %s: remove it once the configuration is right", exc)
            return None


def _not_carried(
    path: Path, new: Config, texts: Mapping[str, str], running: Mapping[str, str]
) -> list[str]:
    """The files on disk that ``new``'s includes match, once written, beyond those checked:
    neither pushed nor removed by the push (a running one the push lacks is removed)."""
    base = path.parent
    found: set[str] = set()
    for pattern in new.agent.include:
        try:
            found.update(p.relative_to(base).as_posix() for p in included_on_disk(base, pattern))
        except ValueError:  # a pattern the check refused already
            continue
    return sorted(found - set(texts) - set(running))


def parse_push(data: bytes, default_ttl: float) -> Push:
    """The push in a ``config/set`` payload, or ``PushRefused`` saying what is wrong."""
    if len(data) > MAX_PUSH:
        raise PushRefused(f"{len(data)} bytes: a push is at most {MAX_BYTES} bytes of files")
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise PushRefused(f"not JSON: {str(exc)[:80]}") from None
    ident = command_id(payload)
    if ident is None:
        raise PushRefused('no usable "id"')
    extra = sorted(set(payload) - {"id", "ts", "ttl", "config", "files", "remote_off"})
    if extra:
        raise PushRefused(f"unknown key(s): {', '.join(map(repr, extra))[:120]}")
    ts = payload.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool) or not -TS_LIMIT <= ts < TS_LIMIT:
        raise PushRefused('"ts" must be an integer: ms since the epoch, when it was sent')
    ttl = payload.get("ttl", default_ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL:
        raise PushRefused(f'"ttl" must be a number of seconds, above 0 and at most {MAX_TTL}')
    remote_off = payload.get("remote_off", False)
    if not isinstance(remote_off, bool):
        raise PushRefused('"remote_off" must be true or false')
    main, files = _texts(payload)
    return Push(ident, ts, float(ttl), main, files, remote_off)


def _texts(payload: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    main, files = payload.get("config"), payload.get("files", {})
    if not isinstance(main, str) or not main.strip():
        raise PushRefused('"config" must be the main file\'s TOML text')
    if not isinstance(files, dict) or not all(isinstance(t, str) for t in files.values()):
        raise PushRefused('"files" must map each included file\'s path to its TOML text')
    if len(files) >= MAX_FILES:
        raise PushRefused(f"{len(files)} files: a push holds at most {MAX_FILES - 1} included")
    for name in files:
        problem = file_problem(name)
        if problem is not None:
            raise PushRefused(f'"files": {shown(name)}: {problem}')
    if sum(len(t.encode("utf-8", "surrogatepass")) for t in [main, *files.values()]) > MAX_BYTES:
        raise PushRefused(f"the files are larger than {MAX_BYTES} bytes in all")
    return main, dict(files)


def _below(folder: Path, file: Path) -> bool:
    """Whether ``file``'s folder, with every symbolic link followed, is ``folder`` or below."""
    return file.parent.resolve().is_relative_to(folder.resolve())


def _pushed_texts(data: bytes) -> list[str]:
    """The TOML texts in a push, however broken the rest of it is."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        return [data.decode("utf-8", "replace")]
    if not isinstance(payload, dict):
        return []
    files = payload.get("files")
    texts = [payload.get("config"), *(files.values() if isinstance(files, dict) else ())]
    return [t for t in texts if isinstance(t, str)]


def _id_of(data: bytes) -> Ident | None:
    return payload_id(data, MAX_PUSH)


def _reply(ident: Ident, state: str, ok: bool = False, **more: Any) -> Reply:
    return {"id": ident, "ok": ok, "state": state, **{k: v for k, v in more.items() if v}}
