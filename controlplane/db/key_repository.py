"""API keys and idempotency records."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import ApiKey, IdempotencyRecord
from controlplane.domain.clock import utcnow

__all__ = ["ApiKeyRepository", "IdempotencyRepository"]


class ApiKeyRepository:
    """API keys, found by the SHA-256 of the key."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def active_by_hash(self, key_hash: str, now: datetime | None = None) -> ApiKey | None:
        """Return the key whose SHA-256 is ``key_hash`` if it is neither revoked nor
        expired at ``now`` (by default the current time), else None."""
        now = now or utcnow()
        return await self._session.scalar(
            select(ApiKey).where(
                ApiKey.key_hash == key_hash,
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            )
        )

    async def get(self, key_id: int) -> ApiKey | None:
        """Return key ``key_id`` (revoked or not), or None."""
        return await self._session.get(ApiKey, key_id)

    async def all(self) -> Sequence[ApiKey]:
        """Return every key, oldest first."""
        return (await self._session.scalars(select(ApiKey).order_by(ApiKey.id))).all()

    async def add(self, key: ApiKey) -> ApiKey:
        """Insert ``key`` and flush."""
        self._session.add(key)
        await self._session.flush()
        return key

    async def flush(self) -> None:
        """Flush pending changes."""
        await self._session.flush()


class IdempotencyRepository:
    """Stored first responses, per API key and ``Idempotency-Key``."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, api_key_id: int, key: str) -> IdempotencyRecord | None:
        """Return the record of ``key`` for this API key, or None."""
        return await self._session.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key
            )
        )

    async def add(self, record: IdempotencyRecord) -> None:
        """Insert ``record`` and flush."""
        self._session.add(record)
        await self._session.flush()
