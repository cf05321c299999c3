"""Audit hardening: keyed hashes from here on, TRUNCATE blocked, the head row guarded.

Every event gets a ``hash_version`` (1: SHA-256, 2: HMAC-SHA256 under the
audit key, kept outside the database). Events written before this revision
keep version 1 and verify as before; ``audit_head.keyed_from`` records the
first id that must be keyed (the next event after the upgrade), so an event
from there on with the public hash is a break.

On Postgres a statement trigger refuses ``TRUNCATE`` of ``audit_events`` and
``audit_head`` (row triggers never see TRUNCATE). SQLite has no TRUNCATE; its
``DELETE`` without ``WHERE`` already meets the row trigger of 0004. On both,
the head row can no longer be deleted, moved backwards, or have its keyed
boundary changed.

After a downgrade, keyed events no longer verify (the older code knows one
scheme only).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PG_NO_TRUNCATE = """
CREATE FUNCTION audit_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: TRUNCATE is not allowed', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""

_PG_HEAD_GUARD = """
CREATE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit_head cannot be deleted'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.id <> OLD.id OR NEW.last_id < OLD.last_id OR NEW.keyed_from <> OLD.keyed_from THEN
        RAISE EXCEPTION 'audit_head only moves forward'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$
"""

_SQLITE_HEAD_GUARDS = (
    "CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head BEGIN "
    "SELECT RAISE(ABORT, 'audit_head cannot be deleted'); END",
    "CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head "
    "WHEN NEW.id <> OLD.id OR NEW.last_id < OLD.last_id OR NEW.keyed_from <> OLD.keyed_from "
    "BEGIN SELECT RAISE(ABORT, 'audit_head only moves forward'); END",
)


def upgrade() -> None:
    op.add_column(
        "audit_events",
        sa.Column("hash_version", sa.SmallInteger(), nullable=False, server_default="1"),
    )
    op.add_column(
        "audit_head",
        sa.Column("keyed_from", sa.BigInteger(), nullable=False, server_default="1"),
    )
    op.execute("UPDATE audit_head SET keyed_from = last_id + 1")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_NO_TRUNCATE)
        op.execute(_PG_HEAD_GUARD)
        for table in ("audit_events", "audit_head"):
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION audit_no_truncate()"
            )
        op.execute(
            "CREATE TRIGGER audit_head_forward_only BEFORE UPDATE OR DELETE ON audit_head "
            "FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only()"
        )
    else:
        for statement in _SQLITE_HEAD_GUARDS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_head_forward_only ON audit_head")
        for table in ("audit_events", "audit_head"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS audit_head_forward_only()")
        op.execute("DROP FUNCTION IF EXISTS audit_no_truncate()")
        op.drop_column("audit_head", "keyed_from")
        op.drop_column("audit_events", "hash_version")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_head_forward_only")
        op.execute("DROP TRIGGER IF EXISTS audit_head_no_delete")
        # Native DROP COLUMN (SQLite 3.35+): a batch copy would drop 0004's triggers.
        op.execute("ALTER TABLE audit_head DROP COLUMN keyed_from")
        op.execute("ALTER TABLE audit_events DROP COLUMN hash_version")
