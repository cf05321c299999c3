"""The in-process wake-up signal the sync loop waits on."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.notify import Notifier


async def test_a_wait_returns_whether_a_notification_came() -> None:
    notifier = Notifier()
    assert await notifier.wait(0.01) is False
    notifier.notify()
    assert await notifier.wait(5) is True
    assert await notifier.wait(0.01) is False  # one notification wakes one wait


async def test_a_cancel_that_meets_a_notification_ends_the_waiting_loop() -> None:
    # The sync loop waits in a loop and is stopped by a cancel. A notification that
    # lands in the same turn of the event loop as the cancel must not swallow it:
    # with Python 3.11's asyncio.wait_for it did, and stop() waited for ever.
    notifier = Notifier()
    waiting = asyncio.Event()

    async def loop() -> None:
        while True:
            waiting.set()
            await notifier.wait(60)

    task = asyncio.create_task(loop())
    await waiting.wait()
    await asyncio.sleep(0)  # one turn: the task is now inside notifier.wait()
    notifier.notify()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task}, "the cancel was lost: the loop is still waiting"
    with pytest.raises(asyncio.CancelledError):
        task.result()
