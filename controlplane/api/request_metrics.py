"""The admin API's outermost ASGI layer: every request counted and timed, by route.

A request is labelled with the path template of the route it matched
(``/v1/models/{model}``), never its raw path, so the series stay as many as the
routes. A request answered before routing (a 413 from the gateway, say) is
matched against the routes here; one that matches none is ``unmatched``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.metrics import ControlPlaneMetrics

__all__ = ["UNMATCHED", "RequestMetrics", "route_template"]

UNMATCHED = "unmatched"


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """Return the path template of the route that ``scope`` matched (or, when the
    router has not run, matches in full or but for its method), else UNMATCHED."""
    route = scope.get("route")
    if route is None:
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class RequestMetrics:
    """ASGI middleware: see the module docstring."""

    def __init__(
        self, app: ASGIApp, *, metrics: ControlPlaneMetrics, routes: Sequence[BaseRoute]
    ) -> None:
        self.app = app
        self._metrics = metrics
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Unless a response starts, the server answers 500 (an exception escaped).
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._metrics.observe_request(
                scope["method"],
                route_template(scope, self._routes),
                status,
                time.perf_counter() - started,
            )
