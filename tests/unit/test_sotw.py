"""State-of-the-world ADS on one stream, driven by a fake request stream and a real cache.

Every rule checked here is one of the protocol rules listed in the docstring of
``controlplane.xds.sotw``. Responses come out in order, so "X was not sent" is
shown by the next response being something else, or by the stream's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.sotw import SotwStream, plan_types
from controlplane.xds.status import ProxyConnection, SyncStatus, TypeState
from controlplane.xds.stream import StreamLoop
from controlplane.xds.translate import ROUTE_CONFIG_NAME, translate
from controlplane.xds.wire import EncodedResponse

TIMEOUT_S = 5.0

# --- states and snapshots -------------------------------------------------------


def _model(
    *versions: str, weights: tuple[tuple[str, int], ...] = (), port: int = 8000
) -> ModelSpec:
    return ModelSpec(
        "m",
        "http",
        tuple(
            VersionSpec(v, (EndpointSpec("10.0.0.1", port + i),)) for i, v in enumerate(versions)
        ),
        weights,
    )


def _snapshot(revision: int, *models: ModelSpec) -> Snapshot:
    return Snapshot.from_resources(revision, translate(DesiredState(revision, models)))


ONE_VERSION = _model("v1", weights=(("v1", 100),))
TWO_VERSIONS = _model("v1", "v2", weights=(("v1", 50), ("v2", 50)))

# --- requests -----------------------------------------------------------------------


def _subscribe(
    type_url: str, names: Sequence[str] = (), version: str = ""
) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(
        type_url=type_url,
        resource_names=list(names),
        version_info=version,
        node=base_pb2.Node(id="envoy-1", cluster="edge"),
    )


def _ack(
    response: discovery_pb2.DiscoveryResponse, names: Sequence[str] = ()
) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(
        type_url=response.type_url,
        version_info=response.version_info,
        response_nonce=response.nonce,
        resource_names=list(names),
    )


def _nack(
    response: discovery_pb2.DiscoveryResponse, previous_version: str = "", error: str = "bad"
) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(
        type_url=response.type_url,
        version_info=previous_version,
        response_nonce=response.nonce,
        error_detail=status_pb2.Status(code=3, message=error),
    )


# --- the harness --------------------------------------------------------------------


class FakeRequests:
    """The proxy's side of the stream: an async iterator the test feeds."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

    def send(self, request: discovery_pb2.DiscoveryRequest) -> None:
        self._queue.put_nowait(request)

    def close(self) -> None:
        self._queue.put_nowait(None)

    def __aiter__(self) -> FakeRequests:
        return self

    async def __anext__(self) -> discovery_pb2.DiscoveryRequest:
        request = await self._queue.get()
        if request is None:
            raise StopAsyncIteration
        return request


class Stream:
    """One ADS stream (state of the world unless told otherwise) over a fake request
    stream, its responses collected in a queue. The delta tests use it too."""

    def __init__(
        self,
        cache: SnapshotCache,
        stream_class: type[StreamLoop[Any, Any]] = SotwStream,
        variant: str = "sotw",
    ) -> None:
        self.cache = cache
        self.connection = ProxyConnection(stream_id=1, variant=variant)
        self.requests = FakeRequests()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.encoded: list[EncodedResponse[Any]] = []  # as handed to gRPC, in order
        self._stream_class = stream_class
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        stream = self.stream = self._stream_class(self.cache, self.connection)
        async for response in stream.responses(self.requests):
            self.encoded.append(response)
            await self.responses.put(response.decode())

    def send(self, *requests: discovery_pb2.DiscoveryRequest) -> None:
        for request in requests:
            self.requests.send(request)

    def state(self, type_url: str) -> TypeState:
        return self.connection.types[type_url]

    async def next(self, type_url: str | None = None) -> discovery_pb2.DiscoveryResponse:
        """Return the next response, checking its type when ``type_url`` is given."""
        response = await asyncio.wait_for(self.responses.get(), TIMEOUT_S)
        if type_url is not None:
            assert response.type_url == type_url, (response.type_url, response.version_info)
        return response

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until the stream's state satisfies ``condition``."""

        async def poll() -> None:
            # TypeState is plain data with no change signal to wait on, so poll it.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.001)

        await asyncio.wait_for(poll(), TIMEOUT_S)

    async def finish(self) -> list[discovery_pb2.DiscoveryResponse]:
        """End the request stream; return every response sent after the ones read so far.

        The stream handles its events in order, so once it has ended it has
        acted on every request sent before.
        """
        self.requests.close()
        await asyncio.wait_for(self.task, TIMEOUT_S)
        rest = []
        while not self.responses.empty():
            rest.append(self.responses.get_nowait())
        return rest


