"""``turnout keys`` and ``turnout audit``: straight on the database, API up or down."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from controlplane.db.audit_repository import ChainReport, audit_session_info
from controlplane.db.engine import create_engine, create_sessionmaker
from controlplane.db.models import ApiKey
from controlplane.domain.audit import ActionContext
from controlplane.domain.keys import Role
from controlplane.services.audit import AuditKeyMissing, load_audit_secret, verify_with_checkpoints
from controlplane.services.keys import KeyService
from controlplane.settings import get_settings

__all__ = ["CLI_ACTOR", "create_key", "list_keys", "revoke_key", "verify_audit"]

CLI_ACTOR = "turnout-cli"


async def create_key(
    database_url: str, name: str, role: Role, *, actor: str = CLI_ACTOR
) -> tuple[ApiKey, str]:
    """Create a key (audited, as ``actor``); return its row and the key itself."""
    engine = create_engine(database_url)
    try:
        return await create_key_with(engine, name, role, actor=actor)
    finally:
        await engine.dispose()


async def create_key_with(
    engine: AsyncEngine, name: str, role: Role, *, actor: str = CLI_ACTOR
) -> tuple[ApiKey, str]:
    """Create a key through ``engine``; return its row and the key itself."""
    context = ActionContext(actor=actor, role=Role.ADMIN.value, status_code=201)
    async with _writer(engine)() as session, session.begin():
        return await KeyService(session, context).create(name, role)


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
        async with _writer(engine)() as session, session.begin():
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
