"""The audit log: appends (hash-chained, serialised) and governance queries.

Every audit event in Turnout is written by :meth:`AuditRepository.append`,
keyed with HMAC-SHA256 under the audit key. The key travels with the session:
a sessionmaker built with ``info=audit_session_info(secret)`` gives every
session it makes the key, so no caller passes it by hand; appending through a
session without it is an error, never an unkeyed event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
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
    ChainKey,
    HashScheme,
    canonical_fields,
    find_break,
    keyed_chain_hash,
)
from controlplane.domain.checkpoints import Checkpoint, CheckpointProblem, check_against
from controlplane.domain.clock import utcnow

__all__ = [
    "AUDITED_KEY",
    "AUDIT_SECRET_KEY",
    "AuditHeadState",
    "AuditQuery",
    "AuditRepository",
    "ChainReport",
    "audit_session_info",
    "was_audited",
]

AUDITED_KEY = "turnout.audited"
AUDIT_SECRET_KEY = "turnout.audit_secret"
_HASHED_COLUMNS = [
    getattr(AuditEvent, name) for name in (*CHAINED_FIELDS, "prev_hash", "hash", "hash_version")
]


def audit_session_info(secret: bytes) -> dict[str, Any]:
    """Return the ``info`` of a sessionmaker whose sessions append keyed events."""
    return {AUDIT_SECRET_KEY: secret}


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
    """The result of verifying the whole chain, and the checkpoints if given."""

    ok: bool
    checked: int
    head_id: int
    broken: ChainBreak | None
    checkpoints_checked: int = 0
    checkpoint_problems: tuple[CheckpointProblem, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditHeadState:
    """The committed chain head: the newest event's id and hash, and where keyed
    hashing began."""

    last_id: int
    last_hash: str
    keyed_from: int


def was_audited(session: AsyncSession) -> bool:
    """Return whether the session's current work appended an audit event."""
    return bool(session.info.get(AUDITED_KEY))


# Session.info: the audit head this session's transaction holds locked.
_HEAD_KEY = "turnout.audit_head"


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
        held = self._held()
        if held is not None:
            return held
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
        self._hold(int(row[0]), str(row[1]))
        return int(row[0]), str(row[1])

    def _held(self) -> tuple[int, str] | None:
        """The head this transaction already locked (and moved), if any: the lock
        lasts until the transaction ends, so the head cannot have moved since."""
        entry = self._session.info.get(_HEAD_KEY)
        transaction = self._session.sync_session.get_transaction()
        if entry is None or transaction is None or entry[0] is not transaction:
            return None
        return entry[1], entry[2]

    def _hold(self, last_id: int, last_hash: str) -> None:
        transaction = self._session.sync_session.get_transaction()
        self._session.info[_HEAD_KEY] = (transaction, last_id, last_hash)

    async def append(self, entry: AuditEntry) -> AuditEvent:
        """Append ``entry`` as the next event of the chain, keyed, and flush."""
        secret = self._session.info.get(AUDIT_SECRET_KEY)
        if not isinstance(secret, bytes):
            raise RuntimeError(
                "this session carries no audit key: build its sessionmaker with "
                "info=audit_session_info(secret)"
            )
        last_id, last_hash = await self.lock()
        values: dict[str, Any] = {f.name: getattr(entry, f.name) for f in fields(entry)}
        values.update(id=last_id + 1, created_at=utcnow())
        digest = keyed_chain_hash(canonical_fields(values), last_hash, secret)
        event = AuditEvent(
            **values,
            prev_hash=last_hash,
            hash=digest,
            hash_version=int(HashScheme.HMAC_SHA256),
        )
        self._session.add(event)
        await self._session.flush()
        await self._session.execute(
            update(AuditHead).where(AuditHead.id == 1).values(last_id=event.id, last_hash=digest)
        )
        self._hold(event.id, digest)
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

    async def head(self) -> AuditHeadState:
        """Return the committed chain head (no lock taken)."""
        row = (
            await self._session.execute(
                select(AuditHead.last_id, AuditHead.last_hash, AuditHead.keyed_from).where(
                    AuditHead.id == 1
                )
            )
        ).one()
        return AuditHeadState(int(row[0]), str(row[1]), int(row[2]))

    async def hashes(self, ids: Sequence[int]) -> dict[int, str]:
        """Return the stored hash of each event of ``ids`` that exists."""
        found: dict[int, str] = {}
        unique = sorted(set(ids))
        for start in range(0, len(unique), 1000):
            chunk = unique[start : start + 1000]
            rows = await self._session.execute(
                select(AuditEvent.id, AuditEvent.hash).where(AuditEvent.id.in_(chunk))
            )
            found.update({int(i): str(h) for i, h in rows if h is not None})
        return found

    async def verify(
        self,
        *,
        secret: bytes | None = None,
        checkpoints: Sequence[tuple[int, Checkpoint]] = (),
        batch: int = 5000,
    ) -> ChainReport:
        """Recompute the chain, oldest first, and report the first broken position;
        then check the log against ``checkpoints`` (signed heads kept outside the
        database). Keyed events verify under ``secret``, by default the session's
        audit key; without one, only unkeyed events verify."""
        if secret is None:
            stored = self._session.info.get(AUDIT_SECRET_KEY)
            secret = stored if isinstance(stored, bytes) else None
        head = await self.head()
        key = ChainKey(secret, head.keyed_from) if secret is not None else None
        report = await self._verify_chain(head, key, batch)
        if not report.ok or not checkpoints:
            return report
        hashes = await self.hashes([c.id for _, c in checkpoints if 0 < c.id <= head.last_id])
        problems = check_against(
            checkpoints, head_id=head.last_id, keyed_from=head.keyed_from, hash_of=hashes.get
        )
        return replace(
            report,
            ok=not problems,
            checkpoints_checked=len(checkpoints),
            checkpoint_problems=tuple(problems),
        )

    async def _verify_chain(
        self, head: AuditHeadState, key: ChainKey | None, batch: int
    ) -> ChainReport:
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
                [dict(row) for row in rows], start_position=position, prev_hash=prev_hash, key=key
            )
            if broken is not None:
                return ChainReport(False, position - 1, head.last_id, broken)
            if batch_last is not None:
                last_id = batch_last
            if len(rows) < batch:
                break
            after = int(rows[-1]["id"])
        checked = position - 1
        if (last_id, prev_hash) != (head.last_id, head.last_hash):
            reason = (
                f"the chain ends at event {last_id} but its head records event {head.last_id}: "
                "the newest events were removed or the head was altered"
            )
            return ChainReport(False, checked, head.last_id, ChainBreak(position, None, reason))
        return ChainReport(True, checked, head.last_id, None)

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
