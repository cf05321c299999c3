"""Security: API keys, idempotency records, a hash-chained append-only audit log.

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-30

Existing audit rows (written before this revision) are chained here, oldest
first, so `turnout audit verify` passes right after the upgrade. After this
revision the application can no longer UPDATE or DELETE audit rows: a trigger
refuses it on both databases.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from controlplane.domain.audit import GENESIS_HASH, canonical_fields, chain_hash

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)

_NEW_AUDIT_COLUMNS = (
    sa.Column("actor_id", sa.BigInteger(), nullable=True),
    sa.Column("role", sa.String(16), nullable=True),
    sa.Column("model", sa.String(63), nullable=True),
    sa.Column("version", sa.String(63), nullable=True),
    sa.Column("source_ip", sa.String(64), nullable=True),
    sa.Column("user_agent", sa.String(256), nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False, server_default="success"),
    sa.Column("status_code", sa.Integer(), nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=True),
    sa.Column("hash", sa.String(64), nullable=True),
)

# Every governance filter is an equality on one column plus "newest first" by id,
# so each gets a composite (column, id) index the query walks backwards.
_AUDIT_INDEXES = {
    "ix_audit_events_actor_id": ["actor_id", "id"],
    "ix_audit_events_actor": ["actor", "id"],
    "ix_audit_events_action": ["action", "id"],
    "ix_audit_events_resource": ["resource_type", "resource_id", "id"],
    "ix_audit_events_model": ["model", "id"],
    "ix_audit_events_outcome": ["outcome", "id"],
}

_PG_FUNCTION = """
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.CheckConstraint(
            "role IN ('viewer', 'operator', 'admin', 'auditor')", name=op.f("ck_api_keys_role")
        ),
    )
    op.create_table(
        "idempotency_records",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("api_key_id", BigId, nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=False),
        sa.Column("content_type", sa.String(128), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_records")),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_idempotency_records_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "api_key_id", "key", name=op.f("uq_idempotency_records_api_key_id_key")
        ),
    )
    audit_head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    for column in _NEW_AUDIT_COLUMNS:
        op.add_column("audit_events", column)
    last_id, last_hash = _chain_existing_events()
    op.bulk_insert(audit_head, [{"id": 1, "last_id": last_id, "last_hash": last_hash}])
    for name, columns in _AUDIT_INDEXES.items():
        op.create_index(name, "audit_events", columns)
    op.create_index("ix_config_revisions_created_at", "config_revisions", ["created_at"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{operation.lower()} BEFORE {operation} "
                "ON audit_events BEGIN "
                f"SELECT RAISE(ABORT, 'audit_events is append-only: {operation} is not allowed'); "
                "END"
            )


def _chain_existing_events() -> tuple[int, str]:
    """Hash-chain the rows written before this revision; return the chain head."""
    bind = op.get_bind()
    events = sa.table(
        "audit_events",
        sa.column("id", sa.BigInteger()),
        sa.column("created_at", TS),
        sa.column("actor", sa.String()),
        sa.column("actor_id", sa.BigInteger()),
        sa.column("role", sa.String()),
        sa.column("action", sa.String()),
        sa.column("resource_type", sa.String()),
        sa.column("resource_id", sa.String()),
        sa.column("model", sa.String()),
        sa.column("version", sa.String()),
        sa.column("before", sa.JSON()),
        sa.column("after", sa.JSON()),
        sa.column("request_id", sa.String()),
        sa.column("revision", sa.BigInteger()),
        sa.column("source_ip", sa.String()),
        sa.column("user_agent", sa.String()),
        sa.column("outcome", sa.String()),
        sa.column("status_code", sa.Integer()),
        sa.column("prev_hash", sa.String()),
        sa.column("hash", sa.String()),
    )
    from controlplane.db.base import UTCDateTime

    rows = bind.execute(sa.select(events).order_by(events.c.id)).mappings().all()
    last_id, prev = 0, GENESIS_HASH
    utc = UTCDateTime()
    for row in rows:
        fields = dict(row)
        fields["created_at"] = utc.process_result_value(fields["created_at"], bind.dialect)
        digest = chain_hash(canonical_fields(fields), prev)
        bind.execute(
            events.update()
            .where(events.c.id == row["id"])
            .values(prev_hash=prev, hash=digest, outcome="success")
        )
        last_id, prev = int(row["id"]), digest
    return last_id, prev


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
    op.drop_index("ix_config_revisions_created_at", "config_revisions")
    for name in _AUDIT_INDEXES:
        op.drop_index(name, "audit_events")
    with op.batch_alter_table("audit_events") as batch:
        for column in _NEW_AUDIT_COLUMNS:
            batch.drop_column(column.name)
    op.drop_table("audit_head")
    op.drop_table("idempotency_records")
    op.drop_table("api_keys")
