"""/v1/models: models, their versions, their traffic split, their policies and their history.

GETs need the ``read`` permission, changes ``write``. Models, versions and the
traffic split carry a strong ``ETag``; send it back as ``If-Match`` to change
them only if nobody else did in between (412 otherwise).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status

from controlplane.api.deps import (
    ModelServiceDep,
    RuntimeDep,
    SessionDep,
    require_for_method,
)
from controlplane.api.policy_schemas import ModelPolicyBody, VersionPolicyBody
from controlplane.api.schemas import (
    EndpointOut,
    ErrorBody,
    HeldOut,
    HistoryEntry,
    HistoryPage,
    KubernetesOut,
    ModelCreate,
    ModelOut,
    ModelPatch,
    Name,
    TrafficIn,
    TrafficOut,
    VersionCreate,
    VersionOut,
    VersionPatch,
)
from controlplane.api.unit_of_work import audited
from controlplane.db.audit_repository import AuditQuery, AuditRepository
from controlplane.db.models import ModelVersion
from controlplane.domain.audit import AuditAction, Outcome
from controlplane.domain.keys import Permission
from controlplane.services.models import ModelService, model_etag, traffic_etag, version_etag

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/models",
    tags=["models"],
    dependencies=[require_for_method(Permission.READ, Permission.WRITE)],
    responses={
        401: {"model": ErrorBody, "description": "no valid API key"},
        403: {"model": ErrorBody, "description": "the key's role lacks the permission"},
        404: {"model": ErrorBody, "description": "unknown model or version"},
        413: {"model": ErrorBody, "description": "request body too large"},
        422: {"model": ErrorBody, "description": "invalid input"},
    },
)

IfMatch = Annotated[
    str | None,
    Header(description="an ETag from a GET: change only if the resource still has it"),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=255,
        description="repeat a POST safely: the same key and body replay the first response",
    ),
]
_STALE: dict[int | str, dict[str, Any]] = {
    412: {"model": ErrorBody, "description": "If-Match does not match the current ETag"}
}


async def _version_out(model: str, row: ModelVersion, service: ModelService) -> VersionOut:
    discovered = await service.discovered(row)
    return VersionOut(
        model=model,
        version=row.name,
        endpoints=[EndpointOut.model_validate(e) for e in row.endpoints],
        kubernetes=KubernetesOut.model_validate(row.kubernetes) if row.kubernetes else None,
        discovered=None
        if discovered is None
        else [EndpointOut.model_validate(e, from_attributes=True) for e in discovered],
        batching=(row.policy or {}).get("batching"),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorBody, "description": "the name is taken"}},
)
@audited(AuditAction.MODEL_CREATE, "model", model_field="name")
async def create_model(
    body: ModelCreate,
    service: ModelServiceDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ModelOut:
    """Register a model that clients will call by name."""
    model = await service.create_model(body.name, body.protocol, body.description)
    response.headers["etag"] = model_etag(model)
    return ModelOut.model_validate(model)


def _with_status(out: ModelOut, runtime: RuntimeDep) -> ModelOut:
    """``out`` with its status: degraded while Envoy's rejection holds the model back."""
    held = [
        HeldOut.model_validate(h.as_dict()) for h in runtime.sync.holds() if h.model == out.name
    ]
    if held:
        out.status, out.degraded = "degraded", held
    return out


@router.get("")
async def list_models(service: ModelServiceDep, runtime: RuntimeDep) -> list[ModelOut]:
    """List every model, sorted by name, each with its status."""
    return [_with_status(ModelOut.model_validate(m), runtime) for m in await service.list_models()]


@router.get("/{model}")
async def get_model(
    model: Name, service: ModelServiceDep, runtime: RuntimeDep, response: Response
) -> ModelOut:
    """Show one model and its status (``degraded`` while Envoy rejects its config and
    it is held at its last accepted one); its ``ETag`` header is what ``If-Match`` takes."""
    row = await service.get_model(model)
    response.headers["etag"] = model_etag(row)
    return _with_status(ModelOut.model_validate(row), runtime)


@router.patch("/{model}", responses=_STALE)
@audited(AuditAction.MODEL_UPDATE, "model")
async def update_model(
    model: Name,
    body: ModelPatch,
    service: ModelServiceDep,
    response: Response,
    if_match: IfMatch = None,
) -> ModelOut:
    """Change a model's protocol or description."""
    changes = body.model_dump(exclude_unset=True)
    if changes.get("protocol", "") is None:
        changes.pop("protocol")
    row = await service.update_model(model, changes, if_match=if_match)
    response.headers["etag"] = model_etag(row)
    return ModelOut.model_validate(row)


