"""The batcher's HTTP service: configuration, request handling, lifecycle.

Requests that ``parse_call`` recognises join the dispatcher's queue; everything
else (and everything while the policy is disabled) is proxied to the upstream
unchanged, one by one, streaming the answer back (with ``x-turnout-batch-size:
1``). The batcher answers two paths itself: ``GET /metrics`` (Prometheus) and
``GET /turnout/batcher`` (its policy and queue, as JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

from filters.otlp import tracer_provider as build_provider

from ._dispatch import BATCH_SIZE_HEADER, Dispatcher, Pending, Reply, describe, error_reply
from ._metrics import BatcherMetrics
from ._policy import BatchingPolicy, PolicySource
from ._protocols import MalformedInput, parse_call
from ._tracing import SERVICE_NAME, TRACE_HEADERS, extract_trace, inject_trace
from ._upstream import HOP_BY_HOP, Upstream

__all__ = ["BatcherConfig", "RunningBatcher", "run_batcher", "start_batcher"]

log = logging.getLogger("turnout.batcher")

_DEADLINE_HEADER = "x-envoy-expected-rq-timeout-ms"
# When the proxy received the request, in seconds since the epoch (Envoy:
# ``x-request-start: %START_TIME(%s.%3f)%``). Envoy's timeout runs from then,
# so the deadline does too: under load, the time a request spends in the
# batcher's socket and event loop before its handler runs is part of it.
_START_HEADER = "x-request-start"


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    """Everything one batcher needs.

    - ``upstream``: base URL of the model-server replica, e.g. ``http://127.0.0.1:9001``.
    - ``host``/``port``: where to listen (port 0 picks a free port).
    - ``policy``: the policy until ``policy_source`` says otherwise.
    - ``policy_source``: polled every ``policy_interval_s`` seconds, if given.
    - ``max_in_flight``: batches upstream at once (the replica's batch
      concurrency; 1 suits one GPU that runs one batch at a time).
    - ``stage_ms``: how long before a slot is expected to free up one more
      batch is sent to wait at the model server (0: never; see the dispatch
      rules).
    - ``model``/``version``: the model version served (``--model``,
      ``--model-version``): labels of the queue-depth metric ("" when unknown).
    - ``otlp_endpoint``: ``host:port`` of an OTLP/gRPC collector to send spans
      to (None: no tracing); ``trace_sampling``: the percent of requests without
      a ``traceparent`` that start a trace.
    """

    upstream: str
    host: str = "127.0.0.1"
    port: int = 9101
    policy: BatchingPolicy = field(default_factory=BatchingPolicy)
    policy_source: PolicySource | None = None
    policy_interval_s: float = 0.5
    max_in_flight: int = 1
    stage_ms: float = 5.0
    upstream_connections: int = 256
    otlp_endpoint: str | None = None
    trace_sampling: float = 1.0
    model: str = ""
    version: str = ""


class _Service:
    def __init__(self, config: BatcherConfig, tracer: Tracer | None) -> None:
        self.config = config
        self.tracer = tracer
        self.metrics = BatcherMetrics(config.model, config.version)
        self.upstream = Upstream(config.upstream, connections=config.upstream_connections)
        self.dispatcher = Dispatcher(
            self.upstream,
            config.policy,
            self.metrics,
            max_in_flight=config.max_in_flight,
            stage_ms=config.stage_ms,
            tracer=tracer,
        )

    @property
    def policy(self) -> BatchingPolicy:
        return self.dispatcher.policy

    def app(self) -> web.Application:
        application = web.Application(client_max_size=64 * 1024 * 1024)
        application.router.add_get("/metrics", self._metrics)
        application.router.add_get("/turnout/batcher", self._status)
        application.router.add_route("*", "/{tail:.*}", self._handle)
        return application

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain")

    async def _status(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "upstream": self.config.upstream,
                "policy": describe(self.policy),
                "queue_depth": self.dispatcher.depth,
                "in_flight": self.dispatcher.in_flight,
                "batches_sent": self.dispatcher.batches_sent,
            }
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.tracer is None:
            return await self._serve(request, None)
        span = self.tracer.start_span(
            "batcher.request",
            context=extract_trace(request.headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path},
        )
        try:
            response = await self._serve(request, span)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, type(exc).__name__)
            raise
        else:
            span.set_attribute("http.response.status_code", response.status)
            size = response.headers.get(BATCH_SIZE_HEADER)
            if size is not None:
                span.set_attribute("turnout.batch.size", int(size))
            if response.status >= 500:
                span.set_status(StatusCode.ERROR)
        finally:
            span.end()
        return response

    async def _serve(self, request: web.Request, span: Span | None) -> web.StreamResponse:
        body = await request.read()
        policy = self.policy
        call = None
        if policy.enabled:
            try:
                call = parse_call(
                    request.method, request.path, request.query_string, request.headers, body
                )
            except MalformedInput as exc:
                self.metrics.rejections.labels(reason="malformed").inc()
                return _respond(error_reply(400, "malformed_input", str(exc)))
        if call is None:
            self.metrics.requests.labels(mode="passthrough").inc()
            return await self._proxy(request, body, span)
        self.metrics.requests.labels(mode="batched").inc()
        loop = asyncio.get_running_loop()
        now = loop.time()
        arrived = now - _waited_seconds(request, policy)
        headers = {}
        if "authorization" in request.headers:
            headers["Authorization"] = request.headers["authorization"]
        if span is None:
            # Untraced here: the caller's trace context still reaches the model server
            # (a batch carries its first request's).
            for name in TRACE_HEADERS:
                if name in request.headers:
                    headers[name] = request.headers[name]
        pending = Pending(
            call=call,
            target=request.path_qs,
            headers=headers,
            arrived=arrived,
            deadline=arrived + _budget_seconds(request, policy),
            future=loop.create_future(),
            span=span,
        )
        reply = self.dispatcher.submit(pending)
        if reply is None:
            try:
                reply = await pending.future
            except asyncio.CancelledError:
                self.dispatcher.withdraw(pending)
                raise
        return _respond(reply)

    async def _proxy(
        self, request: web.Request, body: bytes, span: Span | None
    ) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if span is not None:
            # The model server's parent is this request's span, not the caller's.
            for name in [k for k in headers if k.lower() in TRACE_HEADERS]:
                del headers[name]
            inject_trace(headers, span)
        url = self.upstream.base_url + request.path_qs
        try:
            async with self.upstream.session.request(
                request.method, url, data=body or None, headers=headers
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        response.headers.add(name, value)
                # Served alone: the access log's batch size (no queue wait: it never queued).
                response.headers[BATCH_SIZE_HEADER] = "1"
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError as exc:
            log.warning("passthrough failed", extra={"error": type(exc).__name__})
            return _respond(error_reply(502, "upstream_error", type(exc).__name__))

    async def poll_policy(self, source: PolicySource) -> None:
        while True:
            try:
                policy = await source.fetch()
            except Exception as exc:  # a faulty source must not stop the batcher
                log.warning("policy source raised", extra={"error": type(exc).__name__})
                policy = None
            if policy is not None and policy != self.policy:
                log.info("policy changed", extra={"policy": json.dumps(describe(policy))})
                self.dispatcher.set_policy(policy)
            await asyncio.sleep(self.config.policy_interval_s)


def _waited_seconds(request: web.Request, policy: BatchingPolicy) -> float:
    """Return how long ago the proxy received ``request`` (0 without the start header).

    Clamped to [0, SLO]: a clock step or a foreign value never makes a request
    look older than its whole budget, nor younger than now.
    """
    raw = request.headers.get(_START_HEADER)
    if raw is None:
        return 0.0
    try:
        started = float(raw.removeprefix("t="))
    except ValueError:
        return 0.0
    return min(max(0.0, time.time() - started), policy.slo_ms / 1000.0)


def _budget_seconds(request: web.Request, policy: BatchingPolicy) -> float:
    budget_ms = policy.slo_ms
    raw = request.headers.get(_DEADLINE_HEADER)
    if raw is not None:
        with contextlib.suppress(ValueError):
            envoy_ms = float(raw)
            if envoy_ms > 0:
                budget_ms = min(budget_ms, envoy_ms)
    return budget_ms / 1000.0


def _respond(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


class RunningBatcher:
    """A started batcher: ``host``, ``port`` (the bound one), ``metrics``, and ``close()``."""

    def __init__(
        self,
        service: _Service,
        runner: web.AppRunner,
        port: int,
        owned_provider: TracerProvider | None,
    ) -> None:
        self._service = service
        self._runner = runner
        self._owned_provider = owned_provider
        self._poller: asyncio.Task[None] | None = None
        self.host = service.config.host
        self.port = port

    @property
    def url(self) -> str:
        """Base URL clients call, e.g. ``http://127.0.0.1:9101``."""
        return f"http://{self.host}:{self.port}"

    @property
    def metrics(self) -> BatcherMetrics:
        """The batcher's metrics."""
        return self._service.metrics

    @property
    def dispatcher(self) -> Dispatcher:
        """The dispatcher (tests read its queue depth and policy)."""
        return self._service.dispatcher

    async def close(self) -> None:
        """Stop listening, answer waiting requests 503, close the upstream pool."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await self._service.dispatcher.close()
        await self._runner.cleanup()
        await self._service.upstream.close()
        close_source = getattr(self._service.config.policy_source, "close", None)
        if close_source is not None:
            await close_source()
        if self._owned_provider is not None:
            # In a thread: it waits for the last spans to reach the collector.
            await asyncio.to_thread(self._owned_provider.shutdown)
            self._owned_provider = None


async def start_batcher(
    config: BatcherConfig, *, tracer_provider: TracerProvider | None = None
) -> RunningBatcher:
    """Start a batcher on the running loop and return it once it listens.

    It traces with ``tracer_provider`` when given (the caller shuts it down), else
    with one of its own when ``config.otlp_endpoint`` is set (shut down by
    ``close()``), else not at all.
    """
    owned = None
    if tracer_provider is None and config.otlp_endpoint is not None:
        owned = tracer_provider = build_provider(
            config.otlp_endpoint, SERVICE_NAME, config.trace_sampling
        )
    tracer = tracer_provider.get_tracer("turnout.batcher") if tracer_provider else None
    service = _Service(config, tracer)
    await service.upstream.start()
    service.dispatcher.start()
    runner = web.AppRunner(service.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = next(int(address[1]) for address in runner.addresses)
    running = RunningBatcher(service, runner, port, owned)
    if config.policy_source is not None:
        running._poller = asyncio.get_running_loop().create_task(
            service.poll_policy(config.policy_source)
        )
    log.info(
        "batcher listening",
        extra={"listen": f"{config.host}:{port}", "upstream": config.upstream},
    )
    return running


async def run_batcher(config: BatcherConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run a batcher until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None)."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
    running = await start_batcher(config)
    try:
        await stop.wait()
    finally:
        await running.close()
