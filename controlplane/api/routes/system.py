"""Health and readiness (open to all), metrics and the connected proxies (``read``).

The proxies' routes read only this replica's memory: with the database down they
keep answering for a key the database vouched for within the last minute
(:class:`~controlplane.services.keys.VerifiedKeys`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from sqlalchemy import text

from controlplane.api.deps import RuntimeDep, require
from controlplane.api.errors import RETRY_AFTER_S, error_response
from controlplane.api.schemas import ErrorBody, HeldOut, ProxyOut, TypeStatusOut
from controlplane.domain.errors import NotFound
from controlplane.domain.keys import Permission
from controlplane.metrics import CONTENT_TYPE
from controlplane.xds.resources import SHORT_NAMES
from controlplane.xds.status import ProxyRegistry

__all__ = ["router"]

router = APIRouter()

# /readyz answers within a second whatever the database does; a load balancer's
# probe usually gives up after one.
READY_TIMEOUT_S = 0.8


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
        async with asyncio.timeout(READY_TIMEOUT_S), runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except TimeoutError:
        return _unready(f"the database did not answer within {READY_TIMEOUT_S} s")
    except Exception as exc:
        return _unready(f"the database is unavailable ({type(exc).__name__})")
    if not runtime.sync.loaded.is_set():
        return error_response(503, "state_not_loaded", "the xDS state has not been loaded yet")
    snapshot = runtime.cache.snapshot
    versions = (
        {SHORT_NAMES[t]: v for t, v in snapshot.versions.items()} if snapshot is not None else {}
    )
    return JSONResponse(
        {"status": "ready", "revision": runtime.sync.revision, "xds_versions": versions}
    )


def _unready(detail: str) -> JSONResponse:
    response = error_response(503, "database_unavailable", detail)
    response.headers["retry-after"] = str(RETRY_AFTER_S)
    return response


@router.get(
    "/metrics",
    tags=["health"],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    """This replica's metrics in the Prometheus text format. Open, like /readyz, so
    that Prometheus scrapes it without a key: it names models, never a caller."""
    return Response(
        runtime.metrics.exposition() + await runtime.data_plane.text(), media_type=CONTENT_TYPE
    )


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
    """Every Envoy connected to this replica, with what it was sent and ACKed per type,
    the config revision it is fully synced at, and the models held at their last
    accepted config because Envoy rejected them."""
    holds = [HeldOut.model_validate(hold.as_dict()) for hold in runtime.sync.holds()]
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
                held=[h for h in holds if h.type == SHORT_NAMES[type_url]],
            )
        proxies.append(
            ProxyOut(
                node_id=connection.node_id,
                cluster=connection.cluster,
                zone=connection.zone,
                xds=connection.variant,
                connected_at=connection.connected_at,
                degraded=bool(holds),
                revision=snapshot.revision if snapshot is not None else None,
                synced_revision=ProxyRegistry.synced_revision(connection, snapshot),
                types=types,
            )
        )
    return proxies


@router.get(
    "/v1/proxies/{node_id}/config",
    tags=["proxies"],
    dependencies=[require(Permission.READ)],
    responses={
        401: {"model": ErrorBody, "description": "no valid API key"},
        403: {"model": ErrorBody, "description": "the key's role lacks the permission"},
        404: {"model": ErrorBody, "description": "no such proxy is connected"},
    },
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