@pytest.fixture
async def stream() -> AsyncIterator[Stream]:
    opened = Stream(SnapshotCache())
    try:
        yield opened
    finally:
        if not opened.task.done():
            opened.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opened.task


async def _sync_all(
    stream: Stream, snapshot: Snapshot
) -> dict[str, discovery_pb2.DiscoveryResponse]:
    """Play a well-behaved Envoy until every type is ACKed at ``snapshot``'s versions."""
    stream.send(_subscribe(CLUSTER), _subscribe(LISTENER))
    clusters = await stream.next(CLUSTER)
    stream.send(_subscribe(ENDPOINT, sorted(snapshot.resources[ENDPOINT])))
    endpoints = await stream.next(ENDPOINT)
    stream.send(_ack(clusters), _ack(endpoints, sorted(snapshot.resources[ENDPOINT])))
    listeners = await stream.next(LISTENER)
    stream.send(_subscribe(ROUTE, [ROUTE_CONFIG_NAME]), _ack(listeners))
    routes = await stream.next(ROUTE)
    stream.send(_ack(routes, [ROUTE_CONFIG_NAME]))
    await stream.until(
        lambda: all(
            stream.state(t).acked_version == snapshot.version(t) and not stream.state(t).pending
            for t in PUSH_ORDER
        )
    )
    return {CLUSTER: clusters, ENDPOINT: endpoints, LISTENER: listeners, ROUTE: routes}


# --- the stream ---------------------------------------------------------------------


async def test_nothing_is_sent_before_a_snapshot_is_published(stream: Stream) -> None:
    stream.send(_subscribe(CLUSTER))
    await stream.until(lambda: stream.state(CLUSTER).subscribed)
    assert stream.responses.empty()
    assert stream.state(CLUSTER).sent_version is None

    snapshot = _snapshot(1, ONE_VERSION)
    await stream.cache.publish(snapshot)

    first = await stream.next(CLUSTER)
    assert first.version_info == snapshot.version(CLUSTER)
    assert first.nonce == "1"


async def test_initial_wildcard_cds_request_gets_every_cluster(stream: Stream) -> None:
    snapshot = _snapshot(1, TWO_VERSIONS)
    await stream.cache.publish(snapshot)

    stream.send(_subscribe(CLUSTER))
    response = await stream.next(CLUSTER)

    assert response.version_info == snapshot.version(CLUSTER)
    assert list(response.resources) == snapshot.select(CLUSTER, frozenset())
    assert len(response.resources) == 2
    assert stream.connection.node_id == "envoy-1"
    assert stream.connection.cluster == "edge"


async def test_initial_wildcard_lds_request_is_answered_once_clusters_are_acked(
    stream: Stream,
) -> None:
    snapshot = _snapshot(1)  # no models: no clusters, no endpoints
    await stream.cache.publish(snapshot)

    stream.send(_subscribe(CLUSTER), _subscribe(LISTENER))
    clusters = await stream.next(CLUSTER)
    stream.send(_ack(clusters))
    listeners = await stream.next(LISTENER)

    assert listeners.version_info == snapshot.version(LISTENER)
    assert len(listeners.resources) == 1


async def test_ack_is_recorded_as_the_acked_version(stream: Stream) -> None:
    snapshot = _snapshot(1, ONE_VERSION)
    await stream.cache.publish(snapshot)
    stream.send(_subscribe(CLUSTER))
    response = await stream.next(CLUSTER)
    assert stream.state(CLUSTER).pending

    stream.send(_ack(response))
    await stream.until(lambda: not stream.state(CLUSTER).pending)

    state = stream.state(CLUSTER)
    assert state.acked_version == snapshot.version(CLUSTER)
    assert state.acked_at is not None
    assert state.status(snapshot.version(CLUSTER)) is SyncStatus.SYNCED


async def test_nack_is_recorded_with_its_error(stream: Stream) -> None:
    snapshot = _snapshot(1, ONE_VERSION)
    await stream.cache.publish(snapshot)
    stream.send(_subscribe(CLUSTER))
    response = await stream.next(CLUSTER)

    stream.send(_nack(response, error="cluster m/v1: bad lb policy"))
    await stream.until(lambda: not stream.state(CLUSTER).pending)

    state = stream.state(CLUSTER)
    assert state.nacked_version == snapshot.version(CLUSTER)
    assert state.error == "cluster m/v1: bad lb policy"
    assert state.acked_version is None
    assert state.status(snapshot.version(CLUSTER)) is SyncStatus.NACKED


