"""Kubernetes discovery for the whole deployment: one replica watches, every replica serves.

:class:`DiscoveryLeader` runs on every replica. Every ``lease_s / 3`` seconds it
takes or renews the ``kubernetes-discovery`` lease (a conditional UPDATE, see
:class:`~controlplane.db.leases.LeaseRepository`). The replica that holds it
watches the EndpointSlices of every Service the desired state names
(:class:`~controlplane.discovery.watch.Watches`) and stores each Service's
endpoints in ``discovered_endpoints``; the commit wakes every replica (Postgres
NOTIFY, or this process's notifier), whose sync loop merges them into the state
it translates. A replica that loses the lease (its database writes failed for a
whole lease, or another took it after it expired) stops watching; one that
stops gives the lease up so another takes over at once.

Discovered endpoints are observed state: storing them makes no revision and no
audit event. While the API server cannot be reached the stored endpoints stand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.discovery import DiscoveryRepository
from controlplane.db.engine import write_transaction
from controlplane.db.leases import LeaseRepository
from controlplane.discovery.watch import Watches
from controlplane.domain.clock import utcnow
from controlplane.domain.discovery import DiscoveredEndpoint, ServiceKey, referenced_services
from controlplane.domain.state import DesiredState
from controlplane.tasks import cancel_and_wait

__all__ = ["LEASE", "DiscoveryLeader"]

LEASE = "kubernetes-discovery"
WRITE_TIMEOUT_S = 5.0
CHECK_INTERVAL_S = 0.5
log = logging.getLogger(__name__)


class DiscoveryLeader:
    """Holds the discovery lease when it can, and watches while it holds it."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        watches: Callable[[], Awaitable[Watches]],
        state: Callable[[], DesiredState | None],
        wake: Callable[[], None],
        *,
        lease_s: float = 15.0,
        holder: str | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._make_watches = watches
        self._state = state
        self._wake = wake
        self._lease_s = lease_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.watches: Watches | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        """Whether this replica watches now."""
        return self.watches is not None

    def start(self) -> None:
        """Start taking the lease and watching in the background."""
        self._task = asyncio.create_task(self.run(), name="turnout-discovery")

    async def run(self) -> None:
        """Renew the lease, and follow the named Services while holding it, forever.

        Between renewals it looks at the state every half second, so a Service that
        a new version names is watched at once, not at the next renewal."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "discovery.step_failed",
                    extra={"error_type": type(exc).__name__, "error": str(exc)[:200]},
                )
            renew_at = loop.time() + self._lease_s / 3
            followed = self._services()
            while loop.time() < renew_at:
                await asyncio.sleep(min(CHECK_INTERVAL_S, max(0.0, renew_at - loop.time())))
                if self.watches is not None and self._services() != followed:
                    break

    async def step(self) -> None:
        """Take or renew the lease once; start, follow or stop the watches."""
        try:
            async with self._sessionmaker() as session, self._writing(session):
                held = await LeaseRepository(session).acquire(
                    LEASE, self.holder, self._lease_s, utcnow()
                )
        except Exception:
            # Unsure whether it still holds the lease: stop before another starts.
            await self._stop_watching("database_unreachable")
            raise
        if not held:
            await self._stop_watching("lease_lost")
            return
        services = self._services()
        if self.watches is None:
            try:
                self.watches = await self._make_watches()
            except Exception:
                # Let another replica, perhaps better configured, take it.
                await self._release()
                raise
            log.info("discovery.lease_acquired", extra={"holder": self.holder})
        self.watches.follow(services)
        # A report that failed (the database was down) is stored now, not at the next event.
        await self.watches.flush()
        async with self._sessionmaker() as session, self._writing(session):
            removed = await DiscoveryRepository(session).retain(services)
        if removed:
            self._wake()

    def _writing(self, session: AsyncSession) -> AbstractAsyncContextManager[None]:
        # On SQLite: the write lock from the start, in turn with the API's writers.
        return write_transaction(session, timeout_s=WRITE_TIMEOUT_S)

    def _services(self) -> frozenset[ServiceKey]:
        state = self._state()
        return referenced_services(state) if state is not None else frozenset()

    async def report(self, service: ServiceKey, endpoints: tuple[DiscoveredEndpoint, ...]) -> None:
        """Store a Service's endpoints (the watches call this) and wake the sync."""
        async with self._sessionmaker() as session, self._writing(session):
            changed = await DiscoveryRepository(session).put(service, endpoints, utcnow())
        if changed:
            log.info(
                "discovery.endpoints_stored",
                extra={
                    "namespace": service[0],
                    "service": service[1],
                    "endpoints": len(endpoints),
                },
            )
            self._wake()

    async def _stop_watching(self, reason: str) -> None:
        if self.watches is None:
            return
        watches, self.watches = self.watches, None
        await watches.stop()
        log.warning("discovery.lease_lost", extra={"holder": self.holder, "reason": reason})

    async def stop(self) -> None:
        """Stop watching and give the lease up, so that another replica takes over."""
        await cancel_and_wait(self._task)
        self._task = None
        if self.watches is not None:
            watches, self.watches = self.watches, None
            await watches.stop()
            await self._release()

    async def _release(self) -> None:
        with contextlib.suppress(Exception):
            async with self._sessionmaker() as session, self._writing(session):
                await LeaseRepository(session).release(LEASE, self.holder, utcnow())
        log.info("discovery.lease_released", extra={"holder": self.holder})
