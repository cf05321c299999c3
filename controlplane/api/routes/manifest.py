"""/v1/manifest: the whole traffic state as one declarative document.

``GET`` reads every model as a manifest (``turnout export``); ``POST`` makes
the models match one, in one revision with one audit event (``turnout apply
-f``). ``POST ...?dry_run=true`` is the plan: the state and Envoy resources the
apply would change, changing nothing.
"""

from __future__ import annotations

from fastapi import APIRouter

from controlplane.api.deps import ContextDep, SessionDep, require_for_method
from controlplane.api.manifest_schemas import ApplyIn, ApplyOut, Manifest, ManifestModel
from controlplane.api.schemas import ErrorBody
from controlplane.api.unit_of_work import audited
from controlplane.domain.audit import AuditAction
from controlplane.domain.keys import Permission
from controlplane.services.manifests import ManifestService

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/manifest",
    tags=["manifest"],
    dependencies=[require_for_method(Permission.READ, Permission.WRITE)],
    responses={
        401: {"model": ErrorBody, "description": "no valid API key"},
        403: {"model": ErrorBody, "description": "the key's role lacks the permission"},
        412: {"model": ErrorBody, "description": "base_revision is no longer current"},
        422: {"model": ErrorBody, "description": "invalid input"},
    },
)


@router.get("")
async def export_manifest(session: SessionDep, context: ContextDep) -> Manifest:
    """Every model with its versions, endpoints, policies and traffic split."""
    state = await ManifestService(session, context).state()
    return Manifest(
        revision=state.revision, models=[ManifestModel.from_spec(m) for m in state.models]
    )


@router.post("")
@audited(AuditAction.MANIFEST_APPLY, "manifest")
async def apply_manifest(body: ApplyIn, session: SessionDep, context: ContextDep) -> ApplyOut:
    """Make the models match the manifest: create, change (and with ``prune``
    delete) models as one revision; nothing when they already match. A model whose
    ``traffic`` is left out keeps its versions' weights."""
    service = ManifestService(session, context)
    weights = service.weights_of(await service.state())
    specs = [model.to_spec(weights.get(model.name)) for model in body.models]
    applied = await service.apply(specs, prune=body.prune, base_revision=body.base_revision)
    return ApplyOut(
        revision=applied.revision,
        created=applied.created,
        changed=applied.changed,
        deleted=applied.deleted,
        unchanged=applied.unchanged,
    )
