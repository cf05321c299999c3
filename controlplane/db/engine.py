"""Engine and session factory for SQLite (embedded) and Postgres."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = [
    "UNAVAILABLE_ERRORS",
    "create_engine",
    "create_sessionmaker",
    "is_database_unavailable",
    "is_sqlite",
]

# What a database that is down, unreachable or too slow raises: the driver's
# errors wrapped by SQLAlchemy (an IntegrityError is a conflict, not an outage),
# a pool that found no connection in time, a connection lost mid-transaction,
# and what the drivers raise unwrapped while connecting (refused, timed out).
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    PoolTimeout,
    DisconnectionError,
    PendingRollbackError,
    OSError,  # ConnectionRefusedError, TimeoutError, socket errors
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def is_database_unavailable(exc: BaseException) -> bool:
    """Return whether ``exc`` (or what caused it) means the database cannot be used
    now: down, unreachable, or not answering within its timeouts."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None or isinstance(seen, IntegrityError):
            return False
        if isinstance(seen, UNAVAILABLE_ERRORS):
            return True
        seen = seen.__cause__
    return False


def is_sqlite(url: str) -> bool:
    """Return whether ``url`` names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The sqlite3 driver opens transactions lazily and lets a SAVEPOINT's release
        # commit; take transaction control back so that SQLAlchemy's BEGIN, SAVEPOINT
        # and ROLLBACK mean what they say. (SQLAlchemy docs, "pysqlite: Serializable
        # isolation / Savepoints / Transactional DDL".)
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.close()

    return on_connect


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE takes the write lock up front: two writers that both read first
    # would otherwise deadlock on the upgrade and one would fail at once.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(
    url: str,
    *,
    connect_timeout_s: float | None = None,
    statement_timeout_s: float | None = None,
    **kwargs: Any,
) -> AsyncEngine:
    """Create an async engine; on SQLite, turn on foreign keys and WAL.

    With timeouts, no database call waits unbounded: on Postgres opening a
    connection gives up after ``connect_timeout_s`` and a statement after
    ``statement_timeout_s`` (the server cancels it; should the server not answer
    at all, the client gives up a second later), and waiting for a pooled
    connection after both. On SQLite, a local file, ``statement_timeout_s`` is
    the busy timeout: how long a statement waits for another writer's lock.
    Without timeouts (migrations, the CLI) statements may run as long as they need.
    """
    if is_sqlite(url):
        busy_s = statement_timeout_s if statement_timeout_s is not None else 5.0
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(round(busy_s * 1000)))
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if connect_timeout_s is not None or statement_timeout_s is not None:
        connect_args: dict[str, Any] = dict(kwargs.pop("connect_args", {}))
        waits = 0.0
        if connect_timeout_s is not None:
            connect_args["timeout"] = connect_timeout_s
            waits += connect_timeout_s
        if statement_timeout_s is not None:
            settings = dict(connect_args.get("server_settings", {}))
            settings["statement_timeout"] = str(max(1, round(statement_timeout_s * 1000)))
            connect_args["server_settings"] = settings
            connect_args["command_timeout"] = statement_timeout_s + 1.0
            waits += statement_timeout_s + 1.0
        kwargs["connect_args"] = connect_args
        kwargs.setdefault("pool_timeout", waits)
    return create_async_engine(url, **kwargs)


def create_sessionmaker(
    engine: AsyncEngine, *, info: dict[str, Any] | None = None
) -> async_sessionmaker[AsyncSession]:
    """Return the session factory; sessions do not expire objects on commit, and
    each starts with ``info`` in its ``Session.info`` (the audit key, say)."""
    return async_sessionmaker(engine, expire_on_commit=False, info=info)
