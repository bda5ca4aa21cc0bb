"""How the fleet's agents are started: exec'd one by one (as systemd runs them), or forked from
one process that imported the agent once (``bench._fleet_forkserver``), for a fleet larger than
the machine's memory holds exec'd.

Either way the agents run at a lower priority (``nice``) than the rest of the rig. The broker,
the simulated slaves and the watcher stand for other machines; sharing two cores with a
thousand agents whose polls are aligned to the same instant of the wall clock, they would
otherwise answer late for want of a core, not of anything the agents did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Protocol


class Launcher(Protocol):
    def start(self, config: Path, log: Path) -> int:
        """Start ``edge-agent run -c CONFIG``; returns its PID."""
        ...

    def stop_all(self, within: float) -> dict[int, int | None]:
        """Stop every agent started (SIGTERM, SIGKILL after ``within`` s): PID -> exit code,
        None for one that had to be killed."""
        ...

    def helpers(self) -> list[int]:
        """PIDs of processes beside the agents that hold fleet memory (the fork server)."""
        ...


def agent_env() -> dict[str, str]:
    """Ours, without a ``NOTIFY_SOCKET``: there is no systemd to tell."""
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ExecLauncher:
    """Each agent ``python -m agent run``, a process that imports everything itself."""

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, config: Path, log: Path) -> int:
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=agent_env(),
            )
        # after the exec, not in a preexec_fn: the first milliseconds at our priority are no harm
        os.setpriority(os.PRIO_PROCESS, process.pid, self.nice)
        self.processes[process.pid] = process
        return process.pid

    def stop_all(self, within: float) -> dict[int, int | None]:
        running = [p for p in self.processes.values() if p.poll() is None]
        for process in running:  # all at once: one by one, a thousand clean stops take minutes
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + within
        codes: dict[int, int | None] = {}
        for pid, process in self.processes.items():
            try:
                codes[pid] = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes[pid] = None
        return codes

    def helpers(self) -> list[int]:
        return []


class ForkLauncher:
    """Each agent forked from ``bench._fleet_forkserver``, which imported the agent once."""

    def __init__(self, nice: int) -> None:
        self.server = subprocess.Popen(
            [sys.executable, "-m", "bench._fleet_forkserver", str(nice)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=agent_env(),
            text=True,
        )
        assert self._reply() == "ready", "the fork server did not start"

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.server.stdin is not None
        assert self.server.stdout is not None
        return self.server.stdin, self.server.stdout

    def _reply(self) -> str:
        return self._pipes()[1].readline().strip()

    def start(self, config: Path, log: Path) -> int:
        requests, _ = self._pipes()
        requests.write(f"run\t{config}\t{log}\n")
        requests.flush()
        verb, pid = self._reply().split()
        assert verb == "started", f"fork server: {verb} {pid}"
        return int(pid)

    def stop_all(self, within: float) -> dict[int, int | None]:
        requests, replies = self._pipes()
        requests.write(f"stop\t{within}\n")
        requests.close()
        codes: dict[int, int | None] = {}
        for line in replies:
            verb, pid, code = line.split()
            if verb == "exit":
                codes[int(pid)] = None if code == "None" else int(code)
        self.server.wait(timeout=within + 30)
        return codes

    def helpers(self) -> list[int]:
        return [self.server.pid]
