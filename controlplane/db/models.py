"""ORM models: the desired state, the config revision counter and the audit log.

Relationships are ``lazy="raise"``: every load is explicit (``selectinload``),
so no implicit I/O hides in attribute access.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controlplane.db.base import Base, BigId, IdMixin, TimestampMixin, UTCDateTime, utcnow

__all__ = [
    "ApiKey",
    "AuditEvent",
    "AuditHead",
    "ConfigHead",
    "ConfigRevision",
    "DiscoveredEndpoints",
    "Endpoint",
    "IdempotencyRecord",
    "Lease",
    "Model",
    "ModelVersion",
    "RevisionModel",
    "SigningKey",
    "StateDocument",
    "Tenant",
    "TenantCredential",
    "TrafficSplit",
]


class Model(IdMixin, TimestampMixin, Base):
    """A model that clients call by name; it has versions and a traffic split."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(63), unique=True)
    protocol: Mapped[str] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(Text)
    # Routing policy (controlplane.domain.policy.ModelPolicy as a document); None: none set.
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model",
        lazy="raise",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ModelVersion.name",
    )
    splits: Mapped[list[TrafficSplit]] = relationship(
        lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )


class ModelVersion(IdMixin, TimestampMixin, Base):
    """One deployable version of a model, served by a set of endpoints."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "name"),)

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    # Cluster policy (controlplane.domain.policy.VersionPolicy as a document); None: none set.
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The Kubernetes Service whose endpoints serve it (controlplane.domain.documents
    # encode_kubernetes_ref); None: its endpoints are listed.
    kubernetes: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    model: Mapped[Model] = relationship(back_populates="versions", lazy="raise")
    endpoints: Mapped[list[Endpoint]] = relationship(
        back_populates="version",
        lazy="raise",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="(Endpoint.address, Endpoint.port)",
    )


class Endpoint(IdMixin, Base):
    """A model-server replica (address and port) that serves one version."""

    __tablename__ = "endpoints"
    __table_args__ = (
        UniqueConstraint("version_id", "address", "port"),
        CheckConstraint("port BETWEEN 1 AND 65535", name="port_range"),
        CheckConstraint("weight BETWEEN 1 AND 128", name="weight_range"),
        CheckConstraint(
            "batcher_port IS NULL OR batcher_port BETWEEN 1 AND 65535", name="batcher_port_range"
        ),
    )

    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(64))
    port: Mapped[int] = mapped_column(Integer)
    zone: Mapped[str | None] = mapped_column(String(63))
    accelerator: Mapped[str | None] = mapped_column(String(63))
    weight: Mapped[int] = mapped_column(Integer, default=1)
    batcher_port: Mapped[int | None] = mapped_column(Integer)

    version: Mapped[ModelVersion] = relationship(back_populates="endpoints", lazy="raise")


class TrafficSplit(IdMixin, Base):
    """The share of a model's traffic that one of its versions receives."""

    __tablename__ = "traffic_splits"
    __table_args__ = (
        UniqueConstraint("model_id", "version_id"),
        CheckConstraint("weight BETWEEN 0 AND 100", name="weight_range"),
    )

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    weight: Mapped[int] = mapped_column(Integer)


class ConfigHead(Base):
    """A single row holding the current config revision.

    Writers bump it with ``UPDATE ... RETURNING``; the row lock serialises
    them, so revision order is commit order on every database.
    """

    __tablename__ = "config_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger)
    # The access-state digest of the current revision (NULL before states were
    # stored): a change that leaves access alone copies it without a read.
    access_digest: Mapped[str | None] = mapped_column(String(64))


class ConfigRevision(Base):
    """One committed revision of the desired state.

    What it changed is stored beside it: a :class:`RevisionModel` row per model
    it changed, and the digest of the access state it left (a
    :class:`StateDocument`). ``access_digest`` is NULL only for revisions from
    before states were stored, whose state cannot be shown.
    """

    __tablename__ = "config_revisions"

    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    access_digest: Mapped[str | None] = mapped_column(String(64))