async def test_nacked_version_is_not_resent(stream: Stream) -> None:
    await stream.cache.publish(_snapshot(1, ONE_VERSION))
    stream.send(_subscribe(CLUSTER))
    response = await stream.next(CLUSTER)

    stream.send(_nack(response))

    assert await stream.finish() == []


async def test_new_snapshot_version_is_sent_after_a_nack(stream: Stream) -> None:
    await stream.cache.publish(_snapshot(1, ONE_VERSION))
    stream.send(_subscribe(CLUSTER))
    rejected = await stream.next(CLUSTER)
    stream.send(_nack(rejected))
    await stream.until(lambda: stream.state(CLUSTER).nacked_version is not None)

    fixed = _snapshot(2, TWO_VERSIONS)
    await stream.cache.publish(fixed)

    response = await stream.next(CLUSTER)
    assert response.version_info == fixed.version(CLUSTER)
    stream.send(_ack(response))
    await stream.until(lambda: stream.state(CLUSTER).nacked_version is None)
    assert stream.state(CLUSTER).error is None


async def test_one_response_per_type_is_outstanding(stream: Stream) -> None:
    await stream.cache.publish(_snapshot(1, ONE_VERSION))
    stream.send(_subscribe(CLUSTER), _subscribe(ENDPOINT, ["m/v1"]))
    unanswered = await stream.next(CLUSTER)
    stream.send(_ack(await stream.next(ENDPOINT), ["m/v1"]))
    await stream.until(lambda: not stream.state(ENDPOINT).pending)

    newer = _snapshot(2, TWO_VERSIONS)
    await stream.cache.publish(newer)
    # Clusters go first when both are due: endpoints first means clusters were held.
    endpoints = await stream.next(ENDPOINT)
    assert endpoints.version_info == newer.version(ENDPOINT)

    stream.send(_ack(unanswered))
    clusters = await stream.next(CLUSTER)
    assert clusters.version_info == newer.version(CLUSTER)


async def test_stale_nonce_is_ignored(stream: Stream) -> None:
    await stream.cache.publish(_snapshot(1, ONE_VERSION))
    stream.send(_subscribe(CLUSTER))
    old = await stream.next(CLUSTER)
    stream.send(_ack(old))
    await stream.cache.publish(_snapshot(2, TWO_VERSIONS))
    current = await stream.next(CLUSTER)

    stream.send(_nack(old, previous_version=old.version_info))
    # Requests are handled in order: once this is answered, the stale one was seen.
    stream.send(_subscribe(ENDPOINT, ["m/v1"]))
    await stream.next(ENDPOINT)

    state = stream.state(CLUSTER)
    assert state.nacked_version is None
    assert state.error is None
    assert state.pending
    assert state.sent_nonce == current.nonce


async def test_unchanged_type_is_not_resent_on_a_new_snapshot(stream: Stream) -> None:
    await stream.cache.publish(_snapshot(1, ONE_VERSION))
    sent = await _sync_all(stream, _snapshot(1, ONE_VERSION))

    moved = _snapshot(2, _model("v1", weights=(("v1", 100),), port=9000))
    assert moved.version(CLUSTER) == sent[CLUSTER].version_info
    await stream.cache.publish(moved)

    endpoints = await stream.next(ENDPOINT)
    assert endpoints.version_info == moved.version(ENDPOINT)
    stream.send(_ack(endpoints, ["m/v1"]))
    assert await stream.finish() == []
    assert stream.state(CLUSTER).sent_nonce == sent[CLUSTER].nonce


async def test_new_resource_names_are_answered_with_an_unchanged_version(stream: Stream) -> None:
    snapshot = _snapshot(1, TWO_VERSIONS)
    await stream.cache.publish(snapshot)
    stream.send(_subscribe(ENDPOINT, ["m/v1"]))
    first = await stream.next(ENDPOINT)
    assert len(first.resources) == 1

    stream.send(_ack(first, ["m/v1", "m/v2"]))
    second = await stream.next(ENDPOINT)

    assert second.version_info == first.version_info
    assert len(second.resources) == 2
    assert second.nonce != first.nonce


