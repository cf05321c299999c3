"""Named leases: one replica at a time does a job (such as the Kubernetes watch).

A lease is taken with one conditional ``UPDATE`` when it is free, expired, or
already held by the caller (and inserted when it has no row yet), on SQLite and
Postgres alike. The times come from the callers' clocks, which must agree to
well within a lease's length.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Lease

__all__ = ["LeaseRepository"]


class LeaseRepository:
    """Named leases: one holder at a time, until the lease expires."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def acquire(self, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
        """Take or renew lease ``name`` for ``holder`` until ``now + ttl_s``; return
        whether ``holder`` holds it now. Commit for it to count."""
        expires_at = now + timedelta(seconds=ttl_s)
        result = await self._session.execute(
            update(Lease)
            .where(
                Lease.name == name,
                or_(Lease.holder == holder, Lease.expires_at < now),
            )
            .values(holder=holder, expires_at=expires_at)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) == 1:
            return True
        insert = postgresql.insert if self._dialect() == "postgresql" else sqlite.insert
        inserted = await self._session.execute(
            insert(Lease)
            .values(name=name, holder=holder, expires_at=expires_at)
            .on_conflict_do_nothing(index_elements=[Lease.name])
        )
        return getattr(inserted, "rowcount", 0) == 1

    async def release(self, name: str, holder: str, now: datetime) -> None:
        """Give lease ``name`` up if ``holder`` holds it (it expires at once)."""
        await self._session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == holder)
            .values(expires_at=now)
            .execution_options(synchronize_session=False)
        )

    async def holder(self, name: str, now: datetime) -> str | None:
        """Return who holds lease ``name`` now (None: nobody)."""
        row = (
            await self._session.execute(
                select(Lease.holder, Lease.expires_at).where(Lease.name == name)
            )
        ).first()
        if row is None or row[1] < now:
            return None
        return str(row[0])

    def _dialect(self) -> str:
        return self._session.get_bind().dialect.name
