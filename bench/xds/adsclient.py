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
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

__all__ = ["AdsClient", "Received"]

_STOP = object()
# Names by (type URL, version): every client of a fleet is sent the same versions, so
# each is read once per process, and the name sets are shared by every client.
_NAMES: dict[tuple[str, str], tuple[list[str], frozenset[str], set[str]]] = {}


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
        self._channel = channel
        self.node_id = node_id
        self.delta = delta
        self.received = {t: Received() for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
        self.changed = asyncio.Event()
        self._outbox: asyncio.Queue[object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._node_sent = False
        self._deps: dict[str, set[str]] = {ENDPOINT: set(), ROUTE: set()}
        self._routes: set[str] = set()

    def start(self) -> None:
        """Open the stream and ask for clusters and listeners."""
        for type_url in (CLUSTER, LISTENER):
            self._request(type_url)
        self._task = asyncio.create_task(self._run(), name=f"ads-{self.node_id}")

    def restart(self, channel: grpc.aio.Channel) -> None:
        """Open a new stream on ``channel`` as a proxy does after losing its control
        plane: from scratch (the old stream must have ended)."""
        self._channel = channel
        self.received = {t: Received() for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
        self._outbox = asyncio.Queue()
        self._node_sent = False
        self._deps = {ENDPOINT: set(), ROUTE: set()}
        self.start()

    @property
    def ended(self) -> bool:
        """Whether the stream has ended (closed, or the control plane went away)."""
        return self._task is not None and self._task.done()

    def current(self, versions: dict[str, str]) -> bool:
        """Whether every type has arrived at ``versions`` (type URL -> version)."""
        return all(self.received[t].version == v for t, v in versions.items())

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
        message = (
            discovery_pb2.DeltaDiscoveryResponse if self.delta else discovery_pb2.DiscoveryResponse
        )
        method = "DeltaAggregatedResources" if self.delta else "StreamAggregatedResources"
        call = self._channel.stream_stream(
            f"/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}",
            request_serializer=lambda request: request.SerializeToString(),
            response_deserializer=None,
        )(self._requests())
        try:
            async for raw in call:
                self._on_response(message.FromString(raw))
                del raw
        except grpc.aio.AioRpcError:
            return  # the control plane went away: the stream has ended (``ended``)

    def _on_response(
        self, response: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse
    ) -> None:
        now = time.time()
        received = self.received[response.type_url]
        received.responses += 1
        size = response.ByteSize()
        received.bytes += size
        received.last_bytes = size
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
            # Only clusters and listeners are read in full (their names drive requests),
            # once per version in this process.
            names = []
            if response.type_url in (CLUSTER, LISTENER):
                key = (response.type_url, response.version_info)
                known = _NAMES.get(key)
                if known is None:
                    read = [_name(response.type_url, r) for r in resources]
                    routes = _route_names(resources) if response.type_url == LISTENER else set()
                    known = _NAMES[key] = (read, frozenset(read), routes)
                names = known[0]
                received.names = known[1]  # type: ignore[assignment]
                if response.type_url == LISTENER:
                    self._routes = known[2]
            received.version = response.version_info
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
            # Shared by every sotw client (the same version's names); delta's are its own.
            held = self.received[CLUSTER].names
            dependent, wanted = ENDPOINT, set(held) if self.delta else held
        elif type_url == LISTENER:
            dependent = ROUTE
            wanted = self._routes if not self.delta else _route_names(resources)
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
