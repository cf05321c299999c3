"""Shadow comparisons: append, prune, read a window. Flush, never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import ShadowComparison

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
        ``shadow_version`` when given), newest first, at most ``limit``."""
        query = select(ShadowComparison).where(
            ShadowComparison.model == model, ShadowComparison.at >= since
        )
        if shadow_version is not None:
            query = query.where(ShadowComparison.shadow_version == shadow_version)
        query = query.order_by(ShadowComparison.id.desc()).limit(limit)
        return (await self._session.scalars(query)).all()

    async def count(self) -> int:
        """Return how many comparisons are kept, all models together."""
        return int(await self._session.scalar(select(func.count(ShadowComparison.id))) or 0)
