"""Revisions store what they changed: a document per changed model, addressed by
its SHA-256, and the digest of the access state, instead of the whole state.

Existing revisions' whole-state documents are split into per-model rows (a
model's row where it differs from the revision before) and documents.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _digest(document: Any) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def upgrade() -> None:
    # The documents are re-encoded by the project's one codec, so that digests
    # written here equal those the running code computes for the same state.
    from controlplane.domain.documents import (
        decode_access,
        decode_model,
        encode_access,
        encode_model,
    )

    op.create_table(
        "state_documents",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_state_documents")),
    )
    op.create_table(
        "revision_models",
        sa.Column("model", sa.String(63), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("model", "revision", name=op.f("pk_revision_models")),
    )
    op.create_index(
        op.f("ix_revision_models_revision"), "revision_models", ["revision"], unique=False
    )
    with op.batch_alter_table("config_revisions") as batch:
        batch.add_column(sa.Column("access_digest", sa.String(64), nullable=True))
    with op.batch_alter_table("config_head") as batch:
        batch.add_column(sa.Column("access_digest", sa.String(64), nullable=True))

    bind = op.get_bind()
    revisions = sa.table(
        "config_revisions",
        sa.column("revision", sa.BigInteger()),
        sa.column("state", sa.JSON()),
        sa.column("access_digest", sa.String()),
    )
    documents = sa.table("state_documents", sa.column("digest"), sa.column("body", sa.JSON()))
    rows = sa.table(
        "revision_models", sa.column("model"), sa.column("revision"), sa.column("digest")
    )
    stored: set[str] = set()
    previous: dict[str, str] = {}
    for number, state in bind.execute(
        sa.select(revisions.c.revision, revisions.c.state).order_by(revisions.c.revision)
    ):
        if state is None:
            continue  # from before states were stored: it stays unshowable
        if isinstance(state, str):
            state = json.loads(state)
        current: dict[str, str] = {}
        for model in state.get("models", ()):
            body = encode_model(decode_model(model))
            digest = _digest(body)
            current[body["name"]] = digest
            if digest not in stored:
                bind.execute(sa.insert(documents).values(digest=digest, body=body))
                stored.add(digest)
        changes = [
            {"model": name, "revision": number, "digest": digest}
            for name, digest in current.items()
            if previous.get(name) != digest
        ] + [
            {"model": name, "revision": number, "digest": None}
            for name in previous
            if name not in current
        ]
        if changes:
            bind.execute(sa.insert(rows), changes)
        access = encode_access(*decode_access(state))
        access_digest = _digest(access)
        if access_digest not in stored:
            bind.execute(sa.insert(documents).values(digest=access_digest, body=access))
            stored.add(access_digest)
        bind.execute(
            sa.update(revisions)
            .where(revisions.c.revision == number)
            .values(access_digest=access_digest)
        )
        previous = current

    head = sa.table("config_head", sa.column("id"), sa.column("access_digest"))
    last = bind.execute(
        sa.select(revisions.c.access_digest).order_by(revisions.c.revision.desc()).limit(1)
    ).scalar()
    bind.execute(sa.update(head).where(head.c.id == 1).values(access_digest=last))
    with op.batch_alter_table("config_revisions") as batch:
        batch.drop_column("state")
        batch.drop_column("models")


def downgrade() -> None:
    with op.batch_alter_table("config_head") as batch:
        batch.drop_column("access_digest")
    with op.batch_alter_table("config_revisions") as batch:
        batch.add_column(sa.Column("models", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("state", sa.JSON(), nullable=True))
        batch.drop_column("access_digest")
    op.drop_index(op.f("ix_revision_models_revision"), table_name="revision_models")
    op.drop_table("revision_models")
    op.drop_table("state_documents")
