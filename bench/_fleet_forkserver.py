"""A fork server for a large fleet: imports the agent once, then forks one ``edge-agent run``
per request.

An agent's memory is mostly the interpreter and the libraries it imports (of its ~21 MiB of own
pages, ~20 are there before its first reading). Exec'd one by one, a thousand agents import them
a thousand times; forked from here, the pages stay shared until a child writes to them (Python's
reference counts do write to many). Each child is still a process of its own running the
agent's own ``run``, with its own event loop, sockets, buffer and random draws (``random``
reseeds itself in a forked child; the uplink's generator is made after the fork).

    python -m bench._fleet_forkserver NICE   # each child at that niceness

Protocol, one line at a time on stdin / stdout:
    run<TAB>CONFIG<TAB>LOG  ->  started PID
    stop<TAB>SECONDS        ->  exit PID CODE (one line per child), then the server exits
End of stdin is a stop with 20 s.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import sys
import time
import traceback
from typing import NoReturn

import agent.cli.main

# What `edge-agent run` of a Modbus TCP fleet imports is imported here, once: the agent's modules
# import most of it; the rest a child imported itself after the fork (by ``sys.modules``).
import agent.service.app
from agent.registry import load_driver

STOP_WITHIN = 20.0


def child(config: str, log: str) -> NoReturn:
    """Become ``edge-agent run -c CONFIG``, its output in LOG."""
    code = 1
    try:
        os.nice(int(sys.argv[1]))
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # the server's requests are not the agent's
        os.close(null)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code = agent.cli.main.main(["run", "-c", config])
    except BaseException:  # anything at all: the child must never return into the server
        traceback.print_exc()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def reap(children: dict[int, int | None]) -> None:
    """Note the exit codes of children that ended (a negative code: killed by that signal)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children[pid] = os.waitstatus_to_exitcode(status)


def stop(children: dict[int, int | None], within: float) -> None:
    """SIGTERM to every child still running (a clean stop: the agent says offline); SIGKILL to
    those still running ``within`` seconds later."""
    running = [pid for pid, code in children.items() if code is None]
    for pid in running:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + within
    while any(children[pid] is None for pid in running) and time.monotonic() < deadline:
        time.sleep(0.05)
        reap(children)
    for pid in running:
        if children[pid] is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            children[pid] = None  # reported as not stopped


def requests() -> tuple[str, list[str]]:
    """The next request line, split at tabs; ("stop", ...) at the end of stdin."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 1)  # byte by byte: nothing is read ahead of the fork
        if not chunk:
            return "stop", [str(STOP_WITHIN)]
        line += chunk
    verb, *args = line.decode().rstrip("\n").split("\t")
    return verb, args


def serve() -> None:
    children: dict[int, int | None] = {}
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([0], [], [], 1.0)
        reap(children)
        if not readable:
            continue
        verb, args = requests()
        if verb == "stop":
            stop(children, float(args[0]))
            break
        pid = os.fork()
        if pid == 0:
            child(*args)
        children[pid] = None
        print(f"started {pid}", flush=True)
    for pid, code in children.items():
        print(f"exit {pid} {code}", flush=True)


def preload() -> None:
    """Import, here, what each child would otherwise import (and keep) itself."""
    import concurrent.futures.thread  # noqa: F401  (asyncio's resolver threads)
    import encodings.idna  # noqa: F401
    import unicodedata  # noqa: F401

    assert agent.app  # imported above for its own modules
    load_driver("modbus")  # the driver's modules, through the entry point the agent uses


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C is the children's; we report on them
    preload()
    gc.collect()
    gc.freeze()  # the collector in a child leaves these objects, and their pages, alone
    serve()


if __name__ == "__main__":
    main()
