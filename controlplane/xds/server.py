"""The gRPC face of the xDS server: a thin ADS servicer over the cache.

gRPC status codes appear only here, at the stream edge.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from controlplane.xds.cache import SnapshotCache
from controlplane.xds.delta import DeltaResponse, DeltaStream
from controlplane.xds.sotw import SotwResponse, SotwStream
from controlplane.xds.status import ProxyRegistry
from controlplane.xds.stream import StreamLoop, XdsResponse
from controlplane.xds.wire import SendBudget, serialize

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT", bound=XdsResponse)

__all__ = [
    "SEND_BUDGET_BYTES",
    "SEND_PATIENCE_S",
    "AggregatedDiscoveryService",
    "XdsServer",
    "ads_handler",
]

log = logging.getLogger(__name__)

# Bytes of responses handed to gRPC and not yet written, over every stream: when
# 2,000 proxies reconnect at once, each wanting a few megabytes, the rest wait
# their turn instead of each holding a copy of its full push.
SEND_BUDGET_BYTES = 64 * 1024 * 1024
# How long the budget may make no progress (nothing written) before a waiting response
# goes anyway (a few proxies that stopped reading hold theirs until their streams end).
SEND_PATIENCE_S = 5.0
_ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """ADS over one gRPC service: state-of-the-world and incremental (delta) streams."""

    def __init__(
        self, cache: SnapshotCache, registry: ProxyRegistry, budget: SendBudget | None = None
    ) -> None:
        self._cache = cache
        self._registry = registry
        self._budget = budget if budget is not None else SendBudget(SEND_BUDGET_BYTES)

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[
            discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse
        ],
    ) -> AsyncIterator[SotwResponse]:
        async for response in self._serve(SotwStream, request_iterator, context, "sotw"):
            yield response
            del response  # not kept while the stream waits for its next change

    async def _serve(
        self,
        stream_class: type[StreamLoop[RequestT, ResponseT]],
        requests: AsyncIterator[RequestT],
        context: grpc.aio.ServicerContext[RequestT, ResponseT],
        variant: str,
    ) -> AsyncIterator[ResponseT]:
        connection = self._registry.connect(variant)
        log.info(
            "xds.stream_open",
            extra={"stream": connection.stream_id, "variant": variant, "peer": context.peer()},
        )
        budget = self._budget
        try:
            async for response in stream_class(self._cache, connection).responses(requests):
                size = len(response)
                await budget.take(size, SEND_PATIENCE_S)
                try:
                    # gRPC asks for the next response once this one is written.
                    yield response
                finally:
                    budget.release(size)
                del response  # not kept while the stream waits for its next change
        finally:
            self._registry.disconnect(connection)
            log.info(
                "xds.stream_closed",
                extra={"stream": connection.stream_id, "node": connection.node_id},
            )

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[
            discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse
        ],
    ) -> AsyncIterator[DeltaResponse]:
        async for response in self._serve(DeltaStream, request_iterator, context, "delta"):
            yield response
            del response  # not kept while the stream waits for its next change


def ads_handler(service: AggregatedDiscoveryService) -> grpc.GenericRpcHandler:
    """ADS's two methods, whose responses are serialized by the streams already
    (``controlplane.xds.wire``): the generated servicer would serialize protobufs."""
    return grpc.method_handlers_generic_handler(
        _ADS_SERVICE,
        {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                service.StreamAggregatedResources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=serialize,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                service.DeltaAggregatedResources,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=serialize,
            ),
        },
    )


class XdsServer:
    """A grpc.aio server carrying the ADS service (and any other it is given)."""

    def __init__(
        self,
        cache: SnapshotCache,
        registry: ProxyRegistry,
        handlers: Sequence[grpc.GenericRpcHandler] = (),
    ) -> None:
        """``handlers`` are other gRPC services served on the same port (the
        stat sink's metrics service)."""
        self._server = grpc.aio.server(
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                # No flow-control window growth: a replica that reads its stat-sink
                # streams slower than they arrive holds about one message a stream
                # (RSS stayed near 1 GB with 100 proxies of 2.2 MB flushes, instead
                # of growing past 2.4 GB); the senders wait instead.
                ("grpc.http2.bdp_probe", 0),
            ]
        )
        self._server.add_generic_rpc_handlers(
            (ads_handler(AggregatedDiscoveryService(cache, registry)), *handlers)
        )
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Bind and start serving; return the bound port (useful with port 0)."""
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind the xDS server to {host}:{port}")
        await self._server.start()
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting streams and close the open ones after ``grace`` seconds."""
        await self._server.stop(grace)
