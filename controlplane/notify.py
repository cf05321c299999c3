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
import time
from typing import Any

from sqlalchemy.engine import make_url

from controlplane.metrics import ControlPlaneMetrics
from controlplane.tasks import cancel_and_wait

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
        """Wait up to ``timeout`` seconds for a notification; return whether one came.

        ``asyncio.timeout``, not ``wait_for``: on Python 3.11 a cancel that meets a
        notification in the same turn is lost inside ``wait_for``, and the loop
        waiting here (the sync loop) would not stop."""
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True


class PostgresListener:
    """Forwards Postgres ``NOTIFY turnout_revision`` to a :class:`Notifier`, and
    keeps doing so across database restarts.

    The LISTEN connection is watched (asyncpg reports a closed connection, and a
    ``SELECT 1`` every ``check_interval_s`` catches one that went silent). When
    it drops, the listener logs ``notify.listener_down``, sets
    ``turnout_notify_listener_up`` to 0 and reconnects with exponential backoff
    (``backoff_s`` doubling up to ``max_backoff_s``). Once it listens again it
    logs ``notify.listener_restored``, counts the reconnect, and wakes the
    notifier: notifications sent while it was down are lost, so the sync must
    read the revision again.
    """

    def __init__(
        self,
        database_url: str,
        notifier: Notifier,
        *,
        metrics: ControlPlaneMetrics | None = None,
        connect_timeout_s: float = 5.0,
        check_interval_s: float = 5.0,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._notifier = notifier
        self._metrics = metrics
        self._connect_timeout_s = connect_timeout_s
        self._check_interval_s = check_interval_s
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._connection: Any = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is open now."""
        return self._connection is not None and not self._lost.is_set()

    async def start(self) -> None:
        """LISTEN on the revision channel and keep the connection open; if the
        database cannot be reached now, keep trying in the background."""
        try:
            await self._connect()
        except Exception as exc:
            self._down(exc)
        self._task = asyncio.create_task(self._keep_listening(), name="turnout-listen")

    async def _connect(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(self._dsn, timeout=self._connect_timeout_s)
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            connection.terminate()
            raise
        self._connection, self._lost = connection, lost
        if self._metrics is not None:
            self._metrics.listener_up.set(1)

    def _down(self, exc: BaseException | None) -> None:
        self._lost.set()
        if self._metrics is not None:
            self._metrics.listener_up.set(0)
        log.warning(
            "notify.listener_down",
            extra={
                "channel": CHANNEL,
                "error_type": type(exc).__name__ if exc else None,
                "error": str(exc)[:160] if exc else "connection closed",
            },
        )

    async def _keep_listening(self) -> None:
        while True:
            if self._connection is not None:
                exc = await self._watch()
                self._down(exc)
                self._connection.terminate()
                self._connection = None
            down_since = time.monotonic()
            await self._reconnect()
            if self._metrics is not None:
                self._metrics.listener_reconnects.inc()
            log.info(
                "notify.listener_restored",
                extra={"channel": CHANNEL, "down_s": round(time.monotonic() - down_since, 2)},
            )
            self._notifier.notify()

    async def _watch(self) -> BaseException | None:
        """Return when the connection is lost: the error that showed it, or None."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self._check_interval_s)
                return None
            except TimeoutError:
                pass
            try:
                await self._connection.fetchval("SELECT 1", timeout=self._connect_timeout_s)
            except Exception as exc:
                return exc

    async def _reconnect(self) -> None:
        delay = self._backoff_s
        while True:
            try:
                await self._connect()
                return
            except Exception as exc:
                log.info(
                    "notify.listener_retry",
                    extra={"error_type": type(exc).__name__, "retry_in_s": delay},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff_s)

    def _on_notify(self, *_args: Any) -> None:
        self._notifier.notify()

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        await cancel_and_wait(self._task)
        self._task = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), self._connect_timeout_s)
            self._connection.terminate()
            self._connection = None
