"""/v1/audit: query, export and verify the audit log (the ``audit`` permission)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from controlplane.api.deps import RuntimeDep, SessionDep, require
from controlplane.api.schemas import AuditEventOut, AuditPage, AuditVerifyOut, ErrorBody
from controlplane.db.audit_repository import AuditQuery, AuditRepository
from controlplane.domain.audit import Outcome
from controlplane.domain.keys import Permission

if TYPE_CHECKING:
    from controlplane.runtime import ControlPlane

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/audit",
    tags=["audit"],
    dependencies=[require(Permission.AUDIT)],
    responses={
        401: {"model": ErrorBody, "description": "no valid API key"},
        403: {"model": ErrorBody, "description": "the key's role lacks the permission"},
        422: {"model": ErrorBody, "description": "bad filter, cursor or limit"},
    },
)

Short = Annotated[str | None, Query(max_length=160)]


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def audit_query(
    actor: Annotated[str | None, Query(max_length=128, description="key name")] = None,
    actor_id: Annotated[int | None, Query(ge=0, le=2**62, description="key id")] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. traffic.update")] = None,
    resource_type: Annotated[str | None, Query(max_length=32)] = None,
    resource_id: Short = None,
    model: Annotated[str | None, Query(max_length=63)] = None,
    version: Annotated[str | None, Query(max_length=63)] = None,
    outcome: Annotated[
        Literal["success", "rejected", "denied", "replayed", "error", "dry_run"] | None, Query()
    ] = None,
    since: Annotated[datetime | None, Query(description="from this time, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="before this time")] = None,
) -> AuditQuery:
    """The governance filters shared by the query and the export."""
    return AuditQuery(
        actor=actor,
        actor_id=actor_id,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        model=model,
        version=version,
        outcome=outcome,
        since=_utc(since),
        until=_utc(until),
    )


QueryDep = Annotated[AuditQuery, Depends(audit_query)]
assert set(Outcome.ALL) == {"success", "rejected", "denied", "replayed", "error", "dry_run"}


@router.get("/events")
async def list_audit_events(
    session: SessionDep,
    query: QueryDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> AuditPage:
    """Audit events matching every given filter, newest first. Pass the returned
    ``next_cursor`` as ``cursor`` to page on."""
    rows = await AuditRepository(session).page(
        query, before_id=int(cursor) if cursor else None, limit=limit + 1
    )
    items = [AuditEventOut.model_validate(row) for row in rows[:limit]]
    next_cursor = str(items[-1].id) if len(rows) > limit else None
    return AuditPage(items=items, next_cursor=next_cursor)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "every matching event, oldest first",
            "content": {"application/x-ndjson": {}, "text/csv": {}},
        }
    },
)
async def export_audit_events(
    runtime: RuntimeDep,
    query: QueryDep,
    format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl",
) -> StreamingResponse:
    """Stream every matching event, oldest first, as JSON lines or CSV."""
    media = "application/x-ndjson" if format == "jsonl" else "text/csv"

    async def lines() -> AsyncIterator[str]:
        if format == "csv":
            yield _csv_row(list(AuditEventOut.model_fields))
        async for events in _export_batches(runtime, query):
            if format == "jsonl":
                yield "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
            else:
                yield "".join(_csv_row([_csv_cell(v) for v in e.values()]) for e in events)

    filename = f"turnout-audit.{format}"
    return StreamingResponse(
        lines(),
        media_type=media,
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/verify")
async def verify_audit_chain(session: SessionDep) -> AuditVerifyOut:
    """Recompute the keyed hash chain over every event; report the first broken
    position. (Checking the log against signed checkpoints, which finds a wiped
    log or a cut tail, is `turnout audit verify --checkpoint FILE`.)"""
    report = await AuditRepository(session).verify()
    return AuditVerifyOut(
        ok=report.ok,
        checked=report.checked,
        head_id=report.head_id,
        first_broken_position=report.broken.position if report.broken else None,
        first_broken_id=report.broken.event_id if report.broken else None,
        reason=report.broken.reason if report.broken else None,
    )


EXPORT_BATCH = 500


async def _export_batches(
    runtime: ControlPlane, query: AuditQuery
) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield the matching events, oldest first, in batches, each read in a short
    transaction of its own.

    No transaction stays open while a batch goes out, so a slow (or vanished)
    client holds no lock (SQLite's write lock among them) and no connection. The
    log is append-only, so the events up to the head read first are a consistent
    export. One batch is one write: a client that has hung up is noticed at the
    next read instead of after a burst of writes to a closed socket.
    """
    async with runtime.sessionmaker() as session, session.begin():
        newest = await AuditRepository(session).page(None, before_id=None, limit=1)
    if not newest:
        return
    head, after = newest[0].id, 0
    while True:
        async with runtime.sessionmaker() as session, session.begin():
            batch = await AuditRepository(session).after(
                query, after_id=after, up_to_id=head, limit=EXPORT_BATCH
            )
            events = [AuditEventOut.model_validate(row).model_dump(mode="json") for row in batch]
        if events:
            yield events
        if len(batch) < EXPORT_BATCH:
            return
        after = batch[-1].id


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _csv_row(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    return buffer.getvalue()
