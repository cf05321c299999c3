"""Config revisions: history, diffs between them, and rollback to an earlier one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import ConfigRevision, Model, ModelVersion
from controlplane.db.repositories import (
    ModelRepository,
    RevisionRepository,
    TrafficRepository,
    VersionRepository,
)
from controlplane.domain.errors import NotFound
from controlplane.domain.services import ActionContext, endpoint_rows, record_change
from controlplane.domain.state import (
    DesiredState,
    ModelSpec,
    state_document,
    state_from_document,
)
from controlplane.xds.diff import resource_diff
from controlplane.xds.translate import ListenerOptions, translate

__all__ = ["RevisionService", "state_diff"]


def state_diff(before: DesiredState, after: DesiredState) -> dict[str, Any]:
    """Return the models added, removed and changed (with both sides) between two states."""
    old = {m["name"]: m for m in state_document(before)["models"]}
    new = {m["name"]: m for m in state_document(after)["models"]}
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": {
            name: {"before": old[name], "after": new[name]}
            for name in sorted(set(old) & set(new))
            if old[name] != new[name]
        },
    }


class RevisionService:
    """Reads revision history and restores earlier desired states."""

    def __init__(self, session: AsyncSession, context: ActionContext) -> None:
        self._session = session
        self._context = context
        self._revisions = RevisionRepository(session)

    async def page(self, *, before: int | None, limit: int) -> Sequence[ConfigRevision]:
        """Return up to ``limit`` revisions, newest first, below ``before``."""
        return await self._revisions.page(before=before, limit=limit)

    async def get(self, revision: int) -> ConfigRevision:
        """Return one revision with its state; raise NotFound if it does not exist."""
        row = await self._revisions.get(revision)
        if row is None:
            raise NotFound(f"revision {revision} does not exist")
        return row

    async def state_at(self, revision: int) -> DesiredState:
        """Return the desired state as of ``revision`` (0 is the empty start)."""
        if revision == 0:
            return DesiredState(revision=0)
        row = await self.get(revision)
        if row.state is None:
            raise NotFound(f"revision {revision} predates stored states; it cannot be shown")
        return state_from_document(row.state)

    async def diff(
        self, from_revision: int, to_revision: int, listener: ListenerOptions
    ) -> dict[str, Any]:
        """Return the desired-state and Envoy-resource changes from one revision to another."""
        before = await self.state_at(from_revision)
        after = await self.state_at(to_revision)
        return {
            "from": from_revision,
            "to": to_revision,
            "state": state_diff(before, after),
            "resources": resource_diff(translate(before, listener), translate(after, listener)),
        }

    async def rollback(self, revision: int) -> int:
        """Make the state of ``revision`` current again, as a new revision; return it."""
        target = await self.state_at(revision)
        current = await RevisionRepository(self._session).current()
        await _apply_state(self._session, target)
        return await record_change(
            self._session,
            self._context,
            action="revision.rollback",
            resource_type="revision",
            resource_id=str(revision),
            before={"revision": current},
            after={"revision": revision},
        )


async def _apply_state(session: AsyncSession, target: DesiredState) -> None:
    """Make the stored models, versions, endpoints and splits equal ``target``."""
    models = ModelRepository(session)
    versions = VersionRepository(session)
    wanted = {spec.name: spec for spec in target.models}
    for model in await models.all():
        if model.name not in wanted:
            await models.delete(model)
    for spec in target.models:
        existing = await models.get(spec.name)
        model = existing or await models.add(Model(name=spec.name, protocol=spec.protocol))
        model.protocol = spec.protocol
        await _apply_versions(session, model, spec, versions)


async def _apply_versions(
    session: AsyncSession, model: Model, spec: ModelSpec, versions: VersionRepository
) -> None:
    wanted = {v.name: v for v in spec.versions}
    rows = {row.name: row for row in await versions.of_model(model)}
    for name, row in rows.items():
        if name not in wanted:
            await versions.delete(row)
    for name, version in wanted.items():
        endpoints = endpoint_rows(version.endpoints)
        if name in rows:
            await versions.replace_endpoints(rows[name], endpoints)
        else:
            rows[name] = await versions.add(
                ModelVersion(model_id=model.id, name=name, endpoints=endpoints)
            )
    ids = {name: rows[name].id for name in wanted}
    await TrafficRepository(session).set(model, {ids[name]: w for name, w in spec.weights})
