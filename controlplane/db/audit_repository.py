"""The audit log: appends (hash-chained, serialised) and governance queries.

Every audit event in Turnout is written by :meth:`AuditRepository.append`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import AuditEvent, AuditHead
from controlplane.domain.audit import (
    CHAINED_FIELDS,
    GENESIS_HASH,
    AuditEntry,
    ChainBreak,
    canonical_fields,
    chain_hash,
    find_break,
)
from controlplane.domain.clock import utcnow

__all__ = ["AUDITED_KEY", "AuditQuery", "AuditRepository", "ChainReport", "was_audited"]

AUDITED_KEY = "turnout.audited"
_HASHED_COLUMNS = [getattr(AuditEvent, name) for name in (*CHAINED_FIELDS, "prev_hash", "hash")]


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of a governance query; None means "any"."""

    actor: str | None = None
    actor_id: int | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    model: str | None = None
    version: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of verifying the whole chain."""

    ok: bool
    checked: int
    head_id: int
    broken: ChainBreak | None


def was_audited(session: AsyncSession) -> bool:
    """Return whether the session's current work appended an audit event."""
    return bool(session.info.get(AUDITED_KEY))


class AuditRepository:
    """The append-only, hash-chained audit log."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def lock(self) -> tuple[int, str]:
        """Lock the chain head for this transaction; return (last id, last hash).

        The ``UPDATE`` takes the head row's write lock (Postgres) or the
        database write lock (SQLite), so appends, and the mutating requests
        that take this lock first, run one at a time and see each other's
        committed changes.
        """
        row = (
            await self._session.execute(
                update(AuditHead)
                .where(AuditHead.id == 1)
                .values(last_id=AuditHead.last_id)
                .returning(AuditHead.last_id, AuditHead.last_hash)
            )
        ).one_or_none()
        if row is None:
            raise RuntimeError("audit_head is empty: run `turnout db upgrade`")
        return int(row[0]), str(row[1])

    async def append(self, entry: AuditEntry) -> AuditEvent:
        """Append ``entry`` as the next event of the chain and flush."""
        last_id, last_hash = await self.lock()
        values: dict[str, Any] = {f.name: getattr(entry, f.name) for f in fields(entry)}
        values.update(id=last_id + 1, created_at=utcnow())
        digest = chain_hash(canonical_fields(values), last_hash)
        event = AuditEvent(**values, prev_hash=last_hash, hash=digest)
        self._session.add(event)
        await self._session.flush()
        await self._session.execute(
            update(AuditHead).where(AuditHead.id == 1).values(last_id=event.id, last_hash=digest)
        )
        self._session.info[AUDITED_KEY] = True
        return event

    async def page(
        self, query: AuditQuery | None = None, *, before_id: int | None, limit: int
    ) -> Sequence[AuditEvent]:
        """Return up to ``limit`` matching events, newest first, with ids below ``before_id``."""
        statement = (await self._filtered(query or AuditQuery())).order_by(AuditEvent.id.desc())
        if before_id is not None:
            statement = statement.where(AuditEvent.id < before_id)
        return (await self._session.scalars(statement.limit(limit))).all()

    async def after(
        self, query: AuditQuery, *, after_id: int, up_to_id: int, limit: int
    ) -> Sequence[AuditEvent]:
        """Return up to ``limit`` matching events with ids above ``after_id`` and at
        most ``up_to_id``, oldest first: one batch of an export."""
        statement = (await self._filtered(query)).order_by(AuditEvent.id)
        statement = statement.where(AuditEvent.id > after_id, AuditEvent.id <= up_to_id)
        return (await self._session.scalars(statement.limit(limit))).all()

    async def stream(self, query: AuditQuery, *, batch: int = 1000) -> AsyncIterator[AuditEvent]:
        """Yield every matching event, oldest first, in batches."""
        base = (await self._filtered(query)).order_by(AuditEvent.id)
        after = 0
        while True:
            rows = (
                await self._session.scalars(base.where(AuditEvent.id > after).limit(batch))
            ).all()
            for row in rows:
                yield row
            if len(rows) < batch:
                return
            after = rows[-1].id

    async def verify(self, *, batch: int = 5000) -> ChainReport:
        """Recompute the chain, oldest first; report the first broken position."""
        head_id, head_hash = (
            await self._session.execute(
                select(AuditHead.last_id, AuditHead.last_hash).where(AuditHead.id == 1)
            )
        ).one()
        position, prev_hash, after, last_id = 1, GENESIS_HASH, -1, 0
        while True:
            rows = (
                (
                    await self._session.execute(
                        select(*_HASHED_COLUMNS)
                        .where(AuditEvent.id > after)
                        .order_by(AuditEvent.id)
                        .limit(batch)
                    )
                )
                .mappings()
                .all()
            )
            broken, position, prev_hash, batch_last = find_break(
                [dict(row) for row in rows], start_position=position, prev_hash=prev_hash
            )
            if broken is not None:
                return ChainReport(False, position - 1, int(head_id), broken)
            if batch_last is not None:
                last_id = batch_last
            if len(rows) < batch:
                break
            after = int(rows[-1]["id"])
        checked = position - 1
        if (last_id, prev_hash) != (int(head_id), head_hash):
            reason = (
                f"the chain ends at event {last_id} but its head records event {head_id}: "
                "the newest events were removed or the head was altered"
            )
            return ChainReport(False, checked, int(head_id), ChainBreak(position, None, reason))
        return ChainReport(True, checked, int(head_id), None)

    async def _filtered(self, query: AuditQuery) -> Select[AuditEvent]:
        statement = select(AuditEvent)
        for column, value in (
            (AuditEvent.actor, query.actor),
            (AuditEvent.actor_id, query.actor_id),
            (AuditEvent.action, query.action),
            (AuditEvent.resource_type, query.resource_type),
            (AuditEvent.resource_id, query.resource_id),
            (AuditEvent.model, query.model),
            (AuditEvent.version, query.version),
            (AuditEvent.outcome, query.outcome),
        ):
            if value is not None:
                statement = statement.where(column == value)
        # Ids are assigned in time order under the chain lock, so a time range is
        # also an id range: two lookups on the created_at index turn it into bounds
        # that every (column, id) index can use.
        if query.since is not None:
            statement = statement.where(AuditEvent.created_at >= query.since)
            first = await self._session.scalar(
                select(AuditEvent.id)
                .where(AuditEvent.created_at >= query.since)
                .order_by(AuditEvent.created_at)
                .limit(1)
            )
            statement = statement.where(AuditEvent.id >= (first if first is not None else 2**62))
        if query.until is not None:
            statement = statement.where(AuditEvent.created_at < query.until)
            last = await self._session.scalar(
                select(AuditEvent.id)
                .where(AuditEvent.created_at < query.until)
                .order_by(AuditEvent.created_at.desc())
                .limit(1)
            )
            statement = statement.where(AuditEvent.id <= (last if last is not None else -1))
        return statement
