"""Repositories: the only code that writes SQL. They flush, never commit."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload, undefer

from controlplane.db.audit_repository import AuditRepository
from controlplane.db.models import (
    ConfigHead,
    ConfigRevision,
    Endpoint,
    Model,
    ModelVersion,
    SigningKey,
    Tenant,
    TenantCredential,
    TrafficSplit,
)
from controlplane.domain.credentials import jwks_of
from controlplane.domain.policy import model_policy_from_document, version_policy_from_document
from controlplane.domain.state import (
    DesiredState,
    EndpointSpec,
    ModelSpec,
    TenantSpec,
    VersionSpec,
    state_document,
)
from controlplane.notify import CHANNEL as NOTIFY_CHANNEL

__all__ = [
    "AuditRepository",
    "ModelRepository",
    "RevisionRepository",
    "StateRepository",
    "TrafficRepository",
    "VersionRepository",
]


class ModelRepository:
    """Models by name."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, name: str) -> Model | None:
        """Return the model called ``name``, or None."""
        return await self._session.scalar(select(Model).where(Model.name == name))

    async def all(self) -> Sequence[Model]:
        """Return every model, sorted by name."""
        return (await self._session.scalars(select(Model).order_by(Model.name))).all()

    async def add(self, model: Model) -> Model:
        """Insert ``model`` and flush, so a duplicate name raises here."""
        self._session.add(model)
        await self._session.flush()
        return model

    async def delete(self, model: Model) -> None:
        """Delete ``model``; its versions, endpoints and splits go with it."""
        await self._session.execute(delete(Model).where(Model.id == model.id))

    async def flush(self) -> None:
        """Flush pending changes to the database."""
        await self._session.flush()


class VersionRepository:
    """Versions of one model, with their endpoints loaded."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, model: Model, name: str) -> ModelVersion | None:
        """Return version ``name`` of ``model`` with its endpoints, or None."""
        return await self._session.scalar(
            select(ModelVersion)
            .where(ModelVersion.model_id == model.id, ModelVersion.name == name)
            .options(selectinload(ModelVersion.endpoints))
        )

    async def of_model(self, model: Model) -> Sequence[ModelVersion]:
        """Return the versions of ``model`` sorted by name, endpoints loaded."""
        return (
            await self._session.scalars(
                select(ModelVersion)
                .where(ModelVersion.model_id == model.id)
                .order_by(ModelVersion.name)
                .options(selectinload(ModelVersion.endpoints))
            )
        ).all()

    async def add(self, version: ModelVersion) -> ModelVersion:
        """Insert ``version`` (with its endpoints) and flush."""
        self._session.add(version)
        await self._session.flush()
        return version

    async def replace_endpoints(self, version: ModelVersion, endpoints: list[Endpoint]) -> None:
        """Replace every endpoint of ``version`` with ``endpoints``."""
        await self._session.execute(delete(Endpoint).where(Endpoint.version_id == version.id))
        for endpoint in endpoints:
            endpoint.version_id = version.id
        self._session.add_all(endpoints)
        await self._session.flush()
        self._session.expire(version, ["endpoints"])
        await self._session.refresh(version, ["endpoints", "updated_at"])

    async def delete(self, version: ModelVersion) -> None:
        """Delete ``version`` and its endpoints and split rows."""
        await self._session.execute(delete(ModelVersion).where(ModelVersion.id == version.id))


class TrafficRepository:
    """Traffic weights of a model's versions."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def weights(self, model: Model) -> dict[str, int]:
        """Return ``{version name: weight}`` for every version of ``model`` (0 if unset)."""
        rows = await self._session.execute(
            select(ModelVersion.name, TrafficSplit.weight)
            .select_from(ModelVersion)
            .outerjoin(TrafficSplit, TrafficSplit.version_id == ModelVersion.id)
            .where(ModelVersion.model_id == model.id)
            .order_by(ModelVersion.name)
        )
        return {name: weight or 0 for name, weight in rows}

    async def set(self, model: Model, weights_by_version_id: dict[int, int]) -> None:
        """Replace the split of ``model``: one row per version with a weight above 0."""
        await self._session.execute(delete(TrafficSplit).where(TrafficSplit.model_id == model.id))
        self._session.add_all(
            TrafficSplit(model_id=model.id, version_id=version_id, weight=weight)
            for version_id, weight in weights_by_version_id.items()
            if weight > 0
        )
        await self._session.flush()


