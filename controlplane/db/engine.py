"""Engine and session factory for SQLite (embedded) and Postgres."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = ["create_engine", "create_sessionmaker", "is_sqlite"]


def is_sqlite(url: str) -> bool:
    """Return whether ``url`` names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 driver opens transactions lazily and lets a SAVEPOINT's release
    # commit; take transaction control back so that SQLAlchemy's BEGIN, SAVEPOINT
    # and ROLLBACK mean what they say. (SQLAlchemy docs, "pysqlite: Serializable
    # isolation / Savepoints / Transactional DDL".)
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE takes the write lock up front: two writers that both read first
    # would otherwise deadlock on the upgrade and one would fail at once.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """Create an async engine; on SQLite, turn on foreign keys and WAL."""
    if is_sqlite(url):
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


def create_sessionmaker(
    engine: AsyncEngine, *, info: dict[str, Any] | None = None
) -> async_sessionmaker[AsyncSession]:
    """Return the session factory; sessions do not expire objects on commit, and
    each starts with ``info`` in its ``Session.info`` (the audit key, say)."""
    return async_sessionmaker(engine, expire_on_commit=False, info=info)
