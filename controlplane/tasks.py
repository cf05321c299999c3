"""Stopping background tasks: cancel, then wait until each has ended."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Task[object] | asyncio.Future[object] | None) -> None:
    """Cancel every task given (``None`` is skipped), then wait for each to end.

    All are cancelled before the first wait, so they wind down together. A task's
    cancellation is swallowed; any other error it ends with is raised.
    """
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
