"""``turnout keys`` and ``turnout audit``: straight on the database, API up or down."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.db.audit_repository import AuditRepository, ChainReport
from controlplane.db.engine import create_engine, create_sessionmaker, write_transaction
from controlplane.db.models import ApiKey
from controlplane.domain.audit import ActionContext
from controlplane.domain.keys import Role
from controlplane.services.keys import KeyService

__all__ = ["CLI_ACTOR", "create_key", "list_keys", "revoke_key", "verify_audit"]

CLI_ACTOR = "turnout-cli"
# A command waits this long for the database's write lock (SQLite) when the API is busy.
CLI_WRITE_TIMEOUT_S = 30.0


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
    async with (
        create_sessionmaker(engine)() as session,
        write_transaction(session, timeout_s=CLI_WRITE_TIMEOUT_S),
    ):
        return await KeyService(session, context).create(name, role)


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
            create_sessionmaker(engine)() as session,
            write_transaction(session, timeout_s=CLI_WRITE_TIMEOUT_S),
        ):
            await KeyService(session, context).revoke(key_id)
    finally:
        await engine.dispose()


async def verify_audit(database_url: str) -> ChainReport:
    """Recompute the audit chain; return the report."""
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            return await AuditRepository(session).verify()
    finally:
        await engine.dispose()
