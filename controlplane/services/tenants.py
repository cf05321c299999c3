"""Tenants of inference traffic as a service: who may call which model, how often,
and with which credentials.

Every change runs in the caller's transaction like a model change: it appends
one audit event and bumps the config revision (:func:`record_change`), so the
new grants, rate limits and revocations reach every Envoy over xDS. A model is
protected (callers need a credential of a tenant granted it) as soon as any
tenant names it; models no tenant names stay open.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import SigningKey, Tenant, TenantCredential
from controlplane.db.repositories import ModelRepository
from controlplane.db.tenant_repository import TenantRepository
from controlplane.domain.audit import ActionContext, AuditAction
from controlplane.domain.clock import utcnow
from controlplane.domain.credentials import (
    ALGORITHM,
    generate_signing_key,
    issue_token,
    new_jti,
    new_subject,
)
from controlplane.domain.errors import Conflict, InvalidInput, NotFound
from controlplane.services.changes import record_change

__all__ = ["TenantService", "credential_document", "tenant_document"]


def tenant_document(tenant: Tenant) -> dict[str, Any]:
    """Return the audit-log JSON of a tenant."""
    return {
        "name": tenant.name,
        "models": sorted(tenant.models),
        "rate_limit": {
            "requests_per_second": tenant.requests_per_second,
            "burst": tenant.burst,
        },
    }


def credential_document(tenant: str, credential: TenantCredential) -> dict[str, Any]:
    """Return the audit-log JSON of a credential: its id, never the token."""
    return {
        "id": credential.id,
        "tenant": tenant,
        "jti": credential.jti,
        "revoked": credential.revoked_at is not None,
    }


class TenantService:
    """Create, change and delete tenants; issue and revoke their credentials."""

    def __init__(self, session: AsyncSession, context: ActionContext) -> None:
        self._session = session
        self._context = context
        self._tenants = TenantRepository(session)

    async def list_tenants(self) -> Sequence[Tenant]:
        """Return every tenant, sorted by name."""
        return await self._tenants.all()

    async def get_tenant(self, name: str) -> Tenant:
        """Return tenant ``name``; raise NotFound if there is none."""
        tenant = await self._tenants.get(name)
        if tenant is None:
            raise NotFound(f"tenant {name!r} does not exist")
        return tenant

    async def create_tenant(
        self, name: str, models: Sequence[str], requests_per_second: int, burst: int
    ) -> Tenant:
        """Create a tenant; Conflict if the name is taken, InvalidInput for unknown models."""
        if await self._tenants.get(name) is not None:
            raise Conflict(f"tenant {name!r} already exists")
        await self._check_models(models)
        await self._signing_key()  # Envoy needs the public key before any model is protected.
        tenant = Tenant(
            name=name,
            subject=new_subject(),
            models=sorted(set(models)),
            requests_per_second=requests_per_second,
            burst=burst,
        )
        try:
            async with self._session.begin_nested():
                await self._tenants.add(tenant)
        except IntegrityError as exc:
            raise Conflict(f"tenant {name!r} already exists") from exc
        await self._record(AuditAction.TENANT_CREATE, name, None, tenant_document(tenant))
        return tenant

    async def update_tenant(
        self,
        name: str,
        *,
        models: Sequence[str] | None = None,
        requests_per_second: int | None = None,
        burst: int | None = None,
    ) -> Tenant:
        """Replace the models and/or the rate limit of tenant ``name``."""
        tenant = await self.get_tenant(name)
        before = tenant_document(tenant)
        if models is not None:
            await self._check_models(models)
            tenant.models = sorted(set(models))
        if requests_per_second is not None:
            tenant.requests_per_second = requests_per_second
        if burst is not None:
            tenant.burst = burst
        await self._tenants.flush()
        await self._record(AuditAction.TENANT_UPDATE, name, before, tenant_document(tenant))
        return tenant

    async def delete_tenant(self, name: str) -> None:
        """Delete tenant ``name``; its credentials stop working with it."""
        tenant = await self.get_tenant(name)
        before = tenant_document(tenant)
        await self._tenants.delete(tenant)
        await self._record(AuditAction.TENANT_DELETE, name, before, None)

    async def list_credentials(self, name: str) -> Sequence[TenantCredential]:
        """Return the credentials of tenant ``name`` (without tokens), oldest first."""
        return await self._tenants.credentials(await self.get_tenant(name))

    async def issue_credential(self, name: str) -> tuple[TenantCredential, str]:
        """Issue a credential to tenant ``name``; return its row and the token, which
        exists only in this return value."""
        tenant = await self.get_tenant(name)
        key = await self._signing_key()
        now = utcnow()
        credential = await self._tenants.add_credential(
            TenantCredential(
                tenant_id=tenant.id,
                jti=new_jti(),
                created_at=now,
                created_by=self._context.actor,
            )
        )
        token = issue_token(
            private_pem=key.private_key,
            kid=key.kid,
            subject=tenant.subject,
            tenant=tenant.name,
            jti=credential.jti,
            issued_at=now,
        )
        await record_change(
            self._session,
            self._context,
            action=AuditAction.CREDENTIAL_CREATE,
            resource_type="tenant_credential",
            resource_id=f"{name}/{credential.id}",
            before=None,
            after=credential_document(name, credential),
            access=True,
        )
        return credential, token

    async def revoke_credential(self, name: str, credential_id: int) -> TenantCredential:
        """Revoke one credential; NotFound if the tenant has no such active credential."""
        tenant = await self.get_tenant(name)
        credential = await self._tenants.credential(tenant, credential_id)
        if credential is None or credential.revoked_at is not None:
            raise NotFound(f"tenant {name!r} has no active credential with id {credential_id}")
        before = credential_document(name, credential)
        credential.revoked_at = utcnow()
        await self._tenants.flush()
        await record_change(
            self._session,
            self._context,
            action=AuditAction.CREDENTIAL_REVOKE,
            resource_type="tenant_credential",
            resource_id=f"{name}/{credential.id}",
            before=before,
            after=credential_document(name, credential),
            access=True,
        )
        return credential

    async def _check_models(self, models: Sequence[str]) -> None:
        repository = ModelRepository(self._session)
        unknown = sorted({m for m in models if await repository.get(m) is None})
        if unknown:
            raise InvalidInput(
                {"message": f"no model(s) named {unknown}", "unknown_models": unknown}
            )

    async def _signing_key(self) -> SigningKey:
        key = await self._tenants.signing_key()
        if key is None:
            material = generate_signing_key()
            key = await self._tenants.add_signing_key(
                SigningKey(
                    kid=material.kid,
                    algorithm=ALGORITHM,
                    private_key=material.private_pem,
                    public_jwk=material.public_jwk,
                    created_at=utcnow(),
                )
            )
        return key

    async def _record(
        self, action: str, name: str, before: dict[str, Any] | None, after: dict[str, Any] | None
    ) -> None:
        await record_change(
            self._session,
            self._context,
            action=action,
            resource_type="tenant",
            resource_id=name,
            before=before,
            after=after,
            access=True,
        )
