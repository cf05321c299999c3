"""/v1/models: models, their versions, their traffic split and their policies."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from controlplane.api.deps import ModelServiceDep
from controlplane.api.policy_schemas import ModelPolicyBody, VersionPolicyBody
from controlplane.api.schemas import (
    EndpointOut,
    ErrorBody,
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
from controlplane.db.models import ModelVersion

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/models",
    tags=["models"],
    responses={
        404: {"model": ErrorBody, "description": "unknown model or version"},
        422: {"model": ErrorBody, "description": "invalid input"},
    },
)


def _version_out(model: str, row: ModelVersion) -> VersionOut:
    return VersionOut(
        model=model,
        version=row.name,
        endpoints=[EndpointOut.model_validate(e) for e in row.endpoints],
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorBody, "description": "the name is taken"}},
)
async def create_model(body: ModelCreate, service: ModelServiceDep) -> ModelOut:
    """Register a model that clients will call by name."""
    model = await service.create_model(body.name, body.protocol, body.description)
    return ModelOut.model_validate(model)


@router.get("")
async def list_models(service: ModelServiceDep) -> list[ModelOut]:
    """List every model, sorted by name."""
    return [ModelOut.model_validate(m) for m in await service.list_models()]


@router.get("/{model}")
async def get_model(model: Name, service: ModelServiceDep) -> ModelOut:
    """Show one model."""
    return ModelOut.model_validate(await service.get_model(model))


@router.patch("/{model}")
async def update_model(model: Name, body: ModelPatch, service: ModelServiceDep) -> ModelOut:
    """Change a model's protocol or description."""
    changes = body.model_dump(exclude_unset=True)
    if changes.get("protocol", "") is None:
        changes.pop("protocol")
    return ModelOut.model_validate(await service.update_model(model, changes))


@router.delete("/{model}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_model(model: Name, service: ModelServiceDep) -> Response:
    """Delete a model with its versions and traffic split."""
    await service.delete_model(model)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{model}/versions",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorBody, "description": "the version exists"}},
)
async def create_version(model: Name, body: VersionCreate, service: ModelServiceDep) -> VersionOut:
    """Add a version. The first version of a model takes all its traffic; later
    versions start at weight 0 until the split is changed."""
    row = await service.create_version(model, body.version, [e.to_spec() for e in body.endpoints])
    return _version_out(model, row)


@router.get("/{model}/versions")
async def list_versions(model: Name, service: ModelServiceDep) -> list[VersionOut]:
    """List a model's versions with their endpoints."""
    return [_version_out(model, row) for row in await service.list_versions(model)]


@router.get("/{model}/versions/{version}")
async def get_version(model: Name, version: Name, service: ModelServiceDep) -> VersionOut:
    """Show one version and its endpoints."""
    return _version_out(model, await service.get_version(model, version))


@router.patch("/{model}/versions/{version}")
async def update_version(
    model: Name, version: Name, body: VersionPatch, service: ModelServiceDep
) -> VersionOut:
    """Replace a version's endpoints."""
    row = await service.update_version(model, version, [e.to_spec() for e in body.endpoints])
    return _version_out(model, row)


@router.delete(
    "/{model}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"model": ErrorBody, "description": "the version still has traffic"}},
)
async def delete_version(model: Name, version: Name, service: ModelServiceDep) -> Response:
    """Delete a version that no longer receives traffic."""
    await service.delete_version(model, version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{model}/traffic")
async def get_traffic(model: Name, service: ModelServiceDep) -> TrafficOut:
    """Show the traffic split: every version with its weight (percent)."""
    return TrafficOut(model=model, weights=await service.get_traffic(model))


@router.put("/{model}/traffic")
async def set_traffic(model: Name, body: TrafficIn, service: ModelServiceDep) -> TrafficOut:
    """Replace the traffic split. Weights are percentages adding up to 100;
    versions left out get 0."""
    return TrafficOut(model=model, weights=await service.set_traffic(model, body.weights))


@router.get("/{model}/policy")
async def get_model_policy(model: Name, service: ModelServiceDep) -> ModelPolicyBody:
    """Show the model's routing policy: timeouts, retries, shadow, experiments, sticky arms."""
    return ModelPolicyBody.from_policy(await service.get_model_policy(model))


@router.put("/{model}/policy")
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
async def set_version_policy(
    model: Name, version: Name, body: VersionPolicyBody, service: ModelServiceDep
) -> VersionPolicyBody:
    """Replace a version's cluster policy (``{}`` clears it)."""
    policy = await service.set_version_policy(model, version, body.to_policy())
    return VersionPolicyBody.from_policy(policy)