async def test_ack_with_the_same_names_gets_no_response(stream: Stream) -> None:
    await stream.cache.publish(_snapshot(1, TWO_VERSIONS))
    stream.send(_subscribe(ENDPOINT, ["m/v1"]))
    first = await stream.next(ENDPOINT)

    stream.send(_ack(first, ["m/v1"]))

    assert await stream.finish() == []


async def test_routes_wait_for_the_cluster_ack(stream: Stream) -> None:
    before = _snapshot(1, ONE_VERSION)
    await stream.cache.publish(before)
    sent = await _sync_all(stream, before)
    after = _snapshot(2, TWO_VERSIONS)
    await stream.cache.publish(after)
    clusters = await stream.next(CLUSTER)
    endpoints = await stream.next(ENDPOINT)

    # Envoy warms m/v2: it asks for its endpoints and ACKs them, clusters still pending.
    stream.send(_ack(endpoints, ["m/v1", "m/v2"]))
    endpoints = await stream.next(ENDPOINT)
    stream.send(_ack(endpoints, ["m/v1", "m/v2"]))
    resent = endpoints.nonce
    await stream.until(
        lambda: stream.state(ENDPOINT).sent_nonce == resent and not stream.state(ENDPOINT).pending
    )
    assert stream.state(ROUTE).sent_nonce == sent[ROUTE].nonce

    stream.send(_ack(clusters))
    routes = await stream.next(ROUTE)
    assert routes.version_info == after.version(ROUTE)


async def test_routes_wait_until_every_cluster_was_sent_its_endpoints(stream: Stream) -> None:
    before = _snapshot(1, ONE_VERSION)
    await stream.cache.publish(before)
    sent = await _sync_all(stream, before)
    after = _snapshot(2, TWO_VERSIONS)
    await stream.cache.publish(after)
    clusters = await stream.next(CLUSTER)
    endpoints = await stream.next(ENDPOINT)
    assert len(endpoints.resources) == 1  # Envoy has asked for m/v1 only so far

    stream.send(_ack(clusters), _ack(endpoints, ["m/v1"]))
    await stream.until(lambda: stream.state(ENDPOINT).acked_version == after.version(ENDPOINT))
    await stream.until(lambda: stream.state(CLUSTER).acked_version == after.version(CLUSTER))
    assert stream.state(ROUTE).sent_nonce == sent[ROUTE].nonce

    stream.send(_ack(endpoints, ["m/v1", "m/v2"]))
    endpoints = await stream.next(ENDPOINT)
    assert len(endpoints.resources) == 2
    stream.send(_ack(endpoints, ["m/v1", "m/v2"]))
    routes = await stream.next(ROUTE)
    assert routes.version_info == after.version(ROUTE)


async def test_a_proxy_in_a_zone_is_served_its_zones_endpoints(stream: Stream) -> None:
    model = ModelSpec(
        "m",
        "http",
        (
            VersionSpec(
                "v1", (EndpointSpec("10.0.0.1", 80, "a"), EndpointSpec("10.0.0.2", 80, "b"))
            ),
        ),
        (("v1", 100),),
    )
    state = DesiredState(1, (model,))
    default = Snapshot.from_resources(1, translate(state))
    zone_b = Snapshot.from_resources(1, translate(state, local_zone="b"))
    assert default.version(ENDPOINT) != zone_b.version(ENDPOINT)
    await stream.cache.publish(default, {"b": zone_b})

    request = _subscribe(ENDPOINT, ["m/v1"])
    request.node.locality.zone = "b"
    stream.send(request)
    response = await stream.next(ENDPOINT)

    assert stream.connection.zone == "b"
    assert response.version_info == zone_b.version(ENDPOINT)
    assert list(response.resources) == zone_b.select(ENDPOINT, frozenset({"m/v1"}))


async def test_stream_ends_when_the_requests_end(stream: Stream) -> None:
    await stream.cache.publish(_snapshot(1, ONE_VERSION))

    assert await stream.finish() == []
    assert stream.task.done()


# --- plan_types, a pure function ---------------------------------------------------

SNAPSHOT = _snapshot(1, TWO_VERSIONS)
ALL_ENDPOINTS = frozenset(SNAPSHOT.resources[ENDPOINT])


def _fresh() -> TypeState:
    return TypeState(subscribed=True)


def _acked(type_url: str, names: frozenset[str] = frozenset()) -> TypeState:
    version = SNAPSHOT.version(type_url)
    return TypeState(
        subscribed=True,
        names=names,
        sent_version=version,
        sent_nonce="1",
        sent_names=names or frozenset(SNAPSHOT.resources[type_url]),
        acked_version=version,
    )


