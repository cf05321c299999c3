"""The real grpc.aio ADS server on port 0, called through a real channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER
from controlplane.xds.server import XdsServer
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.status import ProxyConnection, ProxyRegistry, SyncStatus
from controlplane.xds.translate import translate

TIMEOUT_S = 10.0

Call = grpc.aio.StreamStreamCall  # type: ignore[type-arg]


def _snapshot() -> Snapshot:
    model = ModelSpec(
        "m",
        "http",
        (
            VersionSpec("v1", (EndpointSpec("10.0.0.1", 8001),)),
            VersionSpec("v2", (EndpointSpec("10.0.0.2", 8002),)),
        ),
        (("v1", 90), ("v2", 10)),
    )
    return Snapshot.from_resources(3, translate(DesiredState(3, (model,))))


class Running:
    """A started XdsServer with its cache and registry, and a channel to it."""

    def __init__(
        self, cache: SnapshotCache, registry: ProxyRegistry, channel: grpc.aio.Channel
    ) -> None:
        self.cache = cache
        self.registry = registry
        self.stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

    async def until_connection(
        self, condition: Callable[[ProxyConnection], bool]
    ) -> ProxyConnection:
        """Wait until a registered stream satisfies ``condition``; return it."""

        async def poll() -> ProxyConnection:
            while True:
                for connection in self.registry.connections():
                    if condition(connection):
                        return connection
                await asyncio.sleep(0.005)

        return await asyncio.wait_for(poll(), TIMEOUT_S)


@pytest.fixture
async def xds() -> AsyncIterator[Running]:
    cache, registry = SnapshotCache(), ProxyRegistry()
    server = XdsServer(cache, registry)
    port = await server.start("127.0.0.1", 0)
    assert port > 0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Running(cache, registry, channel)
    finally:
        await server.stop(grace=0)


def _cds_request() -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(
        type_url=CLUSTER, node=base_pb2.Node(id="envoy-it", cluster="edge")
    )


async def _read(call: Call) -> discovery_pb2.DiscoveryResponse:
    response = await asyncio.wait_for(call.read(), TIMEOUT_S)
    assert isinstance(response, discovery_pb2.DiscoveryResponse), response
    return response


def _cluster_status(xds: Running, connection: ProxyConnection) -> SyncStatus:
    return ProxyRegistry.statuses(connection, xds.cache.snapshot)[CLUSTER][1]


async def test_cds_request_gets_the_clusters_and_the_ack_shows_synced(xds: Running) -> None:
    snapshot = _snapshot()
    await xds.cache.publish(snapshot)
    call = xds.stub.StreamAggregatedResources()

    await call.write(_cds_request())
    response = await _read(call)

    assert response.type_url == CLUSTER
    assert response.version_info == snapshot.version(CLUSTER)
    names = set()
    for packed in response.resources:
        cluster = cluster_pb2.Cluster()
        assert packed.Unpack(cluster)
        names.add(cluster.name)
    assert names == {"m/v1", "m/v2"}

    await call.write(
        discovery_pb2.DiscoveryRequest(
            type_url=CLUSTER, version_info=response.version_info, response_nonce=response.nonce
        )
    )
    connection = await xds.until_connection(lambda c: _cluster_status(xds, c) is SyncStatus.SYNCED)
    assert connection.node_id == "envoy-it"
    assert connection.cluster == "edge"
    await call.done_writing()


async def test_nack_is_recorded_with_its_error(xds: Running) -> None:
    await xds.cache.publish(_snapshot())
    call = xds.stub.StreamAggregatedResources()
    await call.write(_cds_request())
    response = await _read(call)

    await call.write(
        discovery_pb2.DiscoveryRequest(
            type_url=CLUSTER,
            response_nonce=response.nonce,
            error_detail=status_pb2.Status(code=3, message="cluster m/v2: rejected"),
        )
    )
    connection = await xds.until_connection(lambda c: _cluster_status(xds, c) is SyncStatus.NACKED)

    state = connection.types[CLUSTER]
    assert state.error == "cluster m/v2: rejected"
    assert state.nacked_version == response.version_info
    await call.done_writing()


async def test_closed_stream_leaves_the_registry(xds: Running) -> None:
    await xds.cache.publish(_snapshot())
    call = xds.stub.StreamAggregatedResources()
    await call.write(_cds_request())
    await _read(call)
    assert [c.node_id for c in xds.registry.connections()] == ["envoy-it"]

    await call.done_writing()
    assert await asyncio.wait_for(call.code(), TIMEOUT_S) == grpc.StatusCode.OK

    async def gone() -> None:
        # The registry has no change signal to wait on, so poll it.
        while xds.registry.connections():  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    await asyncio.wait_for(gone(), TIMEOUT_S)


async def test_delta_cds_subscription_gets_the_clusters_and_the_ack_shows_synced(
    xds: Running,
) -> None:
    snapshot = _snapshot()
    await xds.cache.publish(snapshot)
    call = xds.stub.DeltaAggregatedResources()

    await call.write(
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, node=base_pb2.Node(id="envoy-it"))
    )
    response = await asyncio.wait_for(call.read(), TIMEOUT_S)

    assert isinstance(response, discovery_pb2.DeltaDiscoveryResponse), response
    assert response.type_url == CLUSTER
    assert {r.name: r.version for r in response.resources} == dict(
        snapshot.resource_versions[CLUSTER]
    )
    assert not response.removed_resources
    await call.write(
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=response.nonce)
    )
    connection = await xds.until_connection(lambda c: _cluster_status(xds, c) is SyncStatus.SYNCED)
    assert connection.variant == "delta"
    await call.done_writing()