@router.delete("/{model}", status_code=status.HTTP_204_NO_CONTENT, responses=_STALE)
@audited(AuditAction.MODEL_DELETE, "model")
async def delete_model(model: Name, service: ModelServiceDep, if_match: IfMatch = None) -> Response:
    """Delete a model with its versions and traffic split."""
    await service.delete_model(model, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{model}/versions",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorBody, "description": "the version exists"}},
)
@audited(AuditAction.VERSION_CREATE, "version", version_field="version")
async def create_version(
    model: Name,
    body: VersionCreate,
    service: ModelServiceDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> VersionOut:
    """Add a version. The first version of a model takes all its traffic; later
    versions start at weight 0 until the split is changed."""
    kubernetes = body.kubernetes.to_ref() if body.kubernetes is not None else None
    row = await service.create_version(
        model, body.version, [e.to_spec() for e in body.endpoints], kubernetes
    )
    response.headers["etag"] = version_etag(model, row)
    return await _version_out(model, row, service)


@router.get("/{model}/versions")
async def list_versions(model: Name, service: ModelServiceDep) -> list[VersionOut]:
    """List a model's versions with their endpoints."""
    return [await _version_out(model, row, service) for row in await service.list_versions(model)]


@router.get("/{model}/versions/{version}")
async def get_version(
    model: Name, version: Name, service: ModelServiceDep, response: Response
) -> VersionOut:
    """Show one version and its endpoints (for a version that names a Kubernetes
    Service: the reference and the endpoints discovered now); its ``ETag`` header is
    what ``If-Match`` takes."""
    row = await service.get_version(model, version)
    response.headers["etag"] = version_etag(model, row)
    return await _version_out(model, row, service)


@router.patch("/{model}/versions/{version}", responses=_STALE)
@audited(AuditAction.VERSION_UPDATE, "version")
async def update_version(
    model: Name,
    version: Name,
    body: VersionPatch,
    service: ModelServiceDep,
    response: Response,
    if_match: IfMatch = None,
) -> VersionOut:
    """Replace a version's endpoints, or the Kubernetes Service it is served by."""
    kubernetes = body.kubernetes.to_ref() if body.kubernetes is not None else None
    row = await service.update_version(
        model,
        version,
        [e.to_spec() for e in body.endpoints or ()],
        kubernetes,
        if_match=if_match,
    )
    response.headers["etag"] = version_etag(model, row)
    return await _version_out(model, row, service)


@router.delete(
    "/{model}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        409: {"model": ErrorBody, "description": "the version still has traffic"},
        **_STALE,
    },
)
@audited(AuditAction.VERSION_DELETE, "version")
async def delete_version(
    model: Name, version: Name, service: ModelServiceDep, if_match: IfMatch = None
) -> Response:
    """Delete a version that no longer receives traffic."""
    await service.delete_version(model, version, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{model}/traffic")
async def get_traffic(
    model: Name,
    service: ModelServiceDep,
    response: Response,
    at: Annotated[
        datetime | None,
        Query(description="show the split as it was at this time (ISO 8601; UTC if no zone)"),
    ] = None,
) -> TrafficOut:
    """Show the traffic split: every version with its weight (percent), now or at time ``at``."""
    if at is not None:
        when = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        return TrafficOut(model=model, weights=await service.get_traffic_at(model, when))
    weights = await service.get_traffic(model)
    response.headers["etag"] = traffic_etag(model, weights)
    return TrafficOut(model=model, weights=weights)


@router.put("/{model}/traffic", responses=_STALE)
@audited(AuditAction.TRAFFIC_UPDATE, "traffic")
async def set_traffic(
    model: Name,
    body: TrafficIn,
    service: ModelServiceDep,
    response: Response,
    if_match: IfMatch = None,
) -> TrafficOut:
    """Replace the traffic split. Weights are percentages adding up to 100;
    versions left out get 0."""
    weights = await service.set_traffic(model, body.weights, if_match=if_match)
    response.headers["etag"] = traffic_etag(model, weights)
    return TrafficOut(model=model, weights=weights)


@router.get("/{model}/history")
async def model_history(
    model: Name,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> HistoryPage:
    """Every successful change to the model, its versions and its traffic, newest
    first, with who made it and when (also after the model was deleted)."""
    rows = await AuditRepository(session).page(
        AuditQuery(model=model, outcome=Outcome.SUCCESS),
        before_id=int(cursor) if cursor else None,
        limit=limit + 1,
    )
    items = [HistoryEntry.model_validate(row) for row in rows[:limit]]
    return HistoryPage(items=items, next_cursor=str(items[-1].id) if len(rows) > limit else None)


@router.get("/{model}/policy")
async def get_model_policy(model: Name, service: ModelServiceDep) -> ModelPolicyBody:
    """Show the model's routing policy: timeouts, retries, shadow, experiments, sticky arms."""
    return ModelPolicyBody.from_policy(await service.get_model_policy(model))


@router.put("/{model}/policy")
@audited(AuditAction.MODEL_POLICY_UPDATE, "model_policy")
async def set_model_policy(
    model: Name, body: ModelPolicyBody, service: ModelServiceDep
) -> ModelPolicyBody:
    """Replace the model's routing policy (``{}`` clears it)."""
    return ModelPolicyBody.from_policy(await service.set_model_policy(model, body.to_policy()))


@router.get("/{model}/versions/{version}/policy")
async def get_version_policy(
    model: Name, version: Name, service: ModelServiceDep
) -> VersionPolicyBody:
    """Show a version's cluster policy: circuit breakers, outlier detection, health
    checks, load balancing."""
    return VersionPolicyBody.from_policy(await service.get_version_policy(model, version))


@router.put("/{model}/versions/{version}/policy")
@audited(AuditAction.VERSION_POLICY_UPDATE, "version_policy")
async def set_version_policy(
    model: Name, version: Name, body: VersionPolicyBody, service: ModelServiceDep
) -> VersionPolicyBody:
    """Replace a version's cluster policy (``{}`` clears it)."""
    policy = await service.set_version_policy(model, version, body.to_policy())
    return VersionPolicyBody.from_policy(policy)
