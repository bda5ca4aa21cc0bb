"""The test kit fails a test that leaves asyncio tasks running: a task with no owner to stop it
is a bug the agent's rule (every task has an owner that cancels it) forbids."""

from __future__ import annotations

import asyncio

import pytest

from agent.testkit import run
from agent.testkit.aio import KitLoop, LeakedTasks


def test_a_body_that_leaves_a_task_running_fails_naming_it() -> None:
    async def leaky() -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="forgotten")

    with pytest.raises(LeakedTasks, match=r"1 task\(s\) running: forgotten"):
        run(leaky(), timeout=5)


def test_a_task_cancelled_at_the_end_may_finish() -> None:
    async def tidy() -> int:
        task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
        task.cancel()  # cancelled, not awaited: it ends within a loop turn or two
        return 7

    assert run(tidy(), timeout=5) == 7


def test_a_body_that_awaits_its_tasks_passes() -> None:
    async def owner() -> list[int]:
        tasks = [asyncio.get_running_loop().create_task(asyncio.sleep(0, n)) for n in range(3)]
        return list(await asyncio.gather(*tasks))

    assert run(owner(), timeout=5) == [0, 1, 2]


def test_the_kit_loop_names_a_task_left_behind_when_closed() -> None:
    kit = KitLoop().start()

    async def forget() -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="orphan")

    kit.call(forget())
    with pytest.raises(LeakedTasks, match="orphan"):
        kit.close()


def test_the_kit_loop_closes_quietly_when_its_tasks_are_done() -> None:
    kit = KitLoop().start()
    assert kit.call(asyncio.sleep(0, "done")) == "done"
    kit.close()  # raises nothing
