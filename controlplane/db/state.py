"""The one mapping between the tables and the desired state, both ways.

:func:`load_state` reads the tables into a :class:`DesiredState`;
:func:`apply_models` and :func:`apply_access` make the tables equal a state.
``load(apply(s)) == s`` for every state (a property test checks it on both
databases), so a rollback, a restart and a replica all see the same state.

Two halves: the traffic state (models) is what revisions version and a
rollback restores; the access state (tenants, their grants, rate limits and
revocations, and the key set that verifies credentials) is current only. The
key set is derived from the stored signing keys, which no state carries:
:func:`apply_access` never writes it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import (
    ConfigHead,
    Endpoint,
    Model,
    ModelVersion,
    SigningKey,
    Tenant,
    TenantCredential,
    TrafficSplit,
)
from controlplane.db.repositories import ModelRepository, TrafficRepository, VersionRepository
from controlplane.domain.clock import utcnow
from controlplane.domain.credentials import jwks_of
from controlplane.domain.documents import decode_kubernetes_ref, encode_kubernetes_ref
from controlplane.domain.policy import (
    ModelPolicy,
    VersionPolicy,
    model_policy_from_document,
    version_policy_from_document,
)
from controlplane.domain.state import (
    DesiredState,
    EndpointSpec,
    KubernetesRef,
    ModelSpec,
    TenantSpec,
    VersionSpec,
)

__all__ = [
    "apply_access",
    "apply_models",
    "apply_state",
    "endpoint_rows",
    "endpoint_spec",
    "kubernetes_column",
    "load_access",
    "load_models",
    "load_state",
    "policy_column",
]


def policy_column(policy: ModelPolicy | VersionPolicy) -> dict[str, Any] | None:
    """Return a policy as its column value: NULL is the one way to say "none set"."""
    return None if policy == type(policy)() else asdict(policy)


def kubernetes_column(ref: KubernetesRef | None) -> dict[str, Any] | None:
    """Return a version's Service reference as its column value (NULL: none)."""
    return None if ref is None else encode_kubernetes_ref(ref)


def endpoint_spec(row: Endpoint) -> EndpointSpec:
    """Return the spec of one stored endpoint."""
    return EndpointSpec(
        address=row.address,
        port=row.port,
        zone=row.zone,
        accelerator=row.accelerator,
        weight=row.weight,
        batcher_port=row.batcher_port,
    )


def endpoint_rows(endpoints: Sequence[EndpointSpec]) -> list[Endpoint]:
    """Return new (unsaved) endpoint rows for ``endpoints``."""
    return [
        Endpoint(
            address=e.address,
            port=e.port,
            zone=e.zone,
            accelerator=e.accelerator,
            weight=e.weight,
            batcher_port=e.batcher_port,
        )
        for e in endpoints
    ]


async def load_state(session: AsyncSession) -> DesiredState:
    """Return the desired state as of the current revision.

    Call inside one transaction (REPEATABLE READ on Postgres) so the revision
    and the rows come from the same snapshot.
    """
    revision = await session.scalar(select(ConfigHead.revision).where(ConfigHead.id == 1))
    tenants, jwks = await load_access(session)
    return DesiredState(
        revision=int(revision or 0), models=await load_models(session), tenants=tenants, jwks=jwks
    )


async def load_models(
    session: AsyncSession, names: Collection[str] | None = None
) -> tuple[ModelSpec, ...]:
    """Return the specs of the models called ``names`` that exist (every model when
    ``names`` is None), sorted by name."""
    # Plain rows, not ORM objects: this runs on every change. Flush first so that
    # this transaction's own changes are seen.
    await session.flush()
    endpoint_query = select(
        Endpoint.version_id,
        Endpoint.address,
        Endpoint.port,
        Endpoint.zone,
        Endpoint.accelerator,
        Endpoint.weight,
        Endpoint.batcher_port,
    )
    split_query = select(TrafficSplit.version_id, TrafficSplit.weight)
    version_query = select(
        ModelVersion.id,
        ModelVersion.model_id,
        ModelVersion.name,
        ModelVersion.policy,
        ModelVersion.kubernetes,
    )
    model_query = select(Model.id, Model.name, Model.protocol, Model.policy)
    if names is not None:
        model_ids = select(Model.id).where(Model.name.in_(list(names)))
        version_ids = select(ModelVersion.id).where(ModelVersion.model_id.in_(model_ids))
        endpoint_query = endpoint_query.where(Endpoint.version_id.in_(version_ids))
        split_query = split_query.where(TrafficSplit.version_id.in_(version_ids))
        version_query = version_query.where(ModelVersion.model_id.in_(model_ids))
        model_query = model_query.where(Model.id.in_(model_ids))
    endpoints: dict[int, list[EndpointSpec]] = {}
    for row in await session.execute(endpoint_query):
        endpoints.setdefault(row[0], []).append(EndpointSpec(*row[1:]))
    weights: dict[int, int] = dict((await session.execute(split_query)).all())
    versions: dict[int, list[tuple[str, int, VersionSpec]]] = {}
    for version_id, model_id, name, policy, kubernetes in await session.execute(version_query):
        own = sorted(endpoints.get(version_id, ()), key=lambda e: (e.address, e.port))
        spec = VersionSpec(
            name=name,
            endpoints=tuple(own),
            policy=version_policy_from_document(policy),
            kubernetes=decode_kubernetes_ref(kubernetes),
        )
        versions.setdefault(model_id, []).append((name, weights.get(version_id, 0), spec))
    models = []
    for model_id, name, protocol, policy in await session.execute(model_query):
        # Sorted here, not by the database's collation: every read agrees.
        own_versions = sorted(versions.get(model_id, []), key=lambda entry: entry[0])
        models.append(
            ModelSpec(
                name=name,
                protocol=protocol,
                versions=tuple(spec for _, _, spec in own_versions),
                weights=tuple((v, w) for v, w, _ in own_versions if w > 0),
                policy=model_policy_from_document(policy),
            )
        )
    return tuple(sorted(models, key=lambda model: model.name))


