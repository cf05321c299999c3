"""Traffic policies: a JSON policy per model (routing) and per version (cluster).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot ALTER most things in place; Alembic copies the
    # table there and issues a plain ALTER TABLE on Postgres.
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("policy", sa.JSON(), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("policy", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("policy")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("policy")
