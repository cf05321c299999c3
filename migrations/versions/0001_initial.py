"""Initial schema: models, versions, endpoints, traffic splits, revisions, audit events.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_versions_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("model_id", "name", name=op.f("uq_model_versions_model_id_name")),
    )
    op.create_index(op.f("ix_model_versions_model_id"), "model_versions", ["model_id"])
    op.create_table(
        "endpoints",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("version_id", BigId, nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("zone", sa.String(63), nullable=True),
        sa.Column("accelerator", sa.String(63), nullable=True),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoints")),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_endpoints_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "version_id", "address", "port", name=op.f("uq_endpoints_version_id_address_port")
        ),
        sa.CheckConstraint("port BETWEEN 1 AND 65535", name=op.f("ck_endpoints_port_range")),
        sa.CheckConstraint("weight BETWEEN 1 AND 128", name=op.f("ck_endpoints_weight_range")),
    )
    op.create_index(op.f("ix_endpoints_version_id"), "endpoints", ["version_id"])
    op.create_table(
        "traffic_splits",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("version_id", BigId, nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_traffic_splits")),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_traffic_splits_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_traffic_splits_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "model_id", "version_id", name=op.f("uq_traffic_splits_model_id_version_id")
        ),
        sa.CheckConstraint("weight BETWEEN 0 AND 100", name=op.f("ck_traffic_splits_weight_range")),
    )
    op.create_index(op.f("ix_traffic_splits_model_id"), "traffic_splits", ["model_id"])
    op.create_index(op.f("ix_traffic_splits_version_id"), "traffic_splits", ["version_id"])
    config_head = op.create_table(
        "config_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_config_head")),
    )
    op.bulk_insert(config_head, [{"id": 1, "revision": 0}])
    op.create_table(
        "config_revisions",
        sa.Column("revision", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_config_revisions")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(32), nullable=False),
        sa.Column("resource_id", sa.String(160), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("revision", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_created_at"), "audit_events", ["created_at"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("config_revisions")
    op.drop_table("config_head")
    op.drop_table("traffic_splits")
    op.drop_table("endpoints")
    op.drop_table("model_versions")
    op.drop_table("models")
