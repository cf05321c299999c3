"""Recording a change: one new config revision with what it changed, and its
one audit event, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from controlplane.db.audit_repository import AuditRepository
from controlplane.db.revisions import RevisionRepository
from controlplane.db.state import load_access, load_models
from controlplane.domain.audit import ActionContext
from controlplane.domain.clock import utcnow
from controlplane.domain.state import CommittedChange

__all__ = ["committed_changes", "committed_revision", "record_change"]

REVISION_KEY = "turnout.revision"
CHANGES_KEY = "turnout.changes"


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    """A rolled-back transaction changed nothing: forget what it recorded."""
    session.info.pop(REVISION_KEY, None)
    session.info.pop(CHANGES_KEY, None)


async def record_change(
    session: AsyncSession,
    context: ActionContext,
    *,
    action: str,
    resource_type: str,
    resource_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    models: Collection[str] = (),
    access: bool = False,
    model: str | None = None,
    version: str | None = None,
) -> int:
    """Bump the config revision, store what it changed and append the audit event
    of one change; return the new revision. Call once per mutation, after it,
    inside its transaction.

    ``models`` names the models the change touched (``model`` is always one of
    them); ``access`` says whether it touched the access state (tenants, grants,
    limits, credentials).
    """
    touched = set(models) | ({model} if model is not None else set())
    specs = {spec.name: spec for spec in await load_models(session, touched)}
    changed = {name: specs.get(name) for name in touched}
    access_state = await load_access(session) if access else None
    revision = await RevisionRepository(session).bump(
        actor=context.actor,
        action=action,
        request_id=context.request_id,
        models=changed,
        access=access_state,
    )
    await AuditRepository(session).append(
        context.entry(
            action,
            resource_type,
            resource_id,
            before=before,
            after=after,
            model=model,
            version=version,
            revision=revision,
        )
    )
    session.info[REVISION_KEY] = revision
    # Handed to this replica's sync loop once the transaction commits (and only
    # then): it need not read back what this writer has just read.
    session.info.setdefault(CHANGES_KEY, []).append(
        CommittedChange(revision, changed, access_state, utcnow())
    )
    return revision


def committed_revision(session: AsyncSession) -> int | None:
    """Return the revision this session's transaction bumped to, if any."""
    value = session.info.get(REVISION_KEY)
    return int(value) if value is not None else None


def committed_changes(session: AsyncSession) -> list[CommittedChange]:
    """Return what this session's transaction changed, revision by revision; call
    it only once the transaction has committed."""
    return list(session.info.get(CHANGES_KEY, ()))
