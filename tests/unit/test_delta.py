"""Incremental (delta) ADS on one stream, driven by a fake request stream and a real cache.

Each test checks one rule from the docstring of ``controlplane.xds.delta``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.delta import DeltaStream
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.status import SyncStatus
from controlplane.xds.translate import ROUTE_CONFIG_NAME, translate
from tests.unit.test_sotw import Stream

TIMEOUT_S = 5.0


def _snapshot(revision: int, ports: dict[str, int], weights: dict[str, int]) -> Snapshot:
    model = ModelSpec(
        "m",
        "http",
        tuple(VersionSpec(v, (EndpointSpec("10.0.0.1", p),)) for v, p in sorted(ports.items())),
        tuple(sorted(weights.items())),
    )
    return Snapshot.from_resources(revision, translate(DesiredState(revision, (model,))))


BASE = _snapshot(1, {"v1": 8001, "v2": 8002}, {"v1": 100})


def _request(
    type_url: str,
    subscribe: Sequence[str] = (),
    *,
    nonce: str = "",
    initial: dict[str, str] | None = None,
    unsubscribe: Sequence[str] = (),
    error: str | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
        node=base_pb2.Node(id="envoy-d", cluster="edge"),
    )
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def _delta_stream(cache: SnapshotCache) -> Stream:
    return Stream(cache, DeltaStream, variant="delta")


@pytest.fixture
async def harness() -> AsyncIterator[Stream]:
    cache = SnapshotCache()
    await cache.publish(BASE)
    opened = _delta_stream(cache)
    try:
        yield opened
    finally:
        if not opened.task.done():
            opened.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opened.task


async def _sync(harness: Stream) -> None:
    """Play a well-behaved Envoy until every type is current."""
    harness.send(_request(CLUSTER), _request(LISTENER))
    clusters = await harness.next(CLUSTER)
    harness.send(_request(ENDPOINT, ["m/v1", "m/v2"]), _request(CLUSTER, nonce=clusters.nonce))
    endpoints = await harness.next(ENDPOINT)
    harness.send(_request(ENDPOINT, nonce=endpoints.nonce))
    listeners = await harness.next(LISTENER)
    harness.send(_request(ROUTE, [ROUTE_CONFIG_NAME]), _request(LISTENER, nonce=listeners.nonce))
    routes = await harness.next(ROUTE)
    harness.send(_request(ROUTE, nonce=routes.nonce))


async def test_wildcard_subscription_gets_every_cluster_with_its_version(
    harness: Stream,
) -> None:
    harness.send(_request(CLUSTER))
    response = await harness.next(CLUSTER)
    assert {(r.name, r.version) for r in response.resources} == {
        (name, BASE.resource_versions[CLUSTER][name]) for name in ("m/v1", "m/v2")
    }
    assert response.system_version_info == BASE.version(CLUSTER)
    assert list(response.removed_resources) == []


async def test_a_change_sends_only_the_changed_resource(harness: Stream) -> None:
    await _sync(harness)
    moved = _snapshot(2, {"v1": 8001, "v2": 9999}, {"v1": 100})
    await harness.cache.publish(moved)
    response = await harness.next(ENDPOINT)
    assert [r.name for r in response.resources] == ["m/v2"]
    harness.send(_request(ENDPOINT, nonce=response.nonce))
    # Clusters, listeners and routes did not change: nothing else goes out.
    assert await harness.finish() == []
    assert harness.connection.types[ENDPOINT].status(moved.version(ENDPOINT)) == SyncStatus.SYNCED


async def test_removed_resources_are_named(harness: Stream) -> None:
    await _sync(harness)
    await harness.cache.publish(_snapshot(2, {"v1": 8001}, {"v1": 100}))
    clusters = await harness.next(CLUSTER)
    assert list(clusters.removed_resources) == ["m/v2"]
    assert list(clusters.resources) == []


async def test_nack_is_recorded_and_not_resent_until_the_snapshot_changes(
    harness: Stream,
) -> None:
    await _sync(harness)
    second = _snapshot(2, {"v1": 8001, "v2": 8002}, {"v2": 100})
    await harness.cache.publish(second)
    routes = await harness.next(ROUTE)
    harness.send(_request(ROUTE, nonce=routes.nonce, error="route rejected"))
    # A later request that answers nothing must not bring the rejected set back.
    harness.send(_request(ROUTE, ["extra-name"]), _request(ROUTE, unsubscribe=["extra-name"]))
    third = _snapshot(3, {"v1": 8001, "v2": 8002}, {"v1": 50, "v2": 50})
    await harness.cache.publish(third)
    again = await harness.next(ROUTE)
    # The first route response after the NACK is the new version, not the rejected one.
    assert again.system_version_info == third.version(ROUTE)
    harness.send(_request(ROUTE, nonce=again.nonce))
    assert await harness.finish() == []


async def test_nack_records_the_error(harness: Stream) -> None:
    harness.send(_request(CLUSTER))
    clusters = await harness.next(CLUSTER)
    harness.send(_request(CLUSTER, nonce=clusters.nonce, error="bad cluster"))
    assert await harness.finish() == []
    state = harness.connection.types[CLUSTER]
    assert state.status(BASE.version(CLUSTER)) == SyncStatus.NACKED
    assert state.error == "bad cluster"


async def test_initial_versions_that_match_are_not_sent_again(harness: Stream) -> None:
    harness.send(_request(CLUSTER, initial=dict(BASE.resource_versions[CLUSTER])))
    endpoints = dict(BASE.resource_versions[ENDPOINT])
    harness.send(_request(ENDPOINT, sorted(endpoints), initial=endpoints))
    harness.send(_request(LISTENER))
    # Clusters and endpoints are current already (a reconnect): the first response
    # is the listener.
    assert (await harness.next(LISTENER)).resources[0].name == "turnout_http"


async def test_routes_wait_for_the_endpoints_of_every_cluster(harness: Stream) -> None:
    harness.send(_request(CLUSTER), _request(LISTENER))
    clusters = await harness.next(CLUSTER)
    harness.send(_request(ROUTE, [ROUTE_CONFIG_NAME]), _request(CLUSTER, nonce=clusters.nonce))
    # Only one cluster's endpoints are asked for: listeners and routes must wait.
    harness.send(_request(ENDPOINT, ["m/v1"]))
    endpoints = await harness.next(ENDPOINT)
    harness.send(_request(ENDPOINT, nonce=endpoints.nonce))
    harness.send(_request(ENDPOINT, ["m/v2"]))
    more = await harness.next(ENDPOINT)
    assert [r.name for r in more.resources] == ["m/v2"]
    harness.send(_request(ENDPOINT, nonce=more.nonce))
    assert (await harness.next(LISTENER)).resources


async def test_unsubscribed_names_are_forgotten(harness: Stream) -> None:
    harness.send(_request(ENDPOINT, ["m/v1", "m/v2"]))
    first = await harness.next(ENDPOINT)
    harness.send(_request(ENDPOINT, nonce=first.nonce, unsubscribe=["m/v2"]))
    moved = _snapshot(2, {"v1": 8001, "v2": 9999}, {"v1": 100})
    await harness.cache.publish(moved)
    # m/v2 changed but is no longer wanted: nothing to send.
    assert await harness.finish() == []


async def test_a_first_subscription_is_answered_even_when_empty() -> None:
    cache = SnapshotCache()
    await cache.publish(Snapshot.from_resources(1, translate(DesiredState(1, ()))))
    harness = _delta_stream(cache)
    harness.send(_request(CLUSTER), _request(LISTENER))
    clusters = await harness.next(CLUSTER)
    assert list(clusters.resources) == []
    harness.send(_request(CLUSTER, nonce=clusters.nonce))
    listeners = await harness.next(LISTENER)
    assert [r.name for r in listeners.resources] == ["turnout_http"]
    harness.send(_request(LISTENER, nonce=listeners.nonce))
    assert await harness.finish() == []


async def test_streams_share_each_serialized_resource_and_the_versions_they_hold() -> None:
    cache = SnapshotCache()
    await cache.publish(BASE)
    first, second = _delta_stream(cache), _delta_stream(cache)
    try:
        for opened in (first, second):
            await _sync(opened)
        for opened in (first, second):
            await opened.until(lambda o=opened: not o.connection.types[ROUTE].pending)
        [one] = [r for r in first.encoded if r.type_url == CLUSTER]
        [other] = [r for r in second.encoded if r.type_url == CLUSTER]
        # After each stream's own header, one bytes object per resource, shared.
        assert len(one.parts) == 3
        assert all(a is b for a, b in zip(one.parts[1:], other.parts[1:], strict=True))
        for opened in (first, second):
            tracked = opened.stream._tracked  # type: ignore[attr-defined]
            for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
                # No per-stream copy of names and versions: the snapshot's own mapping.
                assert tracked[type_url].has.base is BASE.resource_versions[type_url]
                assert tracked[type_url].has.diff == {}
    finally:
        for opened in (first, second):
            opened.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opened.task


async def test_a_change_after_sharing_sends_only_the_difference_and_shares_again(
    harness: Stream,
) -> None:
    await _sync(harness)
    await harness.until(lambda: not harness.connection.types[ROUTE].pending)
    moved = _snapshot(2, {"v1": 7777, "v2": 8002}, {"v1": 100})
    await harness.cache.publish(moved)
    response = await harness.next(ENDPOINT)
    assert [(r.name, r.version) for r in response.resources] == [
        ("m/v1", moved.resource_versions[ENDPOINT]["m/v1"])
    ]
    harness.send(_request(ENDPOINT, nonce=response.nonce))
    await harness.until(lambda: not harness.connection.types[ENDPOINT].pending)
    has = harness.stream._tracked[ENDPOINT].has  # type: ignore[attr-defined]
    assert has.base is moved.resource_versions[ENDPOINT]
    assert has.diff == {}


async def test_a_reconnect_with_current_versions_is_sent_nothing_and_shares_them(
    harness: Stream,
) -> None:
    harness.send(_request(CLUSTER, initial=dict(BASE.resource_versions[CLUSTER])))
    await harness.until(lambda: harness.connection.types[CLUSTER].subscribed)
    await harness.until(
        lambda: (
            harness.stream._tracked[CLUSTER].has.base  # type: ignore[attr-defined]
            is BASE.resource_versions[CLUSTER]
        )
    )
    assert await harness.finish() == []
