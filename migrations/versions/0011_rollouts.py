"""Canary rollouts: their state, their timeline, the replicas' traffic figures
and the driver's lease.

``rollouts`` holds one row per rollout; a partial unique index allows one
active (progressing or paused) rollout per model. ``rollout_events`` is the
timeline (and what ``GET /v1/events`` streams). ``rollout_figures`` holds each
replica's running totals per model version while a rollout is active, so the
driver sums every replica's traffic. ``leases`` holds named leases (the
rollout driver's, the Kubernetes watcher's): one holder at a time, renewed.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
_ACTIVE = "state IN ('progressing', 'paused')"


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(63), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("step_started_at", TS, nullable=True),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
        sa.CheckConstraint(
            "state IN ('progressing', 'paused', 'promoted', 'rolled_back', 'aborted')",
            name=op.f("ck_rollouts_state_known"),
        ),
        sa.CheckConstraint("step >= 0", name=op.f("ck_rollouts_step_positive")),
    )
    op.create_index("ix_rollouts_model", "rollouts", ["model", "id"])
    op.create_index(
        "uq_rollouts_one_active",
        "rollouts",
        ["model"],
        unique=True,
        sqlite_where=sa.text(_ACTIVE),
        postgresql_where=sa.text(_ACTIVE),
    )
    op.create_table(
        "rollout_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("rollout_id", BigId, nullable=False),
        sa.Column("model", sa.String(63), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_events")),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_events_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_rollout_events_rollout_id", "rollout_events", ["rollout_id", "id"])
    op.create_table(
        "rollout_figures",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("replica", sa.String(64), nullable=False),
        sa.Column("model", sa.String(63), nullable=False),
        sa.Column("version", sa.String(63), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_figures")),
    )
    op.create_index("ix_rollout_figures_model_at", "rollout_figures", ["model", "version", "at"])
    op.create_index("ix_rollout_figures_at", "rollout_figures", ["at"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_rollout_figures_at", table_name="rollout_figures")
    op.drop_index("ix_rollout_figures_model_at", table_name="rollout_figures")
    op.drop_table("rollout_figures")
    op.drop_index("ix_rollout_events_rollout_id", table_name="rollout_events")
    op.drop_table("rollout_events")
    op.drop_index("uq_rollouts_one_active", table_name="rollouts")
    op.drop_index("ix_rollouts_model", table_name="rollouts")
    op.drop_table("rollouts")
