"""The gRPC face of the traffic window: Envoy's ``MetricsService.StreamMetrics``.

Every Envoy's bootstrap points its ``envoy.stat_sinks.metrics_service`` sink at
the control plane, on the xDS port, so statistics need no Prometheus in
between. One stream per Envoy; its first message names the node (Envoy sends
the identifier once), every message is one flush.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/metrics_service.proto
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from controlplane.telemetry.protocol import (
    METHOD,
    SERVICE,
    StreamMetricsResponse,
)
from controlplane.telemetry.window import Proxy, TrafficWindow
from controlplane.telemetry.wire import Flush, read

__all__ = ["Inbox", "fold_stream", "metrics_service_handler"]

log = logging.getLogger(__name__)

_stream_ids = itertools.count(1)


class Inbox:
    """What one stream has read and not yet folded into the window: at most
    one flush. A flush that arrives while the previous one still waits is
    merged into it (``Flush.merge``: counts stay exact), so a control plane
    that falls behind holds one flush per stream, not a queue."""

    def __init__(self) -> None:
        self._pending: Flush | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self.merged = 0

    def put(self, flush: Flush) -> bool:
        """Add ``flush``; return True when it was merged into a waiting one."""
        if self._pending is None:
            self._pending = flush
            self._ready.set()
            return False
        self._pending.merge(flush)
        self.merged += 1
        return True

    def close(self) -> None:
        """No more flushes: ``take`` answers None once the waiting one is taken."""
        self._closed = True
        self._ready.set()

    async def take(self) -> Flush | None:
        """Wait for the next flush (None: the stream ended)."""
        while self._pending is None:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        flush, self._pending = self._pending, None
        return flush


async def fold_stream(window: TrafficWindow, messages: AsyncIterator[bytes], peer: str) -> None:
    """Read one stream's raw messages into an :class:`Inbox` as they come and
    fold them into ``window`` as fast as it takes them (two tasks: the reader
    never waits for the window)."""
    inbox = Inbox()

    async def reading() -> None:
        try:
            async for data in messages:
                # Raw bytes: wire.read looks only at what is not zero (see there).
                if inbox.put(read(data)):
                    window.merged_flushes += 1
        finally:
            inbox.close()

    reader = asyncio.create_task(reading())
    proxy: Proxy | None = None
    try:
        while (flush := await inbox.take()) is not None:
            if proxy is None:
                proxy = Proxy(next(_stream_ids), flush.node_id or "", flush.zone)
                log.info(
                    "telemetry.stream_open",
                    extra={"node": proxy.node_id, "zone": proxy.zone, "peer": peer},
                )
            window.ingest_flush(proxy, flush)
        await reader  # its error, if any, ends the call
    finally:
        if not reader.done():
            reader.cancel()
        if proxy is not None:
            window.forget(proxy)
            log.info(
                "telemetry.stream_closed", extra={"node": proxy.node_id, "merged": inbox.merged}
            )


def metrics_service_handler(window: TrafficWindow) -> grpc.GenericRpcHandler:
    """Return the gRPC handler of Envoy's metrics service, feeding ``window``."""

    async def stream_metrics(
        messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await fold_stream(window, messages, context.peer())
        return StreamMetricsResponse()

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.stream_unary_rpc_method_handler(
                stream_metrics,
                request_deserializer=None,
                response_serializer=StreamMetricsResponse.SerializeToString,
            )
        },
    )
