"""/v1/tenants: tenants of inference traffic and their credentials.

GETs need the ``read`` permission, changes ``write`` (operators and admins).
Envoy enforces what is set here: see ``controlplane/xds/tenancy.py``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response, status

from controlplane.api.deps import TenantServiceDep, require_for_method
from controlplane.api.schemas import (
    CredentialCreated,
    CredentialOut,
    ErrorBody,
    Name,
    RateLimit,
    TenantCreate,
    TenantOut,
    TenantPatch,
)
from controlplane.api.unit_of_work import audited
from controlplane.db.models import Tenant, TenantCredential
from controlplane.domain.audit import AuditAction
from controlplane.domain.keys import Permission

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/tenants",
    tags=["tenants"],
    dependencies=[require_for_method(Permission.READ, Permission.WRITE)],
    responses={
        401: {"model": ErrorBody, "description": "no valid API key"},
        403: {"model": ErrorBody, "description": "the key's role lacks the permission"},
        404: {"model": ErrorBody, "description": "unknown tenant or credential"},
        413: {"model": ErrorBody, "description": "request body too large"},
        422: {"model": ErrorBody, "description": "invalid input (an unknown model, say)"},
    },
)

CredentialId = Annotated[int, Path(ge=1, le=2**62)]


def _tenant_out(row: Tenant) -> TenantOut:
    return TenantOut(
        name=row.name,
        models=sorted(row.models),
        rate_limit=RateLimit(requests_per_second=row.requests_per_second, burst=row.burst),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _credential_out(tenant: str, row: TenantCredential) -> CredentialOut:
    return CredentialOut(
        id=row.id,
        tenant=tenant,
        jti=row.jti,
        created_at=row.created_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorBody, "description": "the name is taken"}},
)
@audited(AuditAction.TENANT_CREATE, "tenant", id_field="name")
async def create_tenant(
    body: TenantCreate,
    service: TenantServiceDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> TenantOut:
    """Create a tenant. The models it names become tenants-only."""
    row = await service.create_tenant(
        body.name, body.models, body.rate_limit.requests_per_second, body.rate_limit.burst
    )
    return _tenant_out(row)


@router.get("")
async def list_tenants(service: TenantServiceDep) -> list[TenantOut]:
    """List every tenant, sorted by name."""
    return [_tenant_out(row) for row in await service.list_tenants()]


@router.get("/{tenant}")
async def get_tenant(tenant: Name, service: TenantServiceDep) -> TenantOut:
    """Show one tenant."""
    return _tenant_out(await service.get_tenant(tenant))


@router.patch("/{tenant}")
@audited(AuditAction.TENANT_UPDATE, "tenant")
async def update_tenant(tenant: Name, body: TenantPatch, service: TenantServiceDep) -> TenantOut:
    """Replace a tenant's models and/or its rate limit."""
    rate = body.rate_limit
    row = await service.update_tenant(
        tenant,
        models=body.models,
        requests_per_second=rate.requests_per_second if rate else None,
        burst=rate.burst if rate else None,
    )
    return _tenant_out(row)


@router.delete("/{tenant}", status_code=status.HTTP_204_NO_CONTENT)
@audited(AuditAction.TENANT_DELETE, "tenant")
async def delete_tenant(tenant: Name, service: TenantServiceDep) -> Response:
    """Delete a tenant; its credentials stop working."""
    await service.delete_tenant(tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{tenant}/credentials", status_code=status.HTTP_201_CREATED)
@audited(AuditAction.CREDENTIAL_CREATE, "tenant_credential", secrets=("token",))
async def create_credential(
    tenant: Name,
    service: TenantServiceDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> CredentialCreated:
    """Issue a credential. The response holds the token: store it now, it is shown once."""
    row, token = await service.issue_credential(tenant)
    return CredentialCreated(**_credential_out(tenant, row).model_dump(), token=token)


@router.get("/{tenant}/credentials")
async def list_credentials(tenant: Name, service: TenantServiceDep) -> list[CredentialOut]:
    """List a tenant's credentials (revoked ones too), without the tokens."""
    return [_credential_out(tenant, row) for row in await service.list_credentials(tenant)]


@router.delete("/{tenant}/credentials/{credential_id}", status_code=status.HTTP_204_NO_CONTENT)
@audited(AuditAction.CREDENTIAL_REVOKE, "tenant_credential")
async def revoke_credential(
    tenant: Name, credential_id: CredentialId, service: TenantServiceDep
) -> Response:
    """Revoke a credential: every Envoy refuses it once it has the new config."""
    await service.revoke_credential(tenant, credential_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
