"""Event loops for tests that are plain functions: ``run`` for an async test body, ``until``
for state no event announces, and ``KitLoop``, the background loop on which the fixtures'
simulators live while the test runs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a call into the kit's loop may take before the test fails.
CALL_TIMEOUT = 30.0


#: Loop turns a task cancelled at the body's end is given to finish before it counts as leaked.
SETTLE_TURNS = 10


class LeakedTasks(AssertionError):
    """A test body returned with tasks of its own still running: something it started has no
    owner that stops it (asyncio.run would cancel them quietly, hiding the bug)."""


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run an async test body to completion; a hang fails after ``timeout`` seconds, and so
    does a body that leaves tasks running (``LeakedTasks``, naming them).

    This is how the kit's async pieces are used from a plain (non-async) test, without
    pytest-asyncio: ``run(body(), timeout=60)``.
    """

    async def owned() -> T:
        result = await asyncio.wait_for(coro, timeout)
        await _no_task_left()
        return result

    return asyncio.run(owned())


async def _no_task_left() -> None:
    for _ in range(SETTLE_TURNS):
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not left:
            return
        await asyncio.sleep(0)
    names = ", ".join(sorted(f"{t.get_name()} ({t.get_coro()!r})" for t in left))
    for task in left:
        task.cancel()
    raise LeakedTasks(f"the test left {len(left)} task(s) running: {names}")


async def until(
    condition: Callable[[], object], timeout: float, what: str, step: float = 0.05
) -> None:
    """Check ``condition()`` every ``step`` seconds until it holds, for state that another
    process or the agent's own schedule advances and no event announces (a log file, a buffer
    depth); ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(step)


class KitLoop:
    """An asyncio event loop in a thread of its own.

    Simulated slaves, serial sensors and MQTT subscribers must keep answering while a plain test
    blocks (in ``time.sleep``, a subprocess, a wait for a sample): they run here. ``call`` runs a
    coroutine on it and returns its result to the calling thread. ``close`` cancels what is left,
    shuts the default executor down and joins the thread, so that nothing outlives the test; a
    task still running then was leaked (its owner, a fixture, forgot it): ``close`` raises
    ``LeakedTasks`` naming it.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._leaked: list[str] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the kit's event loop is not running")
        return self._loop

    def start(self) -> KitLoop:
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            try:
                loop.run_forever()
                self._leaked = loop.run_until_complete(_cancel_remaining())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=main, name="edge-agent testkit loop", daemon=True)
        self._thread.start()
        started.wait()
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """Run ``coro`` on the kit's loop and wait for its result (or exception)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("KitLoop.call from the kit's own loop would deadlock: await it")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:  # TimeoutError itself from 3.11 on
            future.cancel()
            raise TimeoutError(f"the kit's loop did not finish a call in {timeout}s") from None

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Have ``callback(*args)`` called on the kit's loop (from any thread)."""
        self.loop.call_soon_threadsafe(callback, *args)

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None
        leaked, self._leaked = self._leaked, []
        if leaked:
            raise LeakedTasks(f"the kit's loop had {len(leaked)} task(s) left: {', '.join(leaked)}")


async def _cancel_remaining() -> list[str]:
    """Cancel the tasks still running after a few turns (what was being cancelled ends in
    them); their names."""
    for _ in range(SETTLE_TURNS):
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not tasks:
            return []
        await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    return sorted(f"{t.get_name()} ({t.get_coro()!r})" for t in tasks)
