"""After a cluster update the endpoints go out again, so Envoy's warming never stalls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.domain.policy import CircuitBreakers, VersionPolicy
from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER, ENDPOINT
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.sotw import SotwStream
from controlplane.xds.status import ProxyConnection
from controlplane.xds.translate import translate


def _snapshot(revision: int, policy: VersionPolicy) -> Snapshot:
    version = VersionSpec("v1", (EndpointSpec("127.0.0.1", 9001),), policy)
    state = DesiredState(revision, (ModelSpec("m", "http", (version,), (("v1", 100),)),))
    return Snapshot.from_resources(revision, translate(state))


async def test_endpoints_are_resent_after_a_cluster_update() -> None:
    cache = SnapshotCache()
    first = _snapshot(1, VersionPolicy())
    await cache.publish(first)
    requests: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()

    async def incoming() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await requests.get()

    stream = SotwStream(cache, ProxyConnection(stream_id=1)).responses(incoming())
    node = base_pb2.Node(id="envoy-1")
    await requests.put(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node))
    clusters = (await anext(stream)).decode()
    await requests.put(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=["m/v1"]))
    endpoints = (await anext(stream)).decode()
    assert endpoints.type_url == ENDPOINT
    for response in (clusters, endpoints):
        await requests.put(
            discovery_pb2.DiscoveryRequest(
                type_url=response.type_url,
                version_info=response.version_info,
                response_nonce=response.nonce,
                resource_names=["m/v1"] if response.type_url == ENDPOINT else [],
            )
        )

    # Only the cluster changes; Envoy will not ask for the endpoints again.
    second = _snapshot(2, VersionPolicy(circuit_breakers=CircuitBreakers(max_requests=5)))
    assert second.version(ENDPOINT) == first.version(ENDPOINT)
    await cache.publish(second)
    updated = (await asyncio.wait_for(anext(stream), 5)).decode()
    again = (await asyncio.wait_for(anext(stream), 5)).decode()
    assert (updated.type_url, updated.version_info) == (CLUSTER, second.version(CLUSTER))
    assert (again.type_url, again.version_info) == (ENDPOINT, first.version(ENDPOINT))
    assert len(again.resources) == 1
    await stream.aclose()
