"""/v1/models/{model}/rollouts: canary rollouts; /v1/events: their transitions as
server-sent events.

GETs need ``read``; starting and steering a rollout needs ``write`` (the roles
that may change traffic). See docs/rollouts.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from controlplane.api.deps import (
    ContextDep,
    RuntimeDep,
    SessionDep,
    require,
    require_for_method,
)
from controlplane.api.schemas import ErrorBody, Name
from controlplane.api.unit_of_work import audited
from controlplane.db.models import Rollout
from controlplane.db.rollout_repository import RolloutRepository
from controlplane.domain.audit import AuditAction
from controlplane.domain.keys import Permission
from controlplane.domain.rollouts import RolloutState
from controlplane.services.rollouts import RolloutService

__all__ = ["events_router", "router"]

router = APIRouter(
    prefix="/v1/models/{model}/rollouts",
    tags=["rollouts"],
    dependencies=[require_for_method(Permission.READ, Permission.WRITE)],
    responses={
        401: {"model": ErrorBody, "description": "no valid API key"},
        403: {"model": ErrorBody, "description": "the key's role lacks the permission"},
        404: {"model": ErrorBody, "description": "unknown model or rollout"},
        409: {"model": ErrorBody, "description": "the rollout's state does not allow it"},
        422: {"model": ErrorBody, "description": "invalid rollout"},
    },
)
events_router = APIRouter(prefix="/v1/events", tags=["rollouts"])
RolloutId = Annotated[int, Path(ge=1, le=2**62, description="the rollout's id")]

# How often the event stream looks for new timeline entries, and sends a comment
# to keep idle connections open.
POLL_S = 0.5
KEEPALIVE_S = 15.0


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: int = Field(description="the candidate's share (percent): 1..100, increasing")
    hold_s: float = Field(default=0, description="stay at least this long (seconds)")


class GateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(
        description="error_rate, success_rate, p50_ms, p90_ms, p99_ms or shadow_agreement"
    )
    max: float | None = None
    min: float | None = None
    max_ratio_to_baseline: float | None = None
    min_samples: int | None = Field(
        default=None, description="samples before the gate judges (default: min_requests)"
    )


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate: str
    baseline: str | None = Field(
        default=None, description="default: the version with the most weight now"
    )
    steps: list[StepIn]
    gates: list[GateIn] = []
    min_requests: int = Field(default=100, description="candidate requests each step needs")
    on_failure: Literal["rollback"] = "rollback"


class TimelineOut(BaseModel):
    id: int
    at: datetime
    kind: str
    detail: dict[str, Any]


class RolloutOut(BaseModel):
    id: int
    model: str
    state: str
    step: int = Field(description="the current step, counted from 0")
    steps: int
    weight: int = Field(description="the candidate's weight now (0 until the first step)")
    candidate: str
    baseline: str
    spec: dict[str, Any]
    gates: list[dict[str, Any]] = Field(
        description="each gate's last evaluation: value, threshold, samples, verdict"
    )
    reason: str | None
    actor: str
    step_started_at: datetime | None
    created_at: datetime
    updated_at: datetime
    timeline: list[TimelineOut] = []


async def _out(service: RolloutService, row: Rollout, *, timeline: bool = True) -> RolloutOut:
    spec = row.spec
    steps = spec["steps"]
    started = row.step_started_at is not None or row.state == RolloutState.PROMOTED.value
    weight = steps[row.step]["weight"] if started else 0
    if row.state in (RolloutState.ROLLED_BACK.value, RolloutState.ABORTED.value):
        weight = 0
    events = await service.timeline(row.id) if timeline else []
    return RolloutOut(
        id=row.id,
        model=row.model,
        state=row.state,
        step=row.step,
        steps=len(steps),
        weight=weight,
        candidate=spec["candidate"],
        baseline=spec["baseline"],
        spec=spec,
        gates=list(row.gates or []),
        reason=row.reason,
        actor=row.actor,
        step_started_at=row.step_started_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        timeline=[TimelineOut(id=e.id, at=e.at, kind=e.kind, detail=e.detail) for e in events],
    )


def _service(session: SessionDep, context: ContextDep) -> RolloutService:
    return RolloutService(session, context)


@router.post("", status_code=status.HTTP_201_CREATED)
@audited(AuditAction.ROLLOUT_START, "rollout")
async def start_rollout(
    model: Name, body: RolloutIn, session: SessionDep, context: ContextDep
) -> RolloutOut:
    """Start a canary rollout: the driver moves the candidate through ``steps``
    while every gate holds, and rolls back at once when one fails."""
    service = _service(session, context)
    row = await service.start(model, body.model_dump(exclude_none=True))
    return await _out(service, row)


@router.get("")
async def list_rollouts(model: Name, session: SessionDep, context: ContextDep) -> list[RolloutOut]:
    """The model's rollouts, newest first (without their timelines)."""
    service = _service(session, context)
    return [await _out(service, r, timeline=False) for r in await service.of_model(model)]