def _types(**overrides: TypeState) -> dict[str, TypeState]:
    keys = {"cds": CLUSTER, "eds": ENDPOINT, "lds": LISTENER, "rds": ROUTE}
    types = {type_url: TypeState() for type_url in PUSH_ORDER}
    types.update({keys[short]: state for short, state in overrides.items()})
    return types


def test_plan_is_empty_without_a_snapshot() -> None:
    assert plan_types(_types(cds=_fresh(), eds=_fresh(), lds=_fresh(), rds=_fresh()), None) == []


def test_plan_skips_types_nobody_subscribed_to() -> None:
    assert plan_types(_types(), SNAPSHOT) == []


def test_plan_sends_clusters_and_endpoints_first_and_holds_listeners_and_routes() -> None:
    types = _types(cds=_fresh(), eds=_fresh(), lds=_fresh(), rds=_fresh())

    assert plan_types(types, SNAPSHOT) == [CLUSTER, ENDPOINT]


def test_plan_holds_a_type_with_a_response_outstanding() -> None:
    pending = TypeState(subscribed=True, sent_version="older", sent_nonce="1", pending=True)

    assert plan_types(_types(cds=pending), SNAPSHOT) == []


def test_plan_releases_listeners_once_clusters_and_endpoints_are_acked() -> None:
    types = _types(
        cds=_acked(CLUSTER), eds=_acked(ENDPOINT, ALL_ENDPOINTS), lds=_fresh(), rds=_fresh()
    )

    assert plan_types(types, SNAPSHOT) == [LISTENER]


def test_plan_releases_routes_once_everything_before_them_is_acked() -> None:
    types = _types(
        cds=_acked(CLUSTER),
        eds=_acked(ENDPOINT, ALL_ENDPOINTS),
        lds=_acked(LISTENER),
        rds=_fresh(),
    )

    assert plan_types(types, SNAPSHOT) == [ROUTE]


def test_plan_holds_routes_while_clusters_are_acked_at_an_older_version() -> None:
    old_clusters = _acked(CLUSTER)
    old_clusters.acked_version = "older"
    old_clusters.sent_version = "older"
    types = _types(
        cds=old_clusters, eds=_acked(ENDPOINT, ALL_ENDPOINTS), lds=_acked(LISTENER), rds=_fresh()
    )

    assert plan_types(types, SNAPSHOT) == [CLUSTER]


def test_plan_holds_routes_while_a_cluster_was_never_sent_its_endpoints() -> None:
    types = _types(
        cds=_acked(CLUSTER),
        eds=_acked(ENDPOINT, frozenset({"m/v1"})),
        lds=_acked(LISTENER),
        rds=_fresh(),
    )

    assert plan_types(types, SNAPSHOT) == []


def test_plan_does_not_resend_a_nacked_version() -> None:
    nacked = _acked(CLUSTER)
    nacked.acked_version = "older"
    nacked.nacked_version = SNAPSHOT.version(CLUSTER)

    assert plan_types(_types(cds=nacked), SNAPSHOT) == []


def test_plan_answers_new_names_at_an_unchanged_version() -> None:
    grown = _acked(ENDPOINT, frozenset({"m/v1"}))
    grown.names = ALL_ENDPOINTS

    assert plan_types(_types(eds=grown), SNAPSHOT) == [ENDPOINT]


def test_plan_changes_nothing() -> None:
    types = _types(cds=_fresh(), eds=_acked(ENDPOINT, frozenset({"m/v1"})), lds=_fresh())
    before = copy.deepcopy(types)

    plan_types(types, SNAPSHOT)

    assert types == before


async def test_streams_share_the_serialized_resources_of_a_snapshot() -> None:
    cache = SnapshotCache()
    snapshot = _snapshot(1, TWO_VERSIONS)
    await cache.publish(snapshot)
    first, second = Stream(cache), Stream(cache)
    try:
        for opened in (first, second):
            await _sync_all(opened, snapshot)
        for type_url in PUSH_ORDER:
            [one] = [r for r in first.encoded if r.type_url == type_url]
            [other] = [r for r in second.encoded if r.type_url == type_url]
            # The same bytes object: serialized once, not copied per stream.
            assert one.parts[-1] is other.parts[-1]
            assert one.decode().resources == other.decode().resources
            assert list(one.decode().resources) == snapshot.select(type_url, frozenset())
    finally:
        for opened in (first, second):
            opened.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opened.task
