"""FastAPI dependencies, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.api.gateway import request_context
from controlplane.api.unit_of_work import UnitOfWork
from controlplane.domain.audit import ActionContext
from controlplane.domain.errors import PermissionDenied, Unauthenticated
from controlplane.domain.keys import Permission, Principal
from controlplane.services.changes import committed_changes, committed_revision
from controlplane.services.keys import KeyService, authenticate
from controlplane.services.models import ModelService
from controlplane.services.tenants import TenantService

if TYPE_CHECKING:
    from controlplane.runtime import ControlPlane

__all__ = [
    "ContextDep",
    "CurrentPrincipal",
    "KeyServiceDep",
    "ModelServiceDep",
    "RuntimeDep",
    "SessionDep",
    "TenantServiceDep",
    "require",
]


def get_runtime(request: Request) -> ControlPlane:
    """Return the control plane this app belongs to."""
    runtime: ControlPlane = request.app.state.runtime
    return runtime


RuntimeDep = Annotated["ControlPlane", Depends(get_runtime)]


async def get_session(request: Request, runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """One session and one transaction per request.

    A mutating request uses its unit of work's transaction (the gateway commits
    or rolls it back, with the audit event, and answers a dry run); any other
    request gets its own, committed before the response.
    """
    unit: UnitOfWork | None = getattr(request.state, "unit_of_work", None)
    if unit is not None:
        yield unit.session
        return
    async with runtime.sessionmaker() as session:
        async with session.begin():
            yield session
        if committed_revision(session) is not None:
            runtime.sync.offer(committed_changes(session))


# scope="function": commit when the handler returns, before the response goes out,
# so a 2xx always means the change is durable.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An admin API key: `Authorization: Bearer tk_...` (`turnout keys create`).",
)


async def get_principal(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Return the caller behind the request's API key; raise Unauthenticated (401)."""
    if getattr(request.state, "authenticated", False):
        principal: Principal | None = request.state.principal
    else:
        principal = await authenticate(
            session,
            credentials.credentials if credentials else None,
            recent=runtime.verified_keys,
        )
        request.state.principal = principal
    if principal is None:
        raise Unauthenticated(
            "a valid API key is required: send `Authorization: Bearer tk_...` "
            "(create one with `turnout keys create`)"
        )
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require(permission: Permission) -> Any:
    """Return a dependency that lets only roles with ``permission`` through (else 403)."""

    async def check(principal: CurrentPrincipal) -> Principal:
        if not principal.can(permission):
            raise PermissionDenied(
                f"role {principal.role.value!r} lacks the {permission.value!r} permission"
            )
        return principal

    return Depends(check)


def require_for_method(read: Permission, write: Permission) -> Any:
    """Return a dependency: ``read`` for GET and HEAD, ``write`` for anything else."""

    async def check(request: Request, principal: CurrentPrincipal) -> Principal:
        permission = read if request.method in ("GET", "HEAD") else write
        if not principal.can(permission):
            raise PermissionDenied(
                f"role {principal.role.value!r} lacks the {permission.value!r} permission"
            )
        return principal

    return Depends(check)


def get_context(request: Request, principal: CurrentPrincipal) -> ActionContext:
    """Return who is acting, from where, and the request id."""
    return request_context(request.scope, request.headers, principal, _success_status(request))


def _success_status(request: Request) -> int:
    route = request.scope.get("route")
    return int(getattr(route, "status_code", None) or 200)


ContextDep = Annotated[ActionContext, Depends(get_context)]


def get_model_service(session: SessionDep, context: ContextDep) -> ModelService:
    """Return the model service bound to this request's transaction."""
    return ModelService(session, context)


ModelServiceDep = Annotated[ModelService, Depends(get_model_service)]


def get_key_service(session: SessionDep, context: ContextDep) -> KeyService:
    """Return the key service bound to this request's transaction."""
    return KeyService(session, context)


KeyServiceDep = Annotated[KeyService, Depends(get_key_service)]


def get_tenant_service(session: SessionDep, context: ContextDep) -> TenantService:
    """Return the tenant service bound to this request's transaction."""
    return TenantService(session, context)


TenantServiceDep = Annotated[TenantService, Depends(get_tenant_service)]
