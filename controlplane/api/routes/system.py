"""Health, readiness, connected proxies and the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from sqlalchemy import text

from controlplane.api.deps import RuntimeDep, SessionDep
from controlplane.api.errors import error_response
from controlplane.api.schemas import AuditEventOut, AuditPage, ErrorBody, ProxyOut, TypeStatusOut
from controlplane.db.repositories import AuditRepository
from controlplane.domain.errors import NotFound
from controlplane.xds.resources import SHORT_NAMES
from controlplane.xds.status import ProxyRegistry

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["health"],
    responses={503: {"model": ErrorBody, "description": "not ready"}},
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: the database answers and the xDS state is loaded. Also shows the
    loaded revision and its resource versions, which are equal on every replica."""
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return error_response(503, "database_unavailable", str(exc)[:200])
    if not runtime.sync.loaded.is_set():
        return error_response(503, "state_not_loaded", "the xDS state has not been loaded yet")
    snapshot = runtime.cache.snapshot
    versions = (
        {SHORT_NAMES[t]: v for t, v in snapshot.versions.items()} if snapshot is not None else {}
    )
    return JSONResponse(
        {"status": "ready", "revision": runtime.sync.revision, "xds_versions": versions}
    )


@router.get("/v1/proxies", tags=["proxies"])
async def list_proxies(runtime: RuntimeDep) -> list[ProxyOut]:
    """Every Envoy connected to this replica, with what it was sent and ACKed per type."""
    proxies: list[ProxyOut] = []
    for connection in runtime.registry.connections():
        snapshot = runtime.cache.snapshot_for(connection.zone)
        types = {}
        for type_url, (state, status) in ProxyRegistry.statuses(connection, snapshot).items():
            types[SHORT_NAMES[type_url]] = TypeStatusOut(
                status=status.value,
                sent_version=state.sent_version,
                acked_version=state.acked_version,
                current_version=snapshot.version(type_url) if snapshot else None,
                error=state.error,
                sent_at=state.sent_at,
                acked_at=state.acked_at,
            )
        proxies.append(
            ProxyOut(
                node_id=connection.node_id,
                cluster=connection.cluster,
                zone=connection.zone,
                xds=connection.variant,
                connected_at=connection.connected_at,
                types=types,
            )
        )
    return proxies


@router.get(
    "/v1/proxies/{node_id}/config",
    tags=["proxies"],
    responses={404: {"model": ErrorBody, "description": "no such proxy is connected"}},
)
async def proxy_config(node_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    """What this replica last sent the proxy: per type, the version and the resources
    the proxy holds, as JSON (Envoy's own field names)."""
    connection = runtime.registry.find(node_id)
    if connection is None:
        raise NotFound(f"no proxy with node id {node_id!r} is connected to this replica")
    config: dict[str, Any] = {"node_id": node_id, "xds": connection.variant}
    for type_url, state in connection.types.items():
        snapshot = state.sent_snapshot
        resources = snapshot.select(type_url, state.holding) if snapshot and state.holding else []
        config[SHORT_NAMES[type_url]] = {
            "version": state.sent_version,
            "resources": [json_format.MessageToDict(r) for r in resources],
        }
    return config


@router.get(
    "/v1/audit/events",
    tags=["audit"],
    responses={422: {"model": ErrorBody, "description": "bad cursor or limit"}},
)
async def list_audit_events(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,19}$")] = None,
) -> AuditPage:
    """Audit events, newest first. Pass the returned ``next_cursor`` to page on."""
    rows = await AuditRepository(session).page(
        before_id=int(cursor) if cursor else None, limit=limit + 1
    )
    items = [AuditEventOut.model_validate(row) for row in rows[:limit]]
    next_cursor = str(items[-1].id) if len(rows) > limit else None
    return AuditPage(items=items, next_cursor=next_cursor)
