"""Shadow comparisons (append, prune, read a window) and the halves that wait
for their other side across replicas. Flush, never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from controlplane.db.models import ShadowComparison, ShadowHalf

__all__ = ["ShadowRepository"]


class ShadowRepository:
    """The shadow_comparisons table."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_all(self, rows: Sequence[ShadowComparison]) -> None:
        """Insert ``rows`` and flush."""
        self._session.add_all(rows)
        await self._session.flush()

    async def prune(self, older_than: datetime, keep: int) -> int:
        """Delete comparisons from before ``older_than`` and all but the newest
        ``keep``; return how many went."""
        gone = await self._session.execute(
            delete(ShadowComparison).where(ShadowComparison.at < older_than)
        )
        removed: int = gone.rowcount  # type: ignore[attr-defined]
        # The id of the newest row beyond ``keep``, if any: it and older rows go.
        cut = await self._session.scalar(
            select(ShadowComparison.id).order_by(ShadowComparison.id.desc()).offset(keep).limit(1)
        )
        if cut is not None:
            over = await self._session.execute(
                delete(ShadowComparison).where(ShadowComparison.id <= cut)
            )
            removed += over.rowcount  # type: ignore[attr-defined]
        return removed

    async def since(
        self, model: str, since: datetime, shadow_version: str | None, limit: int
    ) -> Sequence[ShadowComparison]:
        """Return ``model``'s comparisons at or after ``since`` (only those against
        ``shadow_version`` when given), newest first, at most ``limit``, without
        their bodies (:meth:`bodies` reads those)."""
        query = (
            select(ShadowComparison)
            .where(ShadowComparison.model == model, ShadowComparison.at >= since)
            .options(
                defer(ShadowComparison.primary_body, raiseload=True),
                defer(ShadowComparison.shadow_body, raiseload=True),
            )
        )
        if shadow_version is not None:
            query = query.where(ShadowComparison.shadow_version == shadow_version)
        query = query.order_by(ShadowComparison.id.desc()).limit(limit)
        return (await self._session.scalars(query)).all()

    async def bodies(self, ids: Sequence[int]) -> dict[int, tuple[bytes | None, bytes | None]]:
        """Return the kept bodies (primary, shadow) of the comparisons ``ids``."""
        if not ids:
            return {}
        rows = await self._session.execute(
            select(
                ShadowComparison.id, ShadowComparison.primary_body, ShadowComparison.shadow_body
            ).where(ShadowComparison.id.in_(ids))
        )
        return {row.id: (row.primary_body, row.shadow_body) for row in rows}

    async def count(self) -> int:
        """Return how many comparisons are kept, all models together."""
        return int(await self._session.scalar(select(func.count(ShadowComparison.id))) or 0)

    async def add_halves(self, rows: Sequence[ShadowHalf]) -> None:
        """Insert halves that found no other half in memory, and flush."""
        self._session.add_all(rows)
        await self._session.flush()

    async def pairable(self, limit: int) -> list[tuple[ShadowHalf, ShadowHalf]]:
        """Return up to ``limit`` (primary, shadow) pairs of waiting halves."""
        both = (
            select(ShadowHalf.model, ShadowHalf.request_id)
            .group_by(ShadowHalf.model, ShadowHalf.request_id)
            .having(func.count(func.distinct(ShadowHalf.side)) == 2)
            .limit(limit)
            .subquery()
        )
        rows = (
            await self._session.scalars(
                select(ShadowHalf)
                .join(
                    both,
                    (ShadowHalf.model == both.c.model)
                    & (ShadowHalf.request_id == both.c.request_id),
                )
                .order_by(ShadowHalf.id)
            )
        ).all()
        found: dict[tuple[str, str], dict[str, ShadowHalf]] = {}
        for row in rows:
            # The later half of a side wins, as in memory.
            found.setdefault((row.model, row.request_id), {})[row.side] = row
        return [(sides["primary"], sides["shadow"]) for sides in found.values() if len(sides) == 2]

    async def take_halves(self, model: str, request_id: str) -> int:
        """Delete every waiting half of one request; return how many went. Another
        replica that took them first leaves none (its delete commits first)."""
        gone = await self._session.execute(
            delete(ShadowHalf).where(ShadowHalf.model == model, ShadowHalf.request_id == request_id)
        )
        return int(gone.rowcount)  # type: ignore[attr-defined]

    async def expire_halves(self, older_than: datetime) -> int:
        """Delete halves that waited since before ``older_than``; return how many."""
        gone = await self._session.execute(delete(ShadowHalf).where(ShadowHalf.at < older_than))
        return int(gone.rowcount)  # type: ignore[attr-defined]
