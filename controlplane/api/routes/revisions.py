"""/v1/revisions: the history of the desired state, diffs and rollback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from controlplane.api.deps import ContextDep, RuntimeDep, SessionDep, require_for_method
from controlplane.api.schemas import (
    ErrorBody,
    RevisionDetail,
    RevisionDiff,
    RevisionOut,
    RevisionPage,
    RollbackOut,
)
from controlplane.api.unit_of_work import audited
from controlplane.domain.audit import AuditAction
from controlplane.domain.keys import Permission
from controlplane.services.revisions import RevisionService

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/revisions",
    tags=["revisions"],
    dependencies=[require_for_method(Permission.READ, Permission.WRITE)],
    responses={
        401: {"model": ErrorBody, "description": "no valid API key"},
        403: {"model": ErrorBody, "description": "the key's role lacks the permission"},
        404: {"model": ErrorBody, "description": "unknown revision"},
        422: {"model": ErrorBody, "description": "invalid input"},
    },
)

RevisionNumber = Annotated[int, Path(ge=0, le=2**62)]


@router.get("")
async def list_revisions(
    session: SessionDep,
    context: ContextDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> RevisionPage:
    """Committed revisions, newest first. Pass the returned ``next_cursor`` to page on."""
    rows = await RevisionService(session, context).page(
        before=int(cursor) if cursor else None, limit=limit + 1
    )
    items = [RevisionOut.model_validate(row) for row in rows[:limit]]
    next_cursor = str(items[-1].revision) if len(rows) > limit else None
    return RevisionPage(items=items, next_cursor=next_cursor)


@router.get("/{revision}")
async def get_revision(
    revision: RevisionNumber, session: SessionDep, context: ContextDep
) -> RevisionDetail:
    """One revision and the desired state it left behind."""
    row, state = await RevisionService(session, context).get(revision)
    return RevisionDetail(
        revision=row.revision,
        created_at=row.created_at,
        actor=row.actor,
        action=row.action,
        request_id=row.request_id,
        state=state,
    )


@router.get("/{revision}/diff")
async def diff_revision(
    revision: RevisionNumber,
    session: SessionDep,
    context: ContextDep,
    runtime: RuntimeDep,
    against: Annotated[
        int | None,
        Query(ge=0, description="the revision to compare with; the previous one if unset"),
    ] = None,
) -> RevisionDiff:
    """What changed from ``against`` (by default the revision before) to ``revision``:
    models, and the Envoy resources that differ."""
    base = against if against is not None else max(revision - 1, 0)
    diff = await RevisionService(session, context).diff(base, revision, runtime.listener)
    return RevisionDiff.model_validate(diff)


@router.post("/{revision}/rollback")
@audited(AuditAction.REVISION_ROLLBACK, "revision")
async def rollback_revision(
    revision: RevisionNumber, session: SessionDep, context: ContextDep
) -> RollbackOut:
    """Make an earlier revision's traffic state current again, as a new revision:
    models, versions, endpoints, weights and policies. Access state (tenants,
    grants, rate limits, credentials, revocations) stays as it is now."""
    new_revision = await RevisionService(session, context).rollback(revision)
    return RollbackOut(revision=new_revision, restored=revision)
