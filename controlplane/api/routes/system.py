"""Health and readiness (open to all), and the connected proxies (``read``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from controlplane.api.deps import RuntimeDep, require
from controlplane.api.errors import error_response
from controlplane.api.schemas import ErrorBody, ProxyOut, TypeStatusOut
from controlplane.domain.keys import Permission
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
    """Readiness: the database answers and the xDS state is loaded."""
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return error_response(503, "database_unavailable", str(exc)[:200])
    if not runtime.sync.loaded.is_set():
        return error_response(503, "state_not_loaded", "the xDS state has not been loaded yet")
    return JSONResponse({"status": "ready", "revision": runtime.sync.revision})


@router.get(
    "/v1/proxies",
    tags=["proxies"],
    dependencies=[require(Permission.READ)],
    responses={
        401: {"model": ErrorBody, "description": "no valid API key"},
        403: {"model": ErrorBody, "description": "the key's role lacks the permission"},
    },
)
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
                connected_at=connection.connected_at,
                types=types,
            )
        )
    return proxies