class RevisionModel(Base):
    """One model as a revision left it: the digest of its document, or NULL when
    the revision deleted it. A model's state at revision N is its row with the
    greatest revision at or below N."""

    __tablename__ = "revision_models"

    model: Mapped[str] = mapped_column(String(63), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)
    digest: Mapped[str | None] = mapped_column(String(64))


class StateDocument(Base):
    """A model or access document (controlplane.domain.documents), stored once
    under the SHA-256 of its canonical JSON."""

    __tablename__ = "state_documents"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class AuditEvent(Base):
    """An append-only, hash-chained record of one mutating request.

    A trigger refuses UPDATE and DELETE on this table (migration 0004); ``id``
    is assigned by :class:`~controlplane.db.audit_repository.AuditRepository`
    under the chain lock, so id order is chain order.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_actor_id", "actor_id", "id"),
        Index("ix_audit_events_actor", "actor", "id"),
        Index("ix_audit_events_action", "action", "id"),
        Index("ix_audit_events_resource", "resource_type", "resource_id", "id"),
        Index("ix_audit_events_model", "model", "id"),
        Index("ix_audit_events_outcome", "outcome", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(160))
    model: Mapped[str | None] = mapped_column(String(63))
    version: Mapped[str | None] = mapped_column(String(63))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(64))
    revision: Mapped[int | None] = mapped_column(BigInteger)
    source_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(16), server_default="success")
    status_code: Mapped[int | None] = mapped_column(Integer)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))
    # 1: SHA-256, 2: HMAC-SHA256 under the audit key (controlplane.domain.audit.HashScheme)
    hash_version: Mapped[int] = mapped_column(SmallInteger, server_default="1")


class AuditHead(Base):
    """A single row: the newest audit event's id and hash.

    Appenders lock it first (``UPDATE ... RETURNING``), which serialises every
    append, and with it every mutating request; it also anchors the chain's
    end, so removing the newest events is detected too.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
    # The first event id hashed with the audit key (migration 0009).
    keyed_from: Mapped[int] = mapped_column(BigInteger, server_default="1")


class ApiKey(IdMixin, Base):
    """An admin-API key: only its SHA-256 is stored."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("role IN ('viewer', 'operator', 'admin', 'auditor')", name="role"),
    )

    name: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IdempotencyRecord(IdMixin, Base):
    """The first successful response to a POST with an ``Idempotency-Key``."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("api_key_id", "key"),)

    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Tenant(IdMixin, TimestampMixin, Base):
    """A caller of inference traffic: the models it may call and its request rate."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("requests_per_second >= 1", name="rate_positive"),
        CheckConstraint("burst >= 1", name="burst_positive"),
    )

    name: Mapped[str] = mapped_column(String(63), unique=True)
    # The ``sub`` of the tenant's credentials: random, so a tenant deleted and
    # created again under the same name does not inherit the old credentials.
    subject: Mapped[str] = mapped_column(String(64), unique=True)
    models: Mapped[list[str]] = mapped_column(JSON)
    requests_per_second: Mapped[int] = mapped_column(Integer)
    burst: Mapped[int] = mapped_column(Integer)


class TenantCredential(IdMixin, Base):
    """A credential issued to a tenant: only its id (``jti``) is stored, never the token."""

    __tablename__ = "tenant_credentials"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(128))


class SigningKey(IdMixin, Base):
    """The key that signs tenant credentials. The private half never leaves the
    control plane; Envoy gets ``public_jwk`` only."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), unique=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    private_key: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DiscoveredEndpoints(Base):
    """The endpoints of one Kubernetes Service that may take traffic, as its
    watcher last saw them (controlplane.domain.discovery encode_discovered).

    Observed state, not desired state: written without a revision or an audit
    event, and merged into the state before translation on every replica.
    """

    __tablename__ = "discovered_endpoints"

    namespace: Mapped[str] = mapped_column(String(63), primary_key=True)
    service: Mapped[str] = mapped_column(String(63), primary_key=True)
    endpoints: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Lease(Base):
    """A named lease: the replica that holds it (until ``expires_at``) does the
    work that only one replica may do at a time."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
