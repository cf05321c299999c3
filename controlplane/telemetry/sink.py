"""The gRPC face of the traffic window: Envoy's ``MetricsService.StreamMetrics``.

Every Envoy's bootstrap points its ``envoy.stat_sinks.metrics_service`` sink at
the control plane, on the xDS port, so statistics need no Prometheus in
between. One stream per Envoy; its first message names the node (Envoy sends
the identifier once), every message is one flush.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/metrics_service.proto
"""

from __future__ import annotations

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
from controlplane.telemetry.wire import read

__all__ = ["metrics_service_handler"]

log = logging.getLogger(__name__)

_stream_ids = itertools.count(1)


def metrics_service_handler(window: TrafficWindow) -> grpc.GenericRpcHandler:
    """Return the gRPC handler of Envoy's metrics service, feeding ``window``."""

    async def stream_metrics(
        messages: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        proxy: Proxy | None = None
        try:
            async for data in messages:
                # Raw bytes: wire.read looks only at what is not zero (see there).
                flush = read(data)
                if proxy is None:
                    proxy = Proxy(next(_stream_ids), flush.node_id or "", flush.zone)
                    log.info(
                        "telemetry.stream_open",
                        extra={"node": proxy.node_id, "zone": proxy.zone, "peer": context.peer()},
                    )
                window.ingest_flush(proxy, flush)
        finally:
            if proxy is not None:
                window.forget(proxy)
                log.info("telemetry.stream_closed", extra={"node": proxy.node_id})
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