async def load_access(session: AsyncSession) -> tuple[tuple[TenantSpec, ...], str | None]:
    """Return the access state: every tenant (by name) and the JWKS Envoy checks."""
    revoked: dict[int, list[str]] = {}
    for tenant_id, jti in await session.execute(
        select(TenantCredential.tenant_id, TenantCredential.jti).where(
            TenantCredential.revoked_at.is_not(None)
        )
    ):
        revoked.setdefault(tenant_id, []).append(jti)
    rows = await session.execute(
        select(
            Tenant.id,
            Tenant.name,
            Tenant.subject,
            Tenant.models,
            Tenant.requests_per_second,
            Tenant.burst,
        )
    )
    tenants = sorted(
        (
            TenantSpec(
                name=name,
                subject=subject,
                models=tuple(sorted(set(models or ()))),
                requests_per_second=rate,
                burst=burst,
                revoked=tuple(sorted(revoked.get(tenant_id, ()))),
            )
            for tenant_id, name, subject, models, rate, burst in rows
        ),
        key=lambda tenant: tenant.name,
    )
    keys = [jwk for (jwk,) in await session.execute(select(SigningKey.public_jwk))]
    keys.sort(key=lambda jwk: str(jwk.get("kid", "")))
    return tuple(tenants), jwks_of(keys)


async def apply_models(session: AsyncSession, target: Mapping[str, ModelSpec | None]) -> None:
    """Make the stored models named in ``target`` equal their specs (None: delete
    the model). Models not named are left as they are."""
    models = ModelRepository(session)
    versions = VersionRepository(session)
    for name, spec in target.items():
        row = await models.get(name)
        if spec is None:
            if row is not None:
                await models.delete(row)
            continue
        if row is None:
            row = await models.add(
                Model(name=name, protocol=spec.protocol, policy=policy_column(spec.policy))
            )
        else:
            row.protocol = spec.protocol
            row.policy = policy_column(spec.policy)
        existing = {v.name: v for v in await versions.of_model(row)}
        wanted = {v.name: v for v in spec.versions}
        for version_name, version_row in existing.items():
            if version_name not in wanted:
                await versions.delete(version_row)
        ids: dict[str, int] = {}
        for version_name, version in wanted.items():
            found = existing.get(version_name)
            if found is None:
                version_row = await versions.add(
                    ModelVersion(
                        model_id=row.id,
                        name=version_name,
                        policy=policy_column(version.policy),
                        kubernetes=kubernetes_column(version.kubernetes),
                        endpoints=endpoint_rows(version.endpoints),
                    )
                )
            else:
                version_row = found
                version_row.policy = policy_column(version.policy)
                version_row.kubernetes = kubernetes_column(version.kubernetes)
                stored = sorted(
                    (endpoint_spec(e) for e in version_row.endpoints),
                    key=lambda e: (e.address, e.port),
                )
                if tuple(stored) != version.endpoints:
                    await versions.replace_endpoints(version_row, endpoint_rows(version.endpoints))
            ids[version_name] = version_row.id
        await TrafficRepository(session).set(row, {ids[v]: w for v, w in spec.weights})
    await session.flush()


async def apply_access(session: AsyncSession, tenants: Sequence[TenantSpec]) -> None:
    """Make the stored tenants, their grants, limits and revocations equal ``tenants``
    (used to seed and restore access state; a rollback never calls it)."""
    wanted = {t.name: t for t in tenants}
    rows = {t.name: t for t in (await session.scalars(select(Tenant))).all()}
    for name, row in rows.items():
        if name not in wanted:
            await session.delete(row)
    await session.flush()
    for name, spec in wanted.items():
        tenant = rows.get(name)
        if tenant is None:
            tenant = Tenant(
                name=name, subject=spec.subject, models=[], requests_per_second=1, burst=1
            )
            session.add(tenant)
        tenant.subject = spec.subject
        tenant.models = list(spec.models)
        tenant.requests_per_second = spec.requests_per_second
        tenant.burst = spec.burst
        await session.flush()
        credentials = {
            c.jti: c
            for c in await session.scalars(
                select(TenantCredential).where(TenantCredential.tenant_id == tenant.id)
            )
        }
        for jti, credential in credentials.items():
            revoked = jti in spec.revoked
            if revoked and credential.revoked_at is None:
                credential.revoked_at = utcnow()
            elif not revoked:
                credential.revoked_at = None
        for jti in spec.revoked:
            if jti not in credentials:
                now = utcnow()
                session.add(
                    TenantCredential(
                        tenant_id=tenant.id,
                        jti=jti,
                        created_at=now,
                        revoked_at=now,
                        created_by="apply",
                    )
                )
    await session.flush()


async def apply_state(session: AsyncSession, state: DesiredState) -> None:
    """Make the stored models and access state equal ``state`` (its key set aside)."""
    current = {m.name for m in await load_models(session)}
    target: dict[str, ModelSpec | None] = dict.fromkeys(current - {m.name for m in state.models})
    target.update((m.name, m) for m in state.models)
    await apply_models(session, target)
    await apply_access(session, state.tenants)
