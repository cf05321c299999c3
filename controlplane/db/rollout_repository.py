"""Rollouts, their timeline and the replicas' figures (the driver's lease is a
:class:`~controlplane.db.leases.LeaseRepository` lease named ``DRIVER_LEASE``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Rollout, RolloutEvent, RolloutFigure
from controlplane.domain.clock import utcnow
from controlplane.domain.rollouts import RolloutState

__all__ = ["DRIVER_LEASE", "FigureRow", "RolloutRepository"]

DRIVER_LEASE = "rollout-driver"
_ACTIVE = (RolloutState.PROGRESSING.value, RolloutState.PAUSED.value)

# (replica, version, at, requests, errors, latency buckets)
FigureRow = tuple[str, str, datetime, int, int, list[int]]


class RolloutRepository:
    """Reads and writes of rollouts in the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, rollout: Rollout) -> Rollout:
        self._session.add(rollout)
        await self._session.flush()
        return rollout

    async def get(self, rollout_id: int) -> Rollout | None:
        return await self._session.get(Rollout, rollout_id, populate_existing=True)

    async def of_model(self, model: str, limit: int = 50) -> Sequence[Rollout]:
        """The model's rollouts, newest first."""
        query = select(Rollout).where(Rollout.model == model).order_by(Rollout.id.desc())
        return (await self._session.scalars(query.limit(limit))).all()

    async def active(self, model: str) -> Rollout | None:
        """The model's active (progressing or paused) rollout, if any."""
        query = select(Rollout).where(Rollout.model == model, Rollout.state.in_(_ACTIVE))
        return (await self._session.scalars(query)).first()

    async def progressing_ids(self) -> list[int]:
        query = select(Rollout.id).where(Rollout.state == RolloutState.PROGRESSING.value)
        return list((await self._session.scalars(query.order_by(Rollout.id))).all())

    async def active_pairs(self) -> dict[str, set[str]]:
        """``{model: {candidate, baseline}}`` of every active rollout."""
        rows = await self._session.execute(
            select(Rollout.model, Rollout.spec).where(Rollout.state.in_(_ACTIVE))
        )
        out: dict[str, set[str]] = {}
        for model, spec in rows:
            out.setdefault(model, set()).update({spec["candidate"], spec["baseline"]})
        return out

    async def move(
        self,
        rollout_id: int,
        *,
        expect: tuple[str, int],
        state: str,
        step: int,
        step_started_at: datetime | None,
        reason: str | None = None,
        gates: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Compare and set: move the rollout to (``state``, ``step``) only if it
        is still at ``expect`` (state, step); return whether it moved."""
        values: dict[str, Any] = {
            "state": state,
            "step": step,
            "step_started_at": step_started_at,
            "updated_at": utcnow(),
        }
        if reason is not None:
            values["reason"] = reason
        if gates is not None:
            values["gates"] = gates
        result = await self._session.execute(
            update(Rollout)
            .where(
                Rollout.id == rollout_id,
                Rollout.state == expect[0],
                Rollout.step == expect[1],
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        assert isinstance(result, CursorResult)
        return result.rowcount == 1

    async def set_gates(
        self, rollout_id: int, expect: tuple[str, int], gates: list[dict[str, Any]]
    ) -> None:
        """Store the gates' last verdicts, if the rollout is still at ``expect``."""
        await self._session.execute(
            update(Rollout)
            .where(
                Rollout.id == rollout_id,
                Rollout.state == expect[0],
                Rollout.step == expect[1],
            )
            .values(gates=gates)
            .execution_options(synchronize_session=False)
        )

    async def add_event(
        self, rollout: Rollout, kind: str, detail: Mapping[str, Any], at: datetime | None = None
    ) -> None:
        self._session.add(
            RolloutEvent(
                rollout_id=rollout.id,
                model=rollout.model,
                at=at or utcnow(),
                kind=kind,
                detail=dict(detail),
            )
        )
        await self._session.flush()

    async def events_of(self, rollout_id: int) -> Sequence[RolloutEvent]:
        query = select(RolloutEvent).where(RolloutEvent.rollout_id == rollout_id)
        return (await self._session.scalars(query.order_by(RolloutEvent.id))).all()

    async def events_after(
        self, after_id: int, model: str | None = None, limit: int = 100
    ) -> Sequence[RolloutEvent]:
        query = select(RolloutEvent).where(RolloutEvent.id > after_id)
        if model is not None:
            query = query.where(RolloutEvent.model == model)
        return (await self._session.scalars(query.order_by(RolloutEvent.id).limit(limit))).all()

    async def last_event_id(self) -> int:
        return int(await self._session.scalar(select(func.max(RolloutEvent.id))) or 0)

    # -- the replicas' figures ---------------------------------------------------

    async def add_figures(self, rows: Sequence[RolloutFigure]) -> None:
        self._session.add_all(rows)
        await self._session.flush()

    async def figures(
        self, model: str, versions: Sequence[str], since: datetime
    ) -> list[FigureRow]:
        """For each replica and version: its last row at or before ``since`` (the
        base) and every row after it (so the caller can take the newest)."""
        columns = (
            RolloutFigure.replica,
            RolloutFigure.version,
            RolloutFigure.at,
            RolloutFigure.requests,
            RolloutFigure.errors,
            RolloutFigure.latency,
        )
        base = (
            select(
                RolloutFigure.replica,
                RolloutFigure.version,
                func.max(RolloutFigure.at).label("at"),
            )
            .where(
                RolloutFigure.model == model,
                RolloutFigure.version.in_(versions),
                RolloutFigure.at <= since,
            )
            .group_by(RolloutFigure.replica, RolloutFigure.version)
            .subquery()
        )
        before = select(*columns).join(
            base,
            (base.c.replica == RolloutFigure.replica)
            & (base.c.version == RolloutFigure.version)
            & (base.c.at == RolloutFigure.at),
        )
        before = before.where(RolloutFigure.model == model)
        after = select(*columns).where(
            RolloutFigure.model == model,
            RolloutFigure.version.in_(versions),
            RolloutFigure.at > since,
        )
        rows: list[FigureRow] = []
        for query in (before, after):
            for replica, version, at, requests, errors, latency in await self._session.execute(
                query
            ):
                rows.append((replica, version, at, int(requests), int(errors), list(latency)))
        return rows

    async def prune_figures(self, before: datetime) -> None:
        await self._session.execute(delete(RolloutFigure).where(RolloutFigure.at < before))
