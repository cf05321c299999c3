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
from collections.abc import AsyncIterator, Callable
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

__all__ = ["AdsClient", "AdsState", "Received"]

_STOP = object()
# Names by (type URL, version): every client of a fleet is sent the same versions, so
# each is read once per process, and the name sets are shared by every client.
_NAMES: dict[tuple[str, str], tuple[list[str], frozenset[str], set[str]]] = {}
_SORTED: dict[frozenset[str], list[str]] = {}


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


class AdsState:
    """What one pretend Envoy asks for and holds, whatever carries its stream: its
    requests, and what each response changes (names, versions, counts, bytes)."""

    def __init__(self, node_id: str, *, delta: bool = False) -> None:
        self.node_id = node_id
        self.delta = delta
        self.received = {t: Received() for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
        self.changed = asyncio.Event()
        self._node_sent = False
        self._deps: dict[str, set[str]] = {ENDPOINT: set(), ROUTE: set()}
        self._routes: set[str] = set()

    def _reset(self) -> None:
        """From scratch, as a proxy that lost its control plane."""
        self.received = {t: Received() for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
        self._node_sent = False
        self._deps = {ENDPOINT: set(), ROUTE: set()}

    def current(self, versions: dict[str, str]) -> bool:
        """Whether every type has arrived at ``versions`` (type URL -> version)."""
        return all(self.received[t].version == v for t, v in versions.items())

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
        request: discovery_pb2.DeltaDiscoveryRequest | discovery_pb2.DiscoveryRequest
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url,
                response_nonce=nonce,
                resource_names_subscribe=_sorted(names),
            )
        else:
            request = discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                version_info=version,
                response_nonce=nonce,
                resource_names=_sorted(names),
            )
        if node is not None:
            request.node.CopyFrom(node)
        self._send(request)

    def _send(
        self, request: discovery_pb2.DeltaDiscoveryRequest | discovery_pb2.DiscoveryRequest
    ) -> None:
        raise NotImplementedError

    def _on_response(
        self, response: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse
    ) -> None:
        """A parsed response (the gRPC transport)."""
        if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
            resources = [r.resource for r in response.resources]
            self._handle(
                response.type_url,
                response.system_version_info,
                response.nonce,
                size=response.ByteSize(),
                count=len(resources),
                resources=lambda: resources,
                names=[r.name for r in response.resources],
                removed=list(response.removed_resources),
            )
        else:
            sotw = list(response.resources)
            self._handle(
                response.type_url,
                response.version_info,
                response.nonce,
                size=response.ByteSize(),
                count=len(sotw),
                resources=lambda: sotw,
            )

    def _handle(
        self,
        type_url: str,
        version: str,
        nonce: str,
        *,
        size: int,
        count: int,
        resources: Callable[[], list[any_pb2.Any]],
        names: list[str] | None = None,
        removed: list[str] | None = None,
    ) -> None:
        """One response: record it, ACK it, ask for what it makes needed. ``resources``
        gives the resources' Anys; it is called only for sotw clusters and listeners of
        a version not yet read in this process, and for delta listeners."""
        now = time.time()
        received = self.received[type_url]
        received.responses += 1
        received.bytes += size
        received.last_bytes = size
        received.last_at = now
        if self.delta:
            names = names or []
            received.version = version
            received.names |= set(names)
            received.names -= set(removed or ())
            # ACK, and subscribe to newly needed dependent names.
            self._request(type_url, nonce=nonce)
            self._follow(type_url, resources, subscribe_new=True)
        else:
            # Only clusters and listeners are read in full (their names drive requests),
            # once per version in this process.
            names = []
            if type_url in (CLUSTER, LISTENER):
                key = (type_url, version)
                known = _NAMES.get(key)
                if known is None:
                    anys = resources()
                    read = [_name(type_url, r) for r in anys]
                    routes = _route_names(anys) if type_url == LISTENER else set()
                    known = _NAMES[key] = (read, frozenset(read), routes)
                names = known[0]
                received.names = known[1]  # type: ignore[assignment]
                if type_url == LISTENER:
                    self._routes = known[2]
            received.version = version
            # Ask for the dependent names before ACKing, as Envoy does while it warms.
            self._follow(type_url, resources, subscribe_new=False)
            wanted = None
            if type_url in (ENDPOINT, ROUTE):
                wanted = self._wanted(type_url)
            self._request(type_url, names=wanted, nonce=nonce, version=version)
        received.resources += count
        received.last_names = names
        self.changed.set()

    def _wanted(self, type_url: str) -> set[str]:
        return self._deps.get(type_url, set())

    def _follow(
        self,
        type_url: str,
        resources: Callable[[], list[any_pb2.Any]],
        *,
        subscribe_new: bool,
    ) -> None:
        """After clusters or listeners, ask for their endpoints or routes."""
        if type_url == CLUSTER:
            # Shared by every sotw client (the same version's names); delta's are its own.
            held = self.received[CLUSTER].names
            dependent, wanted = ENDPOINT, set(held) if self.delta else held
        elif type_url == LISTENER:
            dependent = ROUTE
            wanted = self._routes if not self.delta else _route_names(resources())
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


class AdsClient(AdsState):
    """One ADS stream from a pretend Envoy ``node_id``, on a grpcio channel."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str, *, delta: bool = False) -> None:
        super().__init__(node_id, delta=delta)
        self._channel = channel
        self._outbox: asyncio.Queue[object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Open the stream and ask for clusters and listeners."""
        for type_url in (CLUSTER, LISTENER):
            self._request(type_url)
        self._task = asyncio.create_task(self._run(), name=f"ads-{self.node_id}")

    def restart(self, channel: grpc.aio.Channel) -> None:
        """Open a new stream on ``channel`` as a proxy does after losing its control
        plane: from scratch (the old stream must have ended)."""
        self._channel = channel
        self._reset()
        self._outbox = asyncio.Queue()
        self.start()

    @property
    def ended(self) -> bool:
        """Whether the stream has ended (closed, or the control plane went away)."""
        return self._task is not None and self._task.done()

    async def stop(self) -> None:
        """Close the stream."""
        self._outbox.put_nowait(_STOP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._task

    def _send(
        self, request: discovery_pb2.DeltaDiscoveryRequest | discovery_pb2.DiscoveryRequest
    ) -> None:
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


def _sorted(names: set[str] | frozenset[str] | None) -> list[str]:
    """``names`` sorted; a sotw client's endpoint names are the shared set of a cluster
    version, sorted once per process."""
    if not names:
        return []
    if isinstance(names, frozenset):
        known = _SORTED.get(names)
        if known is None:
            known = _SORTED[names] = sorted(names)
        return known
    return sorted(names)


def _name(type_url: str, packed: any_pb2.Any) -> str:
    """The name of a packed Cluster or Listener."""
    message = cluster_pb2.Cluster() if type_url == CLUSTER else listener_pb2.Listener()
    packed.Unpack(message)
    return str(message.name)
