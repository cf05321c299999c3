"""``turnout keys`` and ``turnout audit``: straight on the database, API up or down."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from controlplane.db.audit_repository import ChainReport, audit_session_info
from controlplane.db.engine import create_engine, create_sessionmaker, write_transaction
from controlplane.db.key_repository import ApiKeyRepository
from controlplane.db.models import ApiKey
from controlplane.domain.audit import ActionContext
from controlplane.domain.keys import Role, hash_key, is_well_formed
from controlplane.services.audit import AuditKeyMissing, load_audit_secret, verify_with_checkpoints
from controlplane.services.keys import KeyService
from controlplane.settings import get_settings

__all__ = [
    "CLI_ACTOR",
    "create_key",
    "create_key_with",
    "list_keys",
    "reuse_or_create_key",
    "revoke_key",
    "verify_audit",
]

CLI_ACTOR = "turnout-cli"
# A command waits this long for the database's write lock (SQLite) when the API is busy.
CLI_WRITE_TIMEOUT_S = 30.0


async def create_key(
    database_url: str,
    name: str,
    role: Role,
    *,
    actor: str = CLI_ACTOR,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key (audited, as ``actor``), expiring at ``expires_at`` (None: never);
    return its row and the key itself."""
    engine = create_engine(database_url)
    try:
        return await create_key_with(engine, name, role, actor=actor, expires_at=expires_at)
    finally:
        await engine.dispose()


async def create_key_with(
    engine: AsyncEngine,
    name: str,
    role: Role,
    *,
    actor: str = CLI_ACTOR,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key through ``engine``; return its row and the key itself."""
    context = ActionContext(actor=actor, role=Role.ADMIN.value, status_code=201)
    async with (
        _writer(engine)() as session,
        write_transaction(session, timeout_s=CLI_WRITE_TIMEOUT_S),
    ):
        return await KeyService(session, context).create(name, role, expires_at=expires_at)


async def reuse_or_create_key(
    engine: AsyncEngine, name: str, role: Role, stored: str | None, *, actor: str
) -> tuple[str, bool]:
    """Return ``stored`` and True while it is a live key named ``name`` made by
    ``actor``; else a new key and False, after revoking every other live key of
    that name and maker, so that at most one of them works at a time."""
    if stored is not None and is_well_formed(stored):
        async with create_sessionmaker(engine)() as session:
            row = await ApiKeyRepository(session).active_by_hash(hash_key(stored))
        if row is not None and row.name == name and row.created_by == actor:
            return stored, True
    context = ActionContext(actor=actor, role=Role.ADMIN.value, status_code=204)
    async with (
        _writer(engine)() as session,
        write_transaction(session, timeout_s=CLI_WRITE_TIMEOUT_S),
    ):
        service = KeyService(session, context)
        for row in await service.list():
            if row.name == name and row.created_by == actor and row.revoked_at is None:
                await service.revoke(row.id)
    _, key = await create_key_with(engine, name, role, actor=actor)
    return key, False


def _writer(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that append keyed audit events (the key from the settings)."""
    secret = load_audit_secret(get_settings(), create=True)
    return create_sessionmaker(engine, info=audit_session_info(secret))


async def list_keys(database_url: str) -> list[ApiKey]:
    """Return every key, oldest first."""
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return list(await KeyService(session, ActionContext(actor=CLI_ACTOR)).list())
    finally:
        await engine.dispose()


async def revoke_key(database_url: str, key_id: int) -> None:
    """Revoke key ``key_id`` (audited); raise NotFound if there is no active one."""
    engine = create_engine(database_url)
    context = ActionContext(actor=CLI_ACTOR, role=Role.ADMIN.value, status_code=204)
    try:
        async with (
            _writer(engine)() as session,
            write_transaction(session, timeout_s=CLI_WRITE_TIMEOUT_S),
        ):
            await KeyService(session, context).revoke(key_id)
    finally:
        await engine.dispose()


async def verify_audit(database_url: str, checkpoint_file: Path | None = None) -> ChainReport:
    """Recompute the audit chain, keyed events under the configured audit key, and
    check the log against the signed checkpoints in ``checkpoint_file``; return
    the report. Without a key only unkeyed events verify; checkpoints need it."""
    try:
        secret: bytes | None = load_audit_secret(get_settings(), create=False)
    except AuditKeyMissing:
        if checkpoint_file is not None:
            raise
        secret = None
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            return await verify_with_checkpoints(session, secret, checkpoint_file)
    finally:
        await engine.dispose()
