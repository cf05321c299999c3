"""A small ADS client that speaks the protocol the way Envoy does, for load and timing.

It opens one aggregated stream (state-of-the-world or delta), asks for clusters
and listeners, then for the endpoints of every cluster and the routes every
listener names, and ACKs every response. It keeps no resources, only their
names, versions, counts and the bytes received, so a hundred of them fit in
one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

__all__ = ["AdsClient", "Received"]

_STOP = object()


@dataclass
class Received:
    """What arrived for one type: the last version, names and when, and totals."""

    version: str = ""
    names: set[str] = field(default_factory=set)
    responses: int = 0
    resources: int = 0
    bytes: int = 0
    last_at: float = 0.0
    last_names: list[str] = field(default_factory=list)
    last_bytes: int = 0


def _route_names(resources: list[any_pb2.Any]) -> set[str]:
    names: set[str] = set()
    for packed in resources:
        listener = listener_pb2.Listener()
        packed.Unpack(listener)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                manager = hcm_pb2.HttpConnectionManager()
                if network_filter.typed_config.Unpack(manager) and manager.HasField("rds"):
                    names.add(manager.rds.route_config_name)
    return names


class AdsClient:
    """One ADS stream from a pretend Envoy ``node_id``."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str, *, delta: bool = False) -> None:
        self._stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.node_id = node_id
        self.delta = delta
        self.received = {t: Received() for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
        self.changed = asyncio.Event()
        self._outbox: asyncio.Queue[object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._node_sent = False
        self._deps: dict[str, set[str]] = {ENDPOINT: set(), ROUTE: set()}

    def start(self) -> None:
        """Open the stream and ask for clusters and listeners."""
        for type_url in (CLUSTER, LISTENER):
            self._request(type_url)
        self._task = asyncio.create_task(self._run(), name=f"ads-{self.node_id}")

    async def stop(self) -> None:
        """Close the stream."""
        self._outbox.put_nowait(_STOP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._task

    def synced(self) -> bool:
        """Whether every type has arrived at least once."""
        return all(r.responses for r in self.received.values())

    def _node(self) -> base_pb2.Node | None:
        if self._node_sent:
            return None
        self._node_sent = True
        return base_pb2.Node(id=self.node_id, cluster="bench")

    def _request(
        self,
        type_url: str,
        *,
        names: set[str] | None = None,
        nonce: str = "",
        version: str = "",
    ) -> None:
        node = self._node()
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url,
                response_nonce=nonce,
                resource_names_subscribe=sorted(names or ()),
            )
        else:
            request = discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                version_info=version,
                response_nonce=nonce,
                resource_names=sorted(names or ()),
            )
        if node is not None:
            request.node.CopyFrom(node)
        self._outbox.put_nowait(request)

    async def _requests(self) -> AsyncIterator[object]:
        while True:
            item = await self._outbox.get()
            if item is _STOP:
                return
            yield item

    async def _run(self) -> None:
        if self.delta:
            call = self._stub.DeltaAggregatedResources(self._requests())
        else:
            call = self._stub.StreamAggregatedResources(self._requests())
        async for response in call:
            self._on_response(response)

    def _on_response(
        self, response: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse
    ) -> None:
        now = time.time()
        received = self.received[response.type_url]
        received.responses += 1
        received.bytes += response.ByteSize()
        received.last_bytes = response.ByteSize()
        received.last_at = now
        if self.delta:
            assert isinstance(response, discovery_pb2.DeltaDiscoveryResponse)
            resources = [r.resource for r in response.resources]
            names = [r.name for r in response.resources]
            received.version = response.system_version_info
            received.names |= set(names)
            received.names -= set(response.removed_resources)
            # ACK, and subscribe to newly needed dependent names.
            self._request(response.type_url, nonce=response.nonce)
            self._follow(response.type_url, resources, names, subscribe_new=True)
        else:
            assert isinstance(response, discovery_pb2.DiscoveryResponse)
            resources = list(response.resources)
            # Only clusters and listeners are read in full (their names drive requests).
            names = (
                [_name(response.type_url, r) for r in resources]
                if response.type_url in (CLUSTER, LISTENER)
                else []
            )
            received.version = response.version_info
            if response.type_url in (CLUSTER, LISTENER):
                received.names = set(names)
            # Ask for the dependent names before ACKing, as Envoy does while it warms.
            self._follow(response.type_url, resources, names, subscribe_new=False)
            wanted = None
            if response.type_url in (ENDPOINT, ROUTE):
                wanted = self._wanted(response.type_url)
            self._request(
                response.type_url,
                names=wanted,
                nonce=response.nonce,
                version=response.version_info,
            )
        received.resources += len(resources)
        received.last_names = names
        self.changed.set()

    def _wanted(self, type_url: str) -> set[str]:
        return self._deps.get(type_url, set())

    def _follow(
        self, type_url: str, resources: list[any_pb2.Any], names: list[str], *, subscribe_new: bool
    ) -> None:
        """After clusters or listeners, ask for their endpoints or routes."""
        if type_url == CLUSTER:
            dependent, wanted = ENDPOINT, set(self.received[CLUSTER].names)
        elif type_url == LISTENER:
            dependent, wanted = ROUTE, _route_names(resources)
            if not self.delta:
                wanted = wanted or self._deps[ROUTE]
        else:
            return
        before = self._deps[dependent]
        if wanted == before:
            return
        self._deps[dependent] = wanted
        if self.delta:
            new = wanted - before
            if new:
                self._request(dependent, names=new)
        else:
            self._request(
                dependent,
                names=wanted,
                version=self.received[dependent].version,
                nonce="",
            )


def _name(type_url: str, packed: any_pb2.Any) -> str:
    """The name of a packed Cluster or Listener."""
    message = cluster_pb2.Cluster() if type_url == CLUSTER else listener_pb2.Listener()
    packed.Unpack(message)
    return str(message.name)
