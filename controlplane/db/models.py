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
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controlplane.db.base import Base, BigId, IdMixin, TimestampMixin, UTCDateTime, utcnow

__all__ = [
    "AuditEvent",
    "ConfigHead",
    "ConfigRevision",
    "Endpoint",
    "Model",
    "ModelVersion",
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
    )

    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(64))
    port: Mapped[int] = mapped_column(Integer)
    zone: Mapped[str | None] = mapped_column(String(63))
    accelerator: Mapped[str | None] = mapped_column(String(63))
    weight: Mapped[int] = mapped_column(Integer, default=1)

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


class ConfigRevision(Base):
    """One committed revision of the desired state."""

    __tablename__ = "config_revisions"

    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)


class AuditEvent(Base):
    """An append-only record of one change to the desired state."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(160))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(64))
    revision: Mapped[int | None] = mapped_column(BigInteger)
