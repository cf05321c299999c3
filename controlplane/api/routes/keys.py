"""/v1/keys: admin API keys (the ``keys`` permission: admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response, status

from controlplane.api.deps import KeyServiceDep, require
from controlplane.api.schemas import ErrorBody, KeyCreate, KeyCreated, KeyOut
from controlplane.api.unit_of_work import audited
from controlplane.domain.audit import AuditAction
from controlplane.domain.clock import utcnow
from controlplane.domain.keys import Permission, Role, parse_lifetime

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/keys",
    tags=["keys"],
    dependencies=[require(Permission.KEYS)],
    responses={
        401: {"model": ErrorBody, "description": "no valid API key"},
        403: {"model": ErrorBody, "description": "the key's role lacks the permission"},
        413: {"model": ErrorBody, "description": "request body too large"},
        422: {"model": ErrorBody, "description": "invalid input"},
    },
)


@router.post("", status_code=status.HTTP_201_CREATED)
@audited(AuditAction.KEY_CREATE, "key", secrets=("key",))
async def create_key(
    body: KeyCreate,
    service: KeyServiceDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> KeyCreated:
    """Create a key, expiring after ``expires_in`` if given. The response holds the key
    itself: store it now, it is shown once."""
    expires_at = utcnow() + parse_lifetime(body.expires_in) if body.expires_in else None
    row, key = await service.create(body.name, Role(body.role), expires_at=expires_at)
    return KeyCreated(**KeyOut.model_validate(row).model_dump(), key=key)


@router.get("")
async def list_keys(service: KeyServiceDep) -> list[KeyOut]:
    """List every key (revoked ones too), without the keys themselves."""
    return [KeyOut.model_validate(row) for row in await service.list()]


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorBody, "description": "no such active key"}},
)
@audited(AuditAction.KEY_REVOKE, "key")
async def revoke_key(
    key_id: Annotated[int, Path(ge=1, le=2**62)], service: KeyServiceDep
) -> Response:
    """Revoke a key: it stops working at once. The row stays, for the audit log."""
    await service.revoke(key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
