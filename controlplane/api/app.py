"""The FastAPI application factory."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response

from controlplane import __version__
from controlplane.api.errors import install_error_handlers
from controlplane.api.routes import models, revisions, system

if TYPE_CHECKING:
    from controlplane.runtime import ControlPlane

__all__ = ["create_app"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def create_app(runtime: ControlPlane) -> FastAPI:
    """Return the admin API of ``runtime``."""
    app = FastAPI(
        title="Turnout admin API",
        version=__version__,
        description="Models, versions, endpoints and traffic splits, pushed to Envoy over xDS.",
    )
    app.state.runtime = runtime
    install_error_handlers(app)

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        given = request.headers.get("x-request-id", "")
        request.state.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        response = await call_next(request)
        response.headers["x-request-id"] = request.state.request_id
        return response

    app.include_router(system.router)
    app.include_router(models.router)
    app.include_router(revisions.router)
    return app
