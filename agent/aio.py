"""Small asyncio helpers the agent's owners share."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

CANCEL_RETRY = 0.5


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True when it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        return False
    return True


async def cancel_and_wait(*tasks: asyncio.Task[object]) -> None:
    """Cancel ``tasks`` and wait for them to end.

    A cancellation can be lost inside a library (``asyncio.wait_for`` before Python 3.12 drops it
    when the awaited call finishes at the same moment, as a refused connect does), so a task
    still running after a moment is cancelled again.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_RETRY)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed while stopping: %s", task.get_name(), task.exception())
