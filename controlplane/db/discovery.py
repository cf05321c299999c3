"""Discovered endpoints: observed state, kept beside the desired state.

:class:`DiscoveryRepository` stores, per Kubernetes Service, the endpoints its
watcher last saw; every replica's sync loop reads them and merges them into the
state it translates. Writing them makes no revision and no audit event. On
Postgres a write that changed something also sends ``NOTIFY turnout_revision``
(on commit), so that every replica looks again at once.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import DiscoveredEndpoints
from controlplane.domain.discovery import (
    DiscoveredEndpoint,
    ServiceKey,
    decode_discovered,
    encode_discovered,
)
from controlplane.notify import CHANNEL as NOTIFY_CHANNEL

__all__ = ["DiscoveryRepository"]


class DiscoveryRepository:
    """The discovered endpoints of each watched Service."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def of(
        self, services: Collection[ServiceKey]
    ) -> dict[ServiceKey, tuple[DiscoveredEndpoint, ...]]:
        """Return the endpoints stored for ``services`` (those with a row)."""
        if not services:
            return {}
        rows = await self._session.execute(
            select(
                DiscoveredEndpoints.namespace,
                DiscoveredEndpoints.service,
                DiscoveredEndpoints.endpoints,
            ).where(
                tuple_(DiscoveredEndpoints.namespace, DiscoveredEndpoints.service).in_(
                    list(services)
                )
            )
        )
        return {(ns, name): decode_discovered(document) for ns, name, document in rows}

    async def put(
        self,
        service: ServiceKey,
        endpoints: tuple[DiscoveredEndpoint, ...],
        observed_at: datetime,
    ) -> bool:
        """Store ``endpoints`` as ``service``'s; return whether that changed them."""
        document = encode_discovered(endpoints)
        namespace, name = service
        current = await self._session.scalar(
            select(DiscoveredEndpoints.endpoints).where(
                DiscoveredEndpoints.namespace == namespace, DiscoveredEndpoints.service == name
            )
        )
        if current == document:
            return False
        insert = postgresql.insert if self._dialect() == "postgresql" else sqlite.insert
        statement = insert(DiscoveredEndpoints).values(
            namespace=namespace, service=name, endpoints=document, observed_at=observed_at
        )
        await self._session.execute(
            statement.on_conflict_do_update(
                index_elements=[DiscoveredEndpoints.namespace, DiscoveredEndpoints.service],
                set_={"endpoints": document, "observed_at": observed_at},
            )
        )
        await self._notify()
        return True

    async def retain(self, services: Collection[ServiceKey]) -> int:
        """Delete the rows of every Service not in ``services``; return how many."""
        keys = {
            (ns, name)
            for ns, name in await self._session.execute(
                select(DiscoveredEndpoints.namespace, DiscoveredEndpoints.service)
            )
        }
        gone = keys - set(services)
        if not gone:
            return 0
        await self._session.execute(
            delete(DiscoveredEndpoints).where(
                tuple_(DiscoveredEndpoints.namespace, DiscoveredEndpoints.service).in_(list(gone))
            )
        )
        await self._notify()
        return len(gone)

    async def _notify(self) -> None:
        if self._dialect() == "postgresql":
            # Delivered to every LISTENing replica when (and only if) this commits.
            await self._session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": NOTIFY_CHANNEL, "payload": "discovery"},
            )

    def _dialect(self) -> str:
        return self._session.get_bind().dialect.name
