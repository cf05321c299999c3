"""Test model servers that misbehave on purpose: fail, stall, die, and count.

Each answers like the example echo server (a JSON body naming its version),
plus the replica's name, so a test can tell replicas of one version apart.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from examples.model_server import bound_port


@dataclass
class TestServer:
    """One replica. Knobs:

    - ``fail_30_percent``: answer 503 to the requests numbered 0, 3, 6 of every 10
      (30%), spread out so that no two failures are adjacent: a server that
      sheds load now and then, not one that is down;
    - ``delay_s``: wait this long before answering;
    - ``hold``: when set, wait until the event is set before answering.

    It records every inference request's headers, and ``/healthz`` answers
    200 while ``healthy`` is true.
    """

    __test__ = False  # not a pytest test class

    version: str
    replica: str = ""
    fail_30_percent: bool = False
    delay_s: float = 0.0
    hold: asyncio.Event | None = None
    healthy: bool = True
    requests: int = 0
    failures: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    by_key: Counter[str] = field(default_factory=Counter)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> TestServer:
        """Listen on 127.0.0.1 (a free port, or ``port`` to come back on the same one)."""
        application = web.Application()
        application.router.add_get("/healthz", self._healthz)
        application.router.add_route("*", "/{tail:.*}", self._infer)
        self._runner = web.AppRunner(application, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = bound_port(self._runner)
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection: the replica is gone."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def endpoint(self, **labels: str) -> dict[str, object]:
        """Return this replica as an admin-API endpoint."""
        return {"address": "127.0.0.1", "port": self.port, **labels}

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok" if self.healthy else "down"}, status=200 if self.healthy else 503
        )

    async def _infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        number = self.requests
        self.requests += 1
        self.headers.append(dict(request.headers))
        self.by_key[request.headers.get("x-user-id", "")] += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_30_percent and number % 10 in (0, 3, 6):
            self.failures += 1
            return web.json_response({"error": "overloaded"}, status=503)
        return web.json_response(
            {
                "version": self.version,
                "replica": self.replica,
                "path": request.path_qs,
                "body_bytes": len(body),
            }
        )