@router.get("/{rollout_id}")
async def get_rollout(
    model: Name, rollout_id: RolloutId, session: SessionDep, context: ContextDep
) -> RolloutOut:
    """One rollout: state, step, each gate's last value and verdict, and its timeline."""
    service = _service(session, context)
    return await _out(service, await service.get(model, rollout_id))


@router.post("/{rollout_id}/pause")
@audited(AuditAction.ROLLOUT_PAUSE, "rollout")
async def pause_rollout(
    model: Name, rollout_id: RolloutId, session: SessionDep, context: ContextDep
) -> RolloutOut:
    """Stop the driver here; the weights stay, and a manual traffic change is allowed."""
    service = _service(session, context)
    return await _out(service, await service.pause(model, rollout_id))


@router.post("/{rollout_id}/resume")
@audited(AuditAction.ROLLOUT_RESUME, "rollout")
async def resume_rollout(
    model: Name, rollout_id: RolloutId, session: SessionDep, context: ContextDep
) -> RolloutOut:
    """Go on from the current step; its hold time starts again."""
    service = _service(session, context)
    return await _out(service, await service.resume(model, rollout_id))


@router.post("/{rollout_id}/abort")
@audited(AuditAction.ROLLOUT_ABORT, "rollout")
async def abort_rollout(
    model: Name, rollout_id: RolloutId, session: SessionDep, context: ContextDep
) -> RolloutOut:
    """End the rollout: the baseline gets all the traffic back."""
    service = _service(session, context)
    return await _out(service, await service.abort(model, rollout_id))


@router.post("/{rollout_id}/promote")
@audited(AuditAction.ROLLOUT_PROMOTE, "rollout")
async def promote_rollout(
    model: Name, rollout_id: RolloutId, session: SessionDep, context: ContextDep
) -> RolloutOut:
    """End the rollout: the candidate gets all the traffic now."""
    service = _service(session, context)
    return await _out(service, await service.promote(model, rollout_id))


def _event_text(event_id: int, kind: str, data: dict[str, Any]) -> str:
    return f"id: {event_id}\nevent: rollout.{kind}\ndata: {json.dumps(data, default=str)}\n\n"


@events_router.get(
    "",
    dependencies=[require(Permission.READ)],
    response_class=StreamingResponse,
    # A stream that never ends on its own: documented in docs/rollouts.md, kept out
    # of the OpenAPI document that clients and fuzzers call every operation of.
    include_in_schema=False,
)
async def events(
    request: Request,
    runtime: RuntimeDep,
    model: Annotated[str | None, Query(max_length=63)] = None,
    last_event_id: Annotated[str | None, Header(pattern=r"^[0-9]{1,18}$")] = None,
    since: Annotated[
        int | None, Query(ge=0, description="start after this event id (as Last-Event-ID)")
    ] = None,
) -> StreamingResponse:
    """Server-sent events of rollout transitions and gate failures, from the
    rollouts' timelines (so any replica serves them). Each event's ``id`` is its
    timeline id: reconnect with ``Last-Event-ID`` to resume. Without one the
    stream starts with what happens next."""
    after = int(last_event_id) if last_event_id is not None else since

    async def stream() -> AsyncIterator[str]:
        nonlocal after
        if after is None:
            async with runtime.sessionmaker() as session:
                after = await RolloutRepository(session).last_event_id()
        yield ": turnout rollout events\n\n"
        idle = 0.0
        # Until the reader leaves or the control plane stops.
        while not runtime.stopping.is_set() and not await request.is_disconnected():
            async with runtime.sessionmaker() as session:
                found = await RolloutRepository(session).events_after(after, model)
            for event in found:
                after = event.id
                yield _event_text(
                    event.id,
                    event.kind,
                    {
                        "rollout": event.rollout_id,
                        "model": event.model,
                        "at": event.at.isoformat(),
                        "kind": event.kind,
                        "detail": event.detail,
                    },
                )
            if found:
                idle = 0.0
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runtime.stopping.wait(), POLL_S)
            idle += POLL_S
            if idle >= KEEPALIVE_S:
                idle = 0.0
                yield ": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
