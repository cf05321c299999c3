"""Models, their versions, traffic splits and policies: the traffic state.

Every mutation runs inside the caller's transaction and does three things:
changes the state, appends exactly one audit event and bumps the config
revision (:func:`~controlplane.services.changes.record_change`). The caller
commits once, at the request boundary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.discovery import DiscoveryRepository
from controlplane.db.models import Model, ModelVersion
from controlplane.db.repositories import ModelRepository, TrafficRepository, VersionRepository
from controlplane.db.revisions import RevisionRepository
from controlplane.db.state import endpoint_rows, endpoint_spec, kubernetes_column, policy_column
from controlplane.domain.audit import ActionContext, AuditAction
from controlplane.domain.discovery import resolve
from controlplane.domain.documents import decode_kubernetes_ref, encode_endpoint, encode_policy
from controlplane.domain.errors import Conflict, InvalidInput, NotFound
from controlplane.domain.etags import check_if_match, etag_of
from controlplane.domain.policy import (
    ModelPolicy,
    VersionPolicy,
    check_model_policy,
    model_policy_from_document,
    version_policy_from_document,
)
from controlplane.domain.state import EndpointSpec, KubernetesRef
from controlplane.services.changes import record_change

__all__ = [
    "TOTAL_WEIGHT",
    "ModelService",
    "check_unique_endpoints",
    "model_etag",
    "traffic_etag",
    "version_etag",
]

TOTAL_WEIGHT = 100


class ModelService:
    """Models, their versions and their traffic split."""

    def __init__(self, session: AsyncSession, context: ActionContext) -> None:
        self._session = session
        self._context = context
        self._models = ModelRepository(session)
        self._versions = VersionRepository(session)
        self._traffic = TrafficRepository(session)

    # -- models -----------------------------------------------------------------

    async def list_models(self) -> Sequence[Model]:
        """Return every model, sorted by name."""
        return await self._models.all()

    async def get_model(self, name: str) -> Model:
        """Return model ``name``; raise NotFound if there is none."""
        model = await self._models.get(name)
        if model is None:
            raise NotFound(f"model {name!r} does not exist")
        return model

    async def create_model(self, name: str, protocol: str, description: str | None) -> Model:
        """Create a model; raise Conflict if the name is taken."""
        if await self._models.get(name) is not None:
            raise Conflict(f"model {name!r} already exists")
        model = Model(name=name, protocol=protocol, description=description)
        try:
            async with self._session.begin_nested():
                await self._models.add(model)
        except IntegrityError as exc:
            raise Conflict(f"model {name!r} already exists") from exc
        await self._record(
            AuditAction.MODEL_CREATE, "model", name, None, model_document(model), name
        )
        return model

    async def update_model(
        self, name: str, changes: Mapping[str, Any], *, if_match: str | None = None
    ) -> Model:
        """Apply ``changes`` (protocol, description) to model ``name``.

        Raise PreconditionFailed when ``if_match`` is given and stale."""
        model = await self.get_model(name)
        check_if_match(if_match, model_etag(model))
        before = model_document(model)
        for field, value in changes.items():
            setattr(model, field, value)
        await self._models.flush()
        await self._record(
            AuditAction.MODEL_UPDATE, "model", name, before, model_document(model), name
        )
        return model

    async def delete_model(self, name: str, *, if_match: str | None = None) -> None:
        """Delete model ``name`` with its versions, endpoints and split."""
        model = await self.get_model(name)
        check_if_match(if_match, model_etag(model))
        before = model_document(model)
        await self._models.delete(model)
        await self._record(AuditAction.MODEL_DELETE, "model", name, before, None, name)

    # -- versions ---------------------------------------------------------------

    async def list_versions(self, model_name: str) -> Sequence[ModelVersion]:
        """Return the versions of a model, sorted by name."""
        return await self._versions.of_model(await self.get_model(model_name))

    async def get_version(self, model_name: str, version: str) -> ModelVersion:
        """Return one version; raise NotFound for an unknown model or version."""
        return await self._require_version(await self.get_model(model_name), version)

    async def create_version(
        self,
        model_name: str,
        version: str,
        endpoints: Sequence[EndpointSpec],
        kubernetes: KubernetesRef | None = None,
    ) -> ModelVersion:
        """Add a version, served by ``endpoints`` or by the endpoints discovered for
        the Kubernetes Service ``kubernetes``. The first version of a model takes all
        its traffic; later ones start at weight 0 until the split is changed."""
        model = await self.get_model(model_name)
        _check_one_source(endpoints, kubernetes)
        check_unique_endpoints(endpoints)
        if await self._versions.get(model, version) is not None:
            raise Conflict(f"version {version!r} of model {model_name!r} already exists")
        is_first = not await self._versions.of_model(model)
        row = ModelVersion(
            model_id=model.id,
            name=version,
            kubernetes=kubernetes_column(kubernetes),
            endpoints=endpoint_rows(endpoints),
        )
        try:
            async with self._session.begin_nested():
                await self._versions.add(row)
        except IntegrityError as exc:
            raise Conflict(f"version {version!r} of model {model_name!r} already exists") from exc
        if is_first:
            await self._traffic.set(model, {row.id: TOTAL_WEIGHT})
        after = version_document(model_name, row)
        after["weight"] = TOTAL_WEIGHT if is_first else 0
        await self._record(
            AuditAction.VERSION_CREATE,
            "version",
            f"{model_name}/{version}",
            None,
            after,
            model_name,
            version,
        )
        return row

    async def update_version(
        self,
        model_name: str,
        version: str,
        endpoints: Sequence[EndpointSpec],
        kubernetes: KubernetesRef | None = None,
        *,
        if_match: str | None = None,
    ) -> ModelVersion:
        """Replace the endpoints of a version, or the Kubernetes Service that serves
        it (which clears its listed endpoints)."""
        model = await self.get_model(model_name)
        row = await self._require_version(model, version)
        check_if_match(if_match, version_etag(model_name, row))
        _check_one_source(endpoints, kubernetes)
        check_unique_endpoints(endpoints)
        before = version_document(model_name, row)
        row.kubernetes = kubernetes_column(kubernetes)
        await self._versions.replace_endpoints(row, endpoint_rows(endpoints))
        await self._record(
            AuditAction.VERSION_UPDATE,
            "version",
            f"{model_name}/{version}",
            before,
            version_document(model_name, row),
            model_name,
            version,
        )
        return row

    async def discovered(self, row: ModelVersion) -> tuple[EndpointSpec, ...] | None:
        """Return the endpoints discovered now for a version that names a Kubernetes
        Service (what Envoy gets), or None for a version that lists its own."""
        ref = decode_kubernetes_ref(row.kubernetes)
        if ref is None:
            return None
        key = (ref.namespace, ref.service)
        found = await DiscoveryRepository(self._session).of([key])
        return resolve(ref, found.get(key, ()))

    async def delete_version(
        self, model_name: str, version: str, *, if_match: str | None = None
    ) -> None:
        """Delete a version; raise Conflict while it still receives traffic."""
        model = await self.get_model(model_name)
        row = await self._require_version(model, version)
        check_if_match(if_match, version_etag(model_name, row))
        if version in model_policy_from_document(model.policy).versions_referenced():
            raise Conflict(
                f"version {version!r} is named in {model_name!r}'s policy (shadow or "
                "experiments); change the policy first (PUT /v1/models/{model}/policy)"
            )
        weight = (await self._traffic.weights(model)).get(version, 0)
        if weight > 0:
            raise Conflict(
                f"version {version!r} still receives {weight}% of {model_name!r}'s traffic; "
                "move its traffic to another version first (PUT /v1/models/{model}/traffic)"
            )
        before = version_document(model_name, row)
        await self._versions.delete(row)
        await self._record(
            AuditAction.VERSION_DELETE,
            "version",
            f"{model_name}/{version}",
            before,
            None,
            model_name,
            version,
        )

    # -- traffic ----------------------------------------------------------------

    async def get_traffic(self, model_name: str) -> dict[str, int]:
        """Return ``{version: weight}`` for every version of a model."""
        return await self._traffic.weights(await self.get_model(model_name))

    async def get_traffic_at(self, model_name: str, at: datetime) -> dict[str, int]:
        """Return ``{version: weight}`` of a model as of time ``at``, from the
        desired state kept with each config revision; NotFound if the model did
        not exist then."""
        revisions = RevisionRepository(self._session)
        revision = await revisions.revision_at(at)
        if revision is not None:
            spec = (await revisions.models_at(revision, [model_name]))[model_name]
            if spec is not None:
                weights = dict(spec.weights)
                return {v.name: weights.get(v.name, 0) for v in spec.versions}
        raise NotFound(f"model {model_name!r} did not exist at {at.isoformat()}")

    async def set_traffic(
        self, model_name: str, weights: Mapping[str, int], *, if_match: str | None = None
    ) -> dict[str, int]:
        """Replace the traffic split of a model; versions left out get 0.

        Raise InvalidInput for unknown versions, negative weights, or weights
        that do not add up to 100; PreconditionFailed for a stale ``if_match``.
        """
        model = await self.get_model(model_name)
        split = await self._traffic.split(model)
        before = {name: weight for name, (_id, weight) in split.items()}
        check_if_match(if_match, traffic_etag(model_name, before))
        versions = {name: version_id for name, (version_id, _weight) in split.items()}
        unknown = sorted(set(weights) - set(versions))
        if unknown:
            raise InvalidInput(
                {
                    "message": f"model {model_name!r} has no version(s) {unknown}",
                    "unknown_versions": unknown,
                }
            )
        negative = sorted(name for name, weight in weights.items() if weight < 0)
        if negative:
            raise InvalidInput({"message": "weights must not be negative", "versions": negative})
        total = sum(weights.values())
        if total != TOTAL_WEIGHT:
            raise InvalidInput(
                {"message": f"weights must add up to {TOTAL_WEIGHT}, not {total}", "total": total}
            )
        await self._traffic.set(model, {versions[name]: w for name, w in weights.items()})
        after = {name: weights.get(name, 0) for name in sorted(versions)}
        await self._record(
            AuditAction.TRAFFIC_UPDATE,
            "traffic",
            model_name,
            {"model": model_name, "weights": before},
            {"model": model_name, "weights": after},
            model_name,
        )
        return after

    # -- policies ---------------------------------------------------------------

    async def get_model_policy(self, model_name: str) -> ModelPolicy:
        """Return the routing policy of a model (the empty policy when none is set)."""
        return model_policy_from_document((await self.get_model(model_name)).policy)

    async def set_model_policy(self, model_name: str, policy: ModelPolicy) -> ModelPolicy:
        """Replace the routing policy of a model.

        Raise InvalidInput when it names an unknown version, when a try may
        outlive the request, or when two experiments match the same value.
        """
        model = await self.get_model(model_name)
        versions = [v.name for v in await self._versions.of_model(model)]
        check_model_policy(policy, model_name, versions)
        before = model_policy_from_document(model.policy)
        model.policy = policy_column(policy)
        await self._models.flush()
        await self._record(
            AuditAction.MODEL_POLICY_UPDATE,
            "model_policy",
            model_name,
            {"model": model_name, "policy": encode_policy(before)},
            {"model": model_name, "policy": encode_policy(policy)},
            model_name,
        )
        return policy

    async def get_version_policy(self, model_name: str, version: str) -> VersionPolicy:
        """Return the cluster policy of a version (the empty policy when none is set)."""
        row = await self.get_version(model_name, version)
        return version_policy_from_document(row.policy)

    async def set_version_policy(
        self, model_name: str, version: str, policy: VersionPolicy
    ) -> VersionPolicy:
        """Replace the cluster policy of a version."""
        row = await self.get_version(model_name, version)
        before = version_policy_from_document(row.policy)
        row.policy = policy_column(policy)
        await self._models.flush()
        resource = f"{model_name}/{version}"
        await self._record(
            AuditAction.VERSION_POLICY_UPDATE,
            "version_policy",
            resource,
            {"model": model_name, "version": version, "policy": encode_policy(before)},
            {"model": model_name, "version": version, "policy": encode_policy(policy)},
            model_name,
            version,
        )
        return policy

    # -- helpers ----------------------------------------------------------------

    async def _require_version(self, model: Model, version: str) -> ModelVersion:
        row = await self._versions.get(model, version)
        if row is None:
            raise NotFound(f"model {model.name!r} has no version {version!r}")
        return row

    async def _record(
        self,
        action: str,
        resource_type: str,
        resource_id: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        model: str,
        version: str | None = None,
    ) -> None:
        await record_change(
            self._session,
            self._context,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            before=before,
            after=after,
            model=model,
            version=version,
        )


def model_etag(model: Model) -> str:
    """Return the strong ETag of a model's stored state."""
    return etag_of(model_document(model))


