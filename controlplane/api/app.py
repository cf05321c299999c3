"""The FastAPI application factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from controlplane import __version__
from controlplane.api.errors import install_error_handlers
from controlplane.api.gateway import AdminGateway
from controlplane.api.request_metrics import RequestMetrics
from controlplane.api.routes import (
    audit,
    console,
    keys,
    manifest,
    models,
    revisions,
    rollouts,
    shadow,
    system,
    telemetry,
    tenants,
)

if TYPE_CHECKING:
    from controlplane.runtime import ControlPlane

__all__ = ["create_app"]


def create_app(runtime: ControlPlane) -> FastAPI:
    """Return the admin API of ``runtime``."""
    app = FastAPI(
        title="Turnout admin API",
        version=__version__,
        description=(
            "Models, versions, endpoints and traffic splits, pushed to Envoy over xDS. "
            "Every /v1 route needs an API key: `Authorization: Bearer tk_...`. "
            "Any change (POST, PUT, PATCH, DELETE) takes `?dry_run=true`: it answers 200 "
            "with what the change would do (`DryRunOut`: the models and the Envoy "
            "resources it would add, remove or alter) and changes nothing."
        ),
    )
    app.state.runtime = runtime
    install_error_handlers(app)

    app.include_router(system.router)
    app.include_router(models.router)
    app.include_router(revisions.router)
    app.include_router(manifest.router)
    app.include_router(keys.router)
    app.include_router(audit.router)
    app.include_router(tenants.router)
    app.include_router(telemetry.router)
    app.include_router(rollouts.router)
    app.include_router(rollouts.events_router)
    app.include_router(shadow.router)
    app.include_router(console.router)
    # The gateway matches routes itself (for the audit event of a request that never
    # reaches one: a 413, an idempotent replay), against the routers' own routes.
    routes = [
        route
        for router in (
            system.router,
            models.router,
            revisions.router,
            keys.router,
            audit.router,
            tenants.router,
            rollouts.router,
        )
        for route in router.routes
    ]
    app.add_middleware(AdminGateway, runtime=runtime, routes=routes)
    # Added last, so outermost: it sees every answer, the gateway's own included.
    metered = [
        *routes,
        *telemetry.router.routes,
        *rollouts.events_router.routes,
        *shadow.router.routes,
        *console.router.routes,
    ]
    app.add_middleware(RequestMetrics, metrics=runtime.metrics, routes=metered)
    return app
