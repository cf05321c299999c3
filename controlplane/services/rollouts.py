"""Canary rollouts: start, pause, resume, abort, promote, and the driver's moves.

Every method runs in the caller's transaction (the admin API's unit of work,
or the driver's own write transaction under the audit chain lock). A weight
change goes through :meth:`ModelService.set_traffic`, so it is an ordinary
config revision with its one audit event; a move of the driver's is checked
with compare-and-set on (state, step), so two drivers that raced can never
repeat or skip a step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Rollout, RolloutEvent
from controlplane.db.rollout_repository import RolloutRepository
from controlplane.domain.audit import ActionContext, AuditAction
from controlplane.domain.clock import utcnow
from controlplane.domain.errors import Conflict, NotFound, RolloutActive
from controlplane.domain.rollouts import (
    TOTAL_WEIGHT,
    RolloutAction,
    RolloutSpec,
    RolloutState,
    check_spec,
    next_state,
    spec_document,
    spec_from_document,
    step_weights,
)
from controlplane.services.models import ModelService

__all__ = ["RolloutService", "rollout_actor", "rollout_spec"]

log = logging.getLogger(__name__)


def rollout_actor(rollout_id: int) -> str:
    """The audit actor of the weight changes a rollout's driver makes."""
    return f"rollout:{rollout_id}"


def rollout_spec(row: Rollout) -> RolloutSpec:
    """The spec a stored rollout carries."""
    return spec_from_document(row.spec)


