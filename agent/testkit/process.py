"""``edge-agent`` run as a real child process, as systemd would run it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path


def cli(
    *args: str, cwd: Path | None = None, timeout: float = 60, env: Mapping[str, str] = {}
) -> subprocess.CompletedProcess[str]:
    """Run ``edge-agent ARGS`` to completion and capture its output; ``env`` is added to ours."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
        env={**os.environ, **env},
    )


async def cli_async(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """``edge-agent ARGS`` without blocking the event loop (for tests serving slaves meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class AgentProcess:
    """``edge-agent run -c CONFIG`` in the background; stopped by its PID."""

    def __init__(self, config: Path, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.log = config.with_suffix(".log")
        self.env = dict(env or {})
        self.returncode: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None

    def start(self) -> None:
        """Start it with a ``NOTIFY_SOCKET`` of our own, as systemd would."""
        # a short path of its own: unix socket paths are limited to 108 bytes
        address = tempfile.mkdtemp(prefix="edge-agent-") + "/notify"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(address)
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": address},
            )

    def wait_notified(self, state: str = "READY=1", timeout: float = 20) -> None:
        """Block until the agent sends ``state`` to its notify socket; ``TimeoutError`` (with
        its output) when it does not in ``timeout`` seconds, or exits first."""
        assert self._notify is not None, "agent not started"
        deadline = time.monotonic() + timeout
        while True:
            # in short steps, so that an agent that exits is not waited for until the deadline
            self._notify.settimeout(max(0.01, min(0.25, deadline - time.monotonic())))
            try:
                if state in self._notify.recv(4096).decode().split("\n"):
                    return
            except TimeoutError:
                code = self.poll()
                if code is not None:
                    raise TimeoutError(
                        f"agent exited with {code} before notifying {state}:\n{self.output()}"
                    ) from None
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"agent did not notify {state} in {timeout}s:\n{self.output()}"
                    ) from None

    def poll(self) -> int | None:
        """The exit code if it has exited (or was never started: None), else None."""
        return self._process.poll() if self._process is not None else self.returncode

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        assert self._process is not None, "agent not started"
        self._process.send_signal(sig)

    def wait(self, timeout: float = 20) -> int:
        """The exit code; an agent that does not exit in time is killed (and the test fails)."""
        assert self._process is not None, "agent not started"
        try:
            code = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=timeout)
            raise
        self._process = None
        self.returncode = code
        if self._notify is not None:
            address = Path(self._notify.getsockname())
            self._notify.close()
            shutil.rmtree(address.parent, ignore_errors=True)
            self._notify = None
        return code

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code."""
        if self._process is None:
            return 0
        self._process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