class RevisionRepository:
    """The monotonic config revision."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def bump(
        self,
        *,
        actor: str,
        action: str,
        request_id: str | None,
        models: Sequence[str] | None = None,
    ) -> int:
        """Increment the revision and record it; return the new number.

        ``models`` names the models the change touched (None: anything may have
        changed), so that replicas re-read only those. The ``UPDATE`` takes the
        head row's lock, so concurrent writers commit in revision order.
        """
        revision = await self._session.scalar(
            update(ConfigHead)
            .where(ConfigHead.id == 1)
            .values(revision=ConfigHead.revision + 1)
            .returning(ConfigHead.revision)
        )
        if revision is None:
            raise RuntimeError("config_head is empty: run `turnout db upgrade`")
        row = ConfigRevision(
            revision=revision,
            actor=actor,
            action=action,
            request_id=request_id,
            models=sorted(set(models)) if models is not None else None,
        )
        self._session.add(row)
        await self._session.flush()
        # The desired state as of this revision, for history, diffs and rollback.
        row.state = state_document(await StateRepository(self._session).load())
        await self._session.flush()
        if self._session.get_bind().dialect.name == "postgresql":
            # Delivered to every LISTENing replica when (and only if) this commits.
            await self._session.execute(
                text("SELECT pg_notify(:channel, :revision)"),
                {"channel": NOTIFY_CHANNEL, "revision": str(revision)},
            )
        return int(revision)

    async def page(self, *, before: int | None, limit: int) -> Sequence[ConfigRevision]:
        """Return up to ``limit`` revisions (without states), newest first, below ``before``."""
        query = select(ConfigRevision).order_by(ConfigRevision.revision.desc()).limit(limit)
        if before is not None:
            query = query.where(ConfigRevision.revision < before)
        return (await self._session.scalars(query)).all()

    async def get(self, revision: int) -> ConfigRevision | None:
        """Return one revision with its stored state, or None."""
        return await self._session.scalar(
            select(ConfigRevision)
            .where(ConfigRevision.revision == revision)
            .options(undefer(ConfigRevision.state))
        )

    async def state_at(self, at: datetime) -> dict[str, Any] | None:
        """Return the desired-state document of the newest revision committed at or
        before ``at`` (None before the first revision)."""
        state: dict[str, Any] | None = await self._session.scalar(
            select(ConfigRevision.state)
            .where(ConfigRevision.created_at <= at)
            .order_by(ConfigRevision.revision.desc())
            .limit(1)
        )
        return state

    async def changed_models(self, after: int) -> tuple[int, set[str] | None]:
        """Return the latest revision and the models changed since revision ``after``
        (None when some revision in between may have changed anything)."""
        current = await self.current()
        rows = (
            await self._session.execute(
                select(ConfigRevision.revision, ConfigRevision.models).where(
                    ConfigRevision.revision > after, ConfigRevision.revision <= current
                )
            )
        ).all()
        if len(rows) != current - after:
            return current, None  # a revision is missing: trust nothing
        changed: set[str] = set()
        for _revision, models in rows:
            if models is None:
                return current, None
            changed.update(models)
        return current, changed

    async def current(self) -> int:
        """Return the latest committed revision."""
        revision = await self._session.scalar(select(ConfigHead.revision).where(ConfigHead.id == 1))
        return int(revision or 0)


class StateRepository:
    """Reads the whole desired state, for the xDS translator."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def load(self) -> DesiredState:
        """Return the desired state as of the current revision.

        Call inside one transaction (REPEATABLE READ on Postgres) so the
        revision and the rows come from the same snapshot.
        """
        revision = await RevisionRepository(self._session).current()
        return DesiredState(
            revision=revision,
            models=await self.models(),
            tenants=await self._tenants(),
            jwks=jwks_of(
                [
                    jwk
                    for (jwk,) in await self._session.execute(
                        select(SigningKey.public_jwk).order_by(SigningKey.kid)
                    )
                ]
            ),
        )

    async def models(self, names: Collection[str] | None = None) -> tuple[ModelSpec, ...]:
        """Return the specs of the models called ``names`` that exist (every model
        when ``names`` is None), sorted by name."""
        # Plain rows, not ORM objects: this runs on every change, over every model.
        # Flush first so that this transaction's own changes are seen.
        await self._session.flush()
        endpoint_query = select(
            Endpoint.version_id,
            Endpoint.address,
            Endpoint.port,
            Endpoint.zone,
            Endpoint.accelerator,
            Endpoint.weight,
            Endpoint.batcher_port,
        ).order_by(Endpoint.version_id, Endpoint.address, Endpoint.port)
        split_query = select(TrafficSplit.version_id, TrafficSplit.weight)
        version_query = select(
            ModelVersion.id, ModelVersion.model_id, ModelVersion.name, ModelVersion.policy
        ).order_by(ModelVersion.model_id, ModelVersion.name)
        model_query = select(Model.id, Model.name, Model.protocol, Model.policy).order_by(
            Model.name
        )
        if names is not None:
            model_ids = select(Model.id).where(Model.name.in_(list(names)))
            version_ids = select(ModelVersion.id).where(ModelVersion.model_id.in_(model_ids))
            endpoint_query = endpoint_query.where(Endpoint.version_id.in_(version_ids))
            split_query = split_query.where(TrafficSplit.version_id.in_(version_ids))
            version_query = version_query.where(ModelVersion.model_id.in_(model_ids))
            model_query = model_query.where(Model.id.in_(model_ids))
        endpoints: dict[int, list[EndpointSpec]] = {}
        for row in await self._session.execute(endpoint_query):
            endpoints.setdefault(row[0], []).append(EndpointSpec(*row[1:]))
        weights: dict[int, int] = dict((await self._session.execute(split_query)).all())
        versions: dict[int, list[tuple[str, int, VersionSpec]]] = {}
        for version_id, model_id, name, policy in await self._session.execute(version_query):
            spec = VersionSpec(
                name=name,
                endpoints=tuple(endpoints.get(version_id, ())),
                policy=version_policy_from_document(policy),
            )
            versions.setdefault(model_id, []).append((name, weights.get(version_id, 0), spec))
        for own in versions.values():
            own.sort(key=lambda entry: entry[0])  # by name, the same on every database
        models = []
        for model_id, name, protocol, policy in await self._session.execute(model_query):
            own = versions.get(model_id, [])
            models.append(
                ModelSpec(
                    name=name,
                    protocol=protocol,
                    versions=tuple(spec for _, _, spec in own),
                    weights=tuple((v, w) for v, w, _ in own if w > 0),
                    policy=model_policy_from_document(policy),
                )
            )
        # Sorted here, not by the database's collation: full and partial reads of
        # the same state must agree, on SQLite as on Postgres.
        return tuple(sorted(models, key=lambda model: model.name))

    async def _tenants(self) -> tuple[TenantSpec, ...]:
        revoked: dict[int, list[str]] = {}
        for tenant_id, jti in await self._session.execute(
            select(TenantCredential.tenant_id, TenantCredential.jti)
            .where(TenantCredential.revoked_at.is_not(None))
            .order_by(TenantCredential.tenant_id, TenantCredential.jti)
        ):
            revoked.setdefault(tenant_id, []).append(jti)
        return tuple(
            TenantSpec(
                name=name,
                subject=subject,
                models=tuple(sorted(models or ())),
                requests_per_second=rate,
                burst=burst,
                revoked=tuple(revoked.get(tenant_id, ())),
            )
            for tenant_id, name, subject, models, rate, burst in await self._session.execute(
                select(
                    Tenant.id,
                    Tenant.name,
                    Tenant.subject,
                    Tenant.models,
                    Tenant.requests_per_second,
                    Tenant.burst,
                ).order_by(Tenant.name)
            )
        )
