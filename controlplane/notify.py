"""Wake-ups for control-plane replicas when a new config revision commits.

A notification only says "look again": replicas re-read state by revision,
and also poll on a timer, so a lost notification delays a push but never
loses it. In one process the signal is an ``asyncio.Event``; across replicas
on Postgres it is ``LISTEN/NOTIFY`` on the channel ``turnout_revision``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy.engine import make_url

__all__ = ["CHANNEL", "Notifier", "PostgresListener"]

CHANNEL = "turnout_revision"
log = logging.getLogger(__name__)


class Notifier:
    """An in-process wake-up signal; many notifications may fold into one."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake the waiter (safe to call any number of times)."""
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification; return whether one came."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True


class PostgresListener:
    """Forwards Postgres ``NOTIFY turnout_revision`` to a :class:`Notifier`."""

    def __init__(self, database_url: str, notifier: Notifier) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._notifier = notifier
        self._connection: Any = None

    async def start(self) -> None:
        """Open a dedicated connection and LISTEN on the revision channel."""
        import asyncpg

        self._connection = await asyncpg.connect(self._dsn)
        await self._connection.add_listener(CHANNEL, self._on_notify)

    def _on_notify(self, *_args: Any) -> None:
        self._notifier.notify()

    async def stop(self) -> None:
        """Close the listening connection."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None
