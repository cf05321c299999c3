"""cancel_and_wait: every task cancelled, then each waited for."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.tasks import cancel_and_wait


async def test_every_task_is_cancelled_and_ended_before_it_returns() -> None:
    started = asyncio.Event()
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    tasks = [asyncio.create_task(forever(name)) for name in ("a", "b")]
    await started.wait()
    await cancel_and_wait(tasks[0], None, tasks[1])
    assert sorted(ended) == ["a", "b"]
    assert all(task.cancelled() for task in tasks)


async def test_an_error_other_than_cancellation_is_raised() -> None:
    waiting = asyncio.Event()

    async def fails_on_cancel() -> None:
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_on_cancel())
    await waiting.wait()
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)


async def test_a_task_already_done_is_fine() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await cancel_and_wait(task)
