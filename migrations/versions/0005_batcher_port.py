"""Endpoints may name the port of the batcher that runs beside them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("batcher_port", sa.Integer(), nullable=True))
        batch.create_check_constraint(
            "batcher_port_range", "batcher_port IS NULL OR batcher_port BETWEEN 1 AND 65535"
        )


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_constraint("batcher_port_range", type_="check")
        batch.drop_column("batcher_port")