def version_etag(model_name: str, version: ModelVersion) -> str:
    """Return the strong ETag of a version's stored state (its endpoints)."""
    return etag_of(version_document(model_name, version))


def traffic_etag(model_name: str, weights: Mapping[str, int]) -> str:
    """Return the strong ETag of a model's traffic split."""
    return etag_of({"model": model_name, "weights": dict(weights)})


def model_document(model: Model) -> dict[str, Any]:
    """Return the audit-log JSON of a model."""
    return {"name": model.name, "protocol": model.protocol, "description": model.description}


def version_document(model_name: str, version: ModelVersion) -> dict[str, Any]:
    """Return the audit-log JSON of a version and its endpoints."""
    document: dict[str, Any] = {
        "model": model_name,
        "version": version.name,
        "endpoints": [encode_endpoint(endpoint_spec(e)) for e in version.endpoints],
    }
    if version.kubernetes is not None:
        document["kubernetes"] = version.kubernetes
    return document


def _check_one_source(endpoints: Sequence[EndpointSpec], kubernetes: KubernetesRef | None) -> None:
    if endpoints and kubernetes is not None:
        raise InvalidInput("a version lists endpoints or names a kubernetes Service, not both")


def check_unique_endpoints(endpoints: Sequence[EndpointSpec]) -> None:
    """Raise InvalidInput when two endpoints share an address and port."""
    seen: set[tuple[str, int]] = set()
    for endpoint in endpoints:
        key = (endpoint.address, endpoint.port)
        if key in seen:
            raise InvalidInput(f"endpoint {endpoint.address}:{endpoint.port} is listed twice")
        seen.add(key)
