"""Config revisions: history, diffs between whole states, and rollback.

A rollback restores the traffic state of an earlier revision (models,
versions, endpoints, weights, model and version policies, batching) and never
the access state (tenants, grants, rate limits, credentials, revocations):
those stay as they are now, and Envoy keeps enforcing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import ConfigRevision
from controlplane.db.revisions import RevisionRepository
from controlplane.db.state import apply_models
from controlplane.domain.audit import ActionContext, AuditAction
from controlplane.domain.documents import encode_model, encode_state, encode_tenant
from controlplane.domain.errors import NotFound
from controlplane.domain.state import DesiredState
from controlplane.services.changes import record_change
from controlplane.services.models import check_no_rollout
from controlplane.xds.diff import resource_diff
from controlplane.xds.translate import ListenerOptions, translate

__all__ = ["RevisionService", "state_diff", "whole_diff"]


def _named_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": {
            name: {"before": old[name], "after": new[name]}
            for name in sorted(set(old) & set(new))
            if old[name] != new[name]
        },
    }


def state_diff(before: DesiredState, after: DesiredState) -> dict[str, Any]:
    """Return what differs between two whole states: the models added, removed and
    changed (with both sides' documents), the same for tenants, and whether the
    key set that verifies credentials changed. Empty lists, an empty ``changed``
    and ``key_set_changed`` false mean the states are equal."""
    models = _named_diff(
        {m.name: encode_model(m) for m in before.models},
        {m.name: encode_model(m) for m in after.models},
    )
    tenants = _named_diff(
        {t.name: encode_tenant(t) for t in before.tenants},
        {t.name: encode_tenant(t) for t in after.tenants},
    )
    return {**models, "tenants": tenants, "key_set_changed": before.jwks != after.jwks}


def whole_diff(
    before: DesiredState, after: DesiredState, listener: ListenerOptions
) -> dict[str, Any]:
    """Return the state diff and the Envoy resources that differ between two states."""
    return {
        "state": state_diff(before, after),
        "resources": resource_diff(translate(before, listener), translate(after, listener)),
    }


class RevisionService:
    """Reads revision history and restores earlier traffic states."""

    def __init__(self, session: AsyncSession, context: ActionContext) -> None:
        self._session = session
        self._context = context
        self._revisions = RevisionRepository(session)

    async def page(self, *, before: int | None, limit: int) -> Sequence[ConfigRevision]:
        """Return up to ``limit`` revisions, newest first, below ``before``."""
        return await self._revisions.page(before=before, limit=limit)

    async def get(self, revision: int) -> tuple[ConfigRevision, dict[str, Any]]:
        """Return one revision and the document of the whole state it left; raise
        NotFound if it does not exist or predates stored states."""
        row = await self._row(revision)
        return row, encode_state(await self._state_of(row))

    async def state_at(self, revision: int) -> DesiredState:
        """Return the whole desired state as of ``revision`` (0 is the empty start)."""
        if revision == 0:
            return DesiredState(revision=0)
        return await self._state_of(await self._row(revision))

    async def _row(self, revision: int) -> ConfigRevision:
        row = await self._revisions.get(revision)
        if row is None:
            raise NotFound(f"revision {revision} does not exist")
        return row

    @staticmethod
    def _showable(row: ConfigRevision) -> ConfigRevision:
        if row.access_digest is None:
            raise NotFound(f"revision {row.revision} predates stored states; it cannot be shown")
        return row

    async def _state_of(self, row: ConfigRevision) -> DesiredState:
        state = await self._revisions.state_of(self._showable(row))
        assert state is not None  # a showable revision has a state
        return state

    async def diff(
        self, from_revision: int, to_revision: int, listener: ListenerOptions
    ) -> dict[str, Any]:
        """Return the desired-state and Envoy-resource changes from one revision to another."""
        before = await self.state_at(from_revision)
        after = await self.state_at(to_revision)
        return {"from": from_revision, "to": to_revision, **whole_diff(before, after, listener)}

    async def rollback(self, revision: int) -> int:
        """Make the traffic state of ``revision`` current again, as a new revision;
        return it. The access state is left as it is."""
        if revision != 0:
            self._showable(await self._row(revision))
        current = await self._revisions.current()
        then = await self._revisions.model_digests(revision)
        now = await self._revisions.model_digests(current)
        changed = sorted(name for name in set(then) | set(now) if then.get(name) != now.get(name))
        restored = await self._revisions.models_of(then, changed)
        current_models = await self._revisions.models_of(now, changed)
        for name in changed:
            old, new = current_models.get(name), restored.get(name)
            if (old.weights if old else None) != (new.weights if new else None):
                await check_no_rollout(self._session, name)
        await apply_models(self._session, restored)
        return await record_change(
            self._session,
            self._context,
            action=AuditAction.REVISION_ROLLBACK,
            resource_type="revision",
            resource_id=str(revision),
            before={"revision": current},
            after={"revision": revision, "models": changed},
            models=changed,
        )
