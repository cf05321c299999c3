"""Kubernetes discovery: a version may name a Service; discovered endpoints; leases.

``model_versions.kubernetes`` holds a version's Service reference (NULL: its
endpoints are listed). ``discovered_endpoints`` holds, per Service, the
endpoints its watcher last saw (observed state: no revision, no audit).
``leases`` lets one replica at a time watch.

Revision ID: 0013
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("kubernetes", sa.JSON(), nullable=True))
    op.create_table(
        "discovered_endpoints",
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("service", sa.String(63), nullable=False),
        sa.Column("endpoints", sa.JSON(), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "service", name="pk_discovered_endpoints"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("discovered_endpoints")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("kubernetes")
