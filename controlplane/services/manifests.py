"""Applying a models manifest: the stored models made to match a declared set,
as one change (one revision, one audit event), or nothing when they already do.

This is how CI/CD pipelines release: ``turnout export`` writes the state,
``turnout apply -f`` makes it so, and an export applied back changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.revisions import RevisionRepository
from controlplane.db.state import apply_models, load_state
from controlplane.domain.audit import ActionContext, AuditAction
from controlplane.domain.errors import InvalidInput, PreconditionFailed
from controlplane.domain.policy import check_model_policy
from controlplane.domain.state import DesiredState, ModelSpec
from controlplane.services.changes import record_change
from controlplane.services.models import TOTAL_WEIGHT, check_unique_endpoints

__all__ = ["Applied", "ManifestService"]


@dataclass(frozen=True, slots=True)
class Applied:
    """What an apply did: the revision it made (None: nothing to change) and the
    models by fate, each list sorted."""

    revision: int | None
    created: list[str]
    changed: list[str]
    deleted: list[str]
    unchanged: list[str]


class ManifestService:
    """Reads the state as a whole and makes it match a manifest."""

    def __init__(self, session: AsyncSession, context: ActionContext) -> None:
        self._session = session
        self._context = context

    async def state(self) -> DesiredState:
        """Return the current desired state (every model, at the current revision)."""
        return await load_state(self._session)

    async def apply(
        self, models: Sequence[ModelSpec], *, prune: bool, base_revision: int | None
    ) -> Applied:
        """Make the stored models equal ``models`` (and, with ``prune``, delete the
        others) as one revision; nothing when they already match.

        Raise PreconditionFailed when ``base_revision`` is given and is no longer
        the current revision, InvalidInput when a model breaks a rule the API
        enforces (unknown versions in its policy, weights that do not add up to
        100, an endpoint listed twice).
        """
        current = await RevisionRepository(self._session).current()
        if base_revision is not None and base_revision != current:
            raise PreconditionFailed(
                {
                    "message": f"the state moved from revision {base_revision} to {current} "
                    "since the plan was made: plan again",
                    "base_revision": base_revision,
                    "revision": current,
                }
            )
        for model in models:
            _check(model)
        stored = {model.name: model for model in (await load_state(self._session)).models}
        wanted = {model.name: model for model in models}
        created = sorted(set(wanted) - set(stored))
        changed = sorted(n for n in set(wanted) & set(stored) if wanted[n] != stored[n])
        deleted = sorted(set(stored) - set(wanted)) if prune else []
        unchanged = sorted(n for n in set(wanted) & set(stored) if wanted[n] == stored[n])
        touched = [*created, *changed, *deleted]
        if not touched:
            return Applied(None, [], [], [], unchanged)
        await apply_models(
            self._session,
            {**{n: wanted[n] for n in [*created, *changed]}, **dict.fromkeys(deleted)},
        )
        revision = await record_change(
            self._session,
            self._context,
            action=AuditAction.MANIFEST_APPLY,
            resource_type="manifest",
            resource_id=f"{len(touched)} model(s)",
            before={"revision": current},
            after={"created": created, "changed": changed, "deleted": deleted},
            models=touched,
        )
        return Applied(revision, created, changed, deleted, unchanged)

    @staticmethod
    def weights_of(state: DesiredState) -> dict[str, dict[str, int]]:
        """Return ``{model: {version: weight}}`` of ``state``, every version listed."""
        return {
            model.name: {v.name: model.weight_of(v.name) for v in model.versions}
            for model in state.models
        }


def _check(model: ModelSpec) -> None:
    versions = [version.name for version in model.versions]
    check_model_policy(model.policy, model.name, versions)
    total = sum(weight for _name, weight in model.weights)
    if versions and total != TOTAL_WEIGHT:
        raise InvalidInput(
            {
                "message": f"model {model.name!r}: weights must add up to {TOTAL_WEIGHT}, not "
                f"{total}; give its traffic in the manifest",
                "model": model.name,
                "total": total,
            }
        )
    for version in model.versions:
        check_unique_endpoints(version.endpoints)
