"""Shadow comparisons: one row per request answered by a model's primary and its
shadow, compared (controlplane.domain.shadow), and the halves waiting for their
other side when the two reached different replicas. Observations, not desired
state: pruned by age and count, never audited.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "shadow_comparisons",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("model", sa.String(63), nullable=False),
        sa.Column("primary_version", sa.String(63), nullable=False),
        sa.Column("shadow_version", sa.String(63), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("primary_status", sa.Integer(), nullable=False),
        sa.Column("shadow_status", sa.Integer(), nullable=False),
        sa.Column("primary_ms", sa.Float(), nullable=False),
        sa.Column("shadow_ms", sa.Float(), nullable=False),
        sa.Column("status_agree", sa.Boolean(), nullable=False),
        sa.Column("body_agree", sa.Boolean(), nullable=True),
        sa.Column("max_abs_diff", sa.Float(), nullable=True),
        sa.Column("cosine", sa.Float(), nullable=True),
        sa.Column("diff", sa.String(200), nullable=True),
        sa.Column("primary_body", sa.LargeBinary(), nullable=True),
        sa.Column("shadow_body", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_comparisons")),
    )
    op.create_index("ix_shadow_comparisons_model_at", "shadow_comparisons", ["model", "at"])
    op.create_table(
        "shadow_halves",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("model", sa.String(63), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("version", sa.String(63), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("digest", sa.String(72), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_halves")),
    )
    op.create_index(op.f("ix_shadow_halves_at"), "shadow_halves", ["at"])
    op.create_index("ix_shadow_halves_model_request", "shadow_halves", ["model", "request_id"])


def downgrade() -> None:
    op.drop_index("ix_shadow_halves_model_request", "shadow_halves")
    op.drop_index(op.f("ix_shadow_halves_at"), "shadow_halves")
    op.drop_table("shadow_halves")
    op.drop_index("ix_shadow_comparisons_model_at", "shadow_comparisons")
    op.drop_table("shadow_comparisons")
