"""API keys as a service: authenticate a caller, create, list and revoke keys.

Used by the admin API and by ``turnout keys create`` (straight on the database,
for bootstrapping while the API is down). Key changes are audited like every
other change, but bump no config revision: they are not desired state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.audit_repository import AuditRepository
from controlplane.db.key_repository import ApiKeyRepository
from controlplane.db.models import ApiKey
from controlplane.domain.audit import ActionContext, AuditAction
from controlplane.domain.clock import utcnow
from controlplane.domain.errors import NotFound
from controlplane.domain.keys import (
    Principal,
    Role,
    generate_key,
    hash_key,
    is_well_formed,
    key_display_prefix,
)

__all__ = ["KeyService", "authenticate", "key_document"]


async def authenticate(session: AsyncSession, key: str | None) -> Principal | None:
    """Return the caller behind ``key``, or None when it is missing, malformed,
    unknown or revoked. A malformed key costs no database lookup."""
    if not key or not is_well_formed(key):
        return None
    row = await ApiKeyRepository(session).active_by_hash(hash_key(key))
    if row is None:
        return None
    return Principal(key_id=row.id, name=row.name, role=Role(row.role))


def key_document(key: ApiKey) -> dict[str, Any]:
    """Return the audit-log JSON of a key: never the key itself."""
    return {
        "id": key.id,
        "name": key.name,
        "role": key.role,
        "prefix": key.prefix,
        "revoked": key.revoked_at is not None,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
    }


class KeyService:
    """Create, list and revoke API keys, each change audited."""

    def __init__(self, session: AsyncSession, context: ActionContext) -> None:
        self._session = session
        self._context = context
        self._keys = ApiKeyRepository(session)

    async def create(
        self, name: str, role: Role, *, expires_at: datetime | None = None
    ) -> tuple[ApiKey, str]:
        """Create a key that stops working at ``expires_at`` (None: never); return its
        row and the key itself (the only time it exists)."""
        key = generate_key()
        row = await self._keys.add(
            ApiKey(
                name=name,
                role=role.value,
                prefix=key_display_prefix(key),
                key_hash=hash_key(key),
                created_at=utcnow(),
                created_by=self._context.actor,
                expires_at=expires_at,
            )
        )
        await AuditRepository(self._session).append(
            self._context.entry(AuditAction.KEY_CREATE, "key", str(row.id), after=key_document(row))
        )
        return row, key

    async def list(self) -> Sequence[ApiKey]:
        """Return every key, revoked ones included, oldest first."""
        return await self._keys.all()

    async def revoke(self, key_id: int) -> ApiKey:
        """Revoke key ``key_id``; NotFound if it does not exist or is revoked already."""
        row = await self._keys.get(key_id)
        if row is None or row.revoked_at is not None:
            raise NotFound(f"there is no active key with id {key_id}")
        before = key_document(row)
        row.revoked_at = utcnow()
        await self._keys.flush()
        await AuditRepository(self._session).append(
            self._context.entry(
                AuditAction.KEY_REVOKE, "key", str(row.id), before=before, after=key_document(row)
            )
        )
        return row