class RolloutService:
    """Rollouts of models, in one transaction of the caller's."""

    def __init__(self, session: AsyncSession, context: ActionContext) -> None:
        self._session = session
        self._context = context
        self._rollouts = RolloutRepository(session)

    # -- reads -----------------------------------------------------------------

    async def of_model(self, model: str) -> Sequence[Rollout]:
        await ModelService(self._session, self._context).get_model(model)
        return await self._rollouts.of_model(model)

    async def get(self, model: str, rollout_id: int) -> Rollout:
        row = await self._rollouts.get(rollout_id)
        if row is None or row.model != model:
            raise NotFound(f"model {model!r} has no rollout {rollout_id}")
        return row

    async def timeline(self, rollout_id: int) -> Sequence[RolloutEvent]:
        return await self._rollouts.events_of(rollout_id)

    # -- the caller's actions -------------------------------------------------

    async def start(self, model: str, document: Mapping[str, Any]) -> Rollout:
        """Start a rollout of ``model``; raise InvalidInput for a bad spec,
        RolloutActive (409) while another rollout of the model is active.

        The first step's weights are the driver's first move (within one
        interval), made as the rollout like every step after it."""
        weights = await ModelService(self._session, self._context).get_traffic(model)
        active = await self._rollouts.active(model)
        if active is not None:
            raise _active(model, active)
        default = max(sorted(weights), key=lambda v: weights[v]) if weights else None
        spec = spec_from_document(document, baseline=default)
        check_spec(spec, weights)
        now = utcnow()
        row = Rollout(
            model=model,
            spec=spec_document(spec),
            state=RolloutState.PROGRESSING.value,
            step=0,
            step_started_at=None,
            gates=[],
            reason=None,
            actor=self._context.actor,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._session.begin_nested():
                await self._rollouts.add(row)
        except IntegrityError as exc:  # another start won the race
            raise RolloutActive(
                {"message": f"{model!r} already has an active rollout", "model": model}
            ) from exc
        await self._rollouts.add_event(
            row, "started", {"actor": self._context.actor, "spec": row.spec}, now
        )
        log.info("rollout.started", extra={"rollout": row.id, "model": model})
        return row

    async def pause(self, model: str, rollout_id: int) -> Rollout:
        return await self._manual(model, rollout_id, RolloutAction.PAUSE, "paused")

    async def resume(self, model: str, rollout_id: int) -> Rollout:
        """Resume a paused rollout; the step's hold time starts again."""
        return await self._manual(model, rollout_id, RolloutAction.RESUME, "resumed")

    async def abort(self, model: str, rollout_id: int) -> Rollout:
        """End the rollout: the baseline gets all the traffic back."""
        return await self._manual(model, rollout_id, RolloutAction.ABORT, "aborted")

    async def promote(self, model: str, rollout_id: int) -> Rollout:
        """End the rollout: the candidate gets all the traffic now."""
        return await self._manual(model, rollout_id, RolloutAction.PROMOTE, "promoted")

    async def _manual(
        self, model: str, rollout_id: int, action: RolloutAction, kind: str
    ) -> Rollout:
        row = await self.get(model, rollout_id)
        spec = rollout_spec(row)
        state, step = next_state(RolloutState(row.state), action, row.step, len(spec.steps))
        now = utcnow()
        weights: dict[str, int] | None = None
        if action == RolloutAction.ABORT:
            weights = {spec.baseline: TOTAL_WEIGHT}
        elif action == RolloutAction.PROMOTE:
            weights = {spec.candidate: TOTAL_WEIGHT}
        if weights is not None:
            audit = AuditAction.ROLLOUT_ABORT if kind == "aborted" else AuditAction.ROLLOUT_PROMOTE
            await ModelService(self._session, self._context).set_traffic(
                model, weights, rollout=row.id, action=audit
            )
        started = row.step_started_at
        if action == RolloutAction.RESUME and started is not None:
            started = now
        moved = await self._rollouts.move(
            row.id,
            expect=(row.state, row.step),
            state=state.value,
            step=step,
            step_started_at=started,
            reason=f"{kind} by {self._context.actor}" if not state.active else None,
        )
        if not moved:
            raise Conflict({"message": "the rollout moved meanwhile; try again", "rollout": row.id})
        await self._rollouts.add_event(
            row, kind, {"actor": self._context.actor, "step": step, "weights": weights}, now
        )
        log.info("rollout.%s", kind, extra={"rollout": row.id, "model": model})
        return await self.get(model, rollout_id)

    # -- the driver's moves (the context's actor is the rollout) ---------------

    async def begin(self, row: Rollout, now: datetime) -> bool:
        """Apply the first step's weights; return whether this call did."""
        spec = rollout_spec(row)
        expect = (RolloutState.PROGRESSING.value, 0)
        if row.state != expect[0] or row.step != 0 or row.step_started_at is not None:
            return False
        weights = step_weights(spec, 0)
        if not await self._rollouts.move(
            row.id, expect=expect, state=expect[0], step=0, step_started_at=now
        ):
            return False
        await ModelService(self._session, self._context).set_traffic(
            row.model, weights, rollout=row.id
        )
        await self._rollouts.add_event(row, "step", {"step": 0, "weights": weights}, now)
        return True

    async def advance(self, row: Rollout, gates: list[dict[str, Any]], now: datetime) -> bool:
        """Move to the next step (the last one promotes); return whether this call did."""
        spec = rollout_spec(row)
        state, step = next_state(
            RolloutState(row.state), RolloutAction.ADVANCE, row.step, len(spec.steps)
        )
        if not await self._rollouts.move(
            row.id,
            expect=(row.state, row.step),
            state=state.value,
            step=step,
            step_started_at=now,
            gates=gates,
            reason="every step passed" if state == RolloutState.PROMOTED else None,
        ):
            return False
        weights = step_weights(spec, step)
        await ModelService(self._session, self._context).set_traffic(
            row.model, weights, rollout=row.id
        )
        await self._rollouts.add_event(row, "step", {"step": step, "weights": weights}, now)
        if state == RolloutState.PROMOTED:
            await self._rollouts.add_event(row, "promoted", {"step": step}, now)
        log.info("rollout.step", extra={"rollout": row.id, "step": step, "state": state.value})
        return True

    async def roll_back(
        self, row: Rollout, reason: str, gates: list[dict[str, Any]], now: datetime
    ) -> bool:
        """Give the baseline all the traffic at once; return whether this call did."""
        spec = rollout_spec(row)
        state, step = next_state(
            RolloutState(row.state), RolloutAction.ROLLBACK, row.step, len(spec.steps)
        )
        if not await self._rollouts.move(
            row.id,
            expect=(row.state, row.step),
            state=state.value,
            step=step,
            step_started_at=row.step_started_at,
            reason=reason,
            gates=gates,
        ):
            return False
        weights = {spec.baseline: TOTAL_WEIGHT}
        await ModelService(self._session, self._context).set_traffic(
            row.model, weights, rollout=row.id
        )
        failed = [g for g in gates if g["verdict"] == "fail"]
        await self._rollouts.add_event(
            row, "gate_failed", {"step": step, "reason": reason, "gates": failed}, now
        )
        await self._rollouts.add_event(
            row, "rolled_back", {"step": step, "reason": reason, "weights": weights}, now
        )
        log.warning("rollout.rolled_back", extra={"rollout": row.id, "reason": reason})
        return True

    async def end(self, row: Rollout, reason: str, now: datetime) -> bool:
        """Abort a rollout the driver cannot go on with (its model or a version is gone)."""
        if not await self._rollouts.move(
            row.id,
            expect=(row.state, row.step),
            state=RolloutState.ABORTED.value,
            step=row.step,
            step_started_at=row.step_started_at,
            reason=reason,
        ):
            return False
        await self._rollouts.add_event(row, "aborted", {"step": row.step, "reason": reason}, now)
        return True


def _active(model: str, active: Rollout) -> RolloutActive:
    return RolloutActive(
        {
            "message": f"{model!r} already has an active rollout ({active.id}, {active.state}); "
            "abort or promote it first",
            "rollout": active.id,
            "state": active.state,
        }
    )
