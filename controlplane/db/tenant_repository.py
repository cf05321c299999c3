"""Tenants, their credentials and the credential signing key. Flush, never commit."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import SigningKey, Tenant, TenantCredential

__all__ = ["TenantRepository"]


class TenantRepository:
    """Tenants by name, their credentials, and the signing key."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, name: str) -> Tenant | None:
        """Return the tenant called ``name``, or None."""
        return await self._session.scalar(select(Tenant).where(Tenant.name == name))

    async def all(self) -> Sequence[Tenant]:
        """Return every tenant, sorted by name."""
        return (await self._session.scalars(select(Tenant).order_by(Tenant.name))).all()

    async def add(self, tenant: Tenant) -> Tenant:
        """Insert ``tenant`` and flush, so a duplicate name raises here."""
        self._session.add(tenant)
        await self._session.flush()
        return tenant

    async def delete(self, tenant: Tenant) -> None:
        """Delete ``tenant``; its credentials go with it."""
        await self._session.execute(delete(Tenant).where(Tenant.id == tenant.id))

    async def flush(self) -> None:
        """Flush pending changes to the database."""
        await self._session.flush()

    async def credentials(self, tenant: Tenant) -> Sequence[TenantCredential]:
        """Return the credentials of ``tenant`` (revoked ones too), oldest first."""
        return (
            await self._session.scalars(
                select(TenantCredential)
                .where(TenantCredential.tenant_id == tenant.id)
                .order_by(TenantCredential.id)
            )
        ).all()

    async def credential(self, tenant: Tenant, credential_id: int) -> TenantCredential | None:
        """Return one credential of ``tenant``, or None."""
        return await self._session.scalar(
            select(TenantCredential).where(
                TenantCredential.tenant_id == tenant.id, TenantCredential.id == credential_id
            )
        )

    async def add_credential(self, credential: TenantCredential) -> TenantCredential:
        """Insert ``credential`` and flush."""
        self._session.add(credential)
        await self._session.flush()
        return credential

    async def signing_key(self) -> SigningKey | None:
        """Return the newest signing key, or None before the first one is made."""
        return await self._session.scalar(
            select(SigningKey).order_by(SigningKey.id.desc()).limit(1)
        )

    async def add_signing_key(self, key: SigningKey) -> SigningKey:
        """Insert ``key`` and flush."""
        self._session.add(key)
        await self._session.flush()
        return key
