"""Engine and session factory for SQLite (embedded) and Postgres, and the write
transaction that every change to the database runs in.

SQLite has one writer at a time. Transactions here are of two kinds:

- A read (``session.begin()``, or a session that autobegins) starts a deferred
  transaction: in WAL mode it reads a consistent snapshot and never waits for a
  writer, nor makes one wait.
- A write (:func:`write_transaction`) first waits for its turn among this
  engine's writers (first come, first served, without holding a connection),
  then opens the transaction with ``BEGIN IMMEDIATE``, which takes SQLite's
  write lock up front: a writer that read first and upgraded later could find
  its snapshot stale and fail at once. When another process holds the lock,
  the begin waits (SQLite's busy timeout) and is retried until the write's
  deadline; past it, :class:`DatabaseBusy` is raised and nothing was written.

On Postgres a write transaction is an ordinary transaction: row locks order the
writers, and the deadline does not apply.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    OperationalError,
    PendingRollbackError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = [
    "UNAVAILABLE_ERRORS",
    "DatabaseBusy",
    "WriteQueue",
    "create_engine",
    "create_sessionmaker",
    "is_database_unavailable",
    "is_sqlite",
    "write_queue",
    "write_transaction",
]

# The connection's busy timeout for anything but the begin of a write.
_BUSY_TIMEOUT_MS = 5000
# A write's begin waits at most this long per attempt, so that its deadline holds.
_ATTEMPT_MS = 1000
# Execution options: the busy timeout of a write's BEGIN IMMEDIATE, and the queue.
_WRITE_OPTION = "turnout_write_busy_ms"
_QUEUE_OPTION = "turnout_write_queue"
# Execution option: the connection's busy timeout outside a write's begin.
_BUSY_OPTION = "turnout_busy_ms"


class DatabaseBusy(Exception):
    """The database's write lock did not come free before the write's deadline;
    nothing was written, and the same request may be sent again."""


class WriteQueue:
    """The writers of one engine, served one at a time in the order they came.

    Waiting here rather than in SQLite's busy handler keeps the order (the busy
    handler polls, so a newcomer may overtake), and keeps a waiting writer from
    holding one of the pool's connections.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.waiting = 0

    @asynccontextmanager
    async def turn(self, deadline: float) -> AsyncIterator[None]:
        """Hold the turn of this writer; raise DatabaseBusy when it has not come by
        ``deadline`` (a ``time.monotonic()`` value)."""
        self.waiting += 1
        try:
            await asyncio.wait_for(self._lock.acquire(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise DatabaseBusy("other changes held the database for too long") from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._lock.release()


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
    options = connection.get_execution_options()
    busy_ms = options.get(_WRITE_OPTION)
    if busy_ms is None:
        # Deferred: in WAL mode a reader sees a snapshot and takes no write lock.
        connection.exec_driver_sql("BEGIN")
        return
    # https://www.sqlite.org/lang_transaction.html: IMMEDIATE takes the write lock
    # now, waiting up to the busy timeout for it; a deferred transaction that reads
    # before it writes fails at once (SQLITE_BUSY_SNAPSHOT) if another writer
    # committed in between.
    connection.exec_driver_sql(f"PRAGMA busy_timeout={int(busy_ms)}")
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        connection.exec_driver_sql(
            f"PRAGMA busy_timeout={int(options.get(_BUSY_OPTION, _BUSY_TIMEOUT_MS))}"
        )


def create_engine(
    url: str,
    *,
    connect_timeout_s: float | None = None,
    statement_timeout_s: float | None = None,
    **kwargs: Any,
) -> AsyncEngine:
    """Create an async engine; on SQLite, turn on foreign keys and WAL, and give
    it the queue its writers wait in (:func:`write_queue`). Errors never carry a
    statement's parameters (a key's hash among them) into logs.

    With timeouts, no database call waits unbounded: on Postgres opening a
    connection gives up after ``connect_timeout_s`` and a statement after
    ``statement_timeout_s`` (the server cancels it; should the server not answer
    at all, the client gives up a second later), and waiting for a pooled
    connection after both. On SQLite, a local file, ``statement_timeout_s`` is
    the busy timeout: how long a statement waits for another writer's lock.
    Without timeouts (migrations, the CLI) statements may run as long as they need.
    """
    kwargs.setdefault("hide_parameters", True)
    if is_sqlite(url):
        busy_ms = round((statement_timeout_s or _BUSY_TIMEOUT_MS / 1000) * 1000)
        options = {
            **kwargs.pop("execution_options", {}),
            _QUEUE_OPTION: WriteQueue(),
            _BUSY_OPTION: busy_ms,
        }
        engine = create_async_engine(url, execution_options=options, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(busy_ms))
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


def write_queue(engine: AsyncEngine) -> WriteQueue | None:
    """Return the queue of ``engine``'s writers (SQLite), or None (Postgres)."""
    queue = engine.sync_engine.get_execution_options().get(_QUEUE_OPTION)
    return queue if isinstance(queue, WriteQueue) else None


def _is_locked(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message


@asynccontextmanager
async def write_transaction(session: AsyncSession, *, timeout_s: float) -> AsyncIterator[None]:
    """Run the body in a transaction of ``session`` that may write; commit when the
    body returns, roll back when it raises.

    On SQLite the transaction holds the write lock from its start (see the module
    docstring); if it cannot have it within ``timeout_s``, DatabaseBusy is raised
    before the body runs.
    """
    bind = session.bind
    queue = write_queue(bind) if isinstance(bind, AsyncEngine) else None
    if queue is None:
        async with session.begin():
            yield
        return
    deadline = time.monotonic() + timeout_s
    async with queue.turn(deadline):
        await _begin_immediate(session, deadline)
        try:
            yield
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


async def _begin_immediate(session: AsyncSession, deadline: float) -> None:
    """Begin ``session``'s transaction with the write lock, retrying until ``deadline``."""
    pause = 0.01
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        try:
            await session.connection(
                execution_options={_WRITE_OPTION: max(1, min(_ATTEMPT_MS, remaining_ms))}
            )
        except OperationalError as exc:
            await session.rollback()
            if not _is_locked(exc):
                raise
            if time.monotonic() + pause >= deadline:
                raise DatabaseBusy("another process held the database's write lock") from exc
            # Another process holds the lock; SQLite's own wait ran out for this try.
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)
        else:
            return
