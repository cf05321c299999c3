"""Tenants of inference traffic, their credentials (ids only) and the signing key.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("requests_per_second", sa.Integer(), nullable=False),
        sa.Column("burst", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
        sa.UniqueConstraint("subject", name=op.f("uq_tenants_subject")),
        sa.CheckConstraint("requests_per_second >= 1", name=op.f("ck_tenants_rate_positive")),
        sa.CheckConstraint("burst >= 1", name=op.f("ck_tenants_burst_positive")),
    )
    op.create_table(
        "tenant_credentials",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("jti", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_credentials")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_credentials_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("jti", name=op.f("uq_tenant_credentials_jti")),
    )
    op.create_index(op.f("ix_tenant_credentials_tenant_id"), "tenant_credentials", ["tenant_id"])
    op.create_table(
        "signing_keys",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signing_keys")),
        sa.UniqueConstraint("kid", name=op.f("uq_signing_keys_kid")),
    )


def downgrade() -> None:
    op.drop_table("signing_keys")
    op.drop_index(op.f("ix_tenant_credentials_tenant_id"), "tenant_credentials")
    op.drop_table("tenant_credentials")
    op.drop_table("tenants")
