"""The config revision a proxy is synced at: what a change waits for before it relies
on Envoy enforcing it. Driven by the fake ADS streams of the sotw and delta tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from controlplane.xds.status import ProxyRegistry
from controlplane.xds.translate import ROUTE_CONFIG_NAME
from tests.unit import test_delta as delta
from tests.unit.test_sotw import (
    ONE_VERSION,
    TWO_VERSIONS,
    Stream,
    _ack,
    _nack,
    _snapshot,
    _subscribe,
    _sync_all,
)


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


def _synced_revision(stream: Stream) -> int | None:
    return ProxyRegistry.synced_revision(stream.connection, stream.cache.snapshot)


async def test_no_revision_before_a_snapshot_or_before_every_type_is_acked(
    stream: Stream,
) -> None:
    assert _synced_revision(stream) is None
    snapshot = _snapshot(1, ONE_VERSION)
    await stream.cache.publish(snapshot)
    stream.send(_subscribe(CLUSTER), _subscribe(LISTENER))
    clusters = await stream.next(CLUSTER)
    stream.send(_subscribe(ENDPOINT, sorted(snapshot.resources[ENDPOINT])))
    endpoints = await stream.next(ENDPOINT)
    stream.send(_ack(clusters), _ack(endpoints, sorted(snapshot.resources[ENDPOINT])))
    listeners = await stream.next(LISTENER)
    # Clusters and endpoints are in, listeners are in flight: not synced yet.
    assert _synced_revision(stream) is None
    stream.send(_subscribe(ROUTE, [ROUTE_CONFIG_NAME]), _ack(listeners))
    routes = await stream.next(ROUTE)
    assert _synced_revision(stream) is None
    stream.send(_ack(routes, [ROUTE_CONFIG_NAME]))
    await stream.until(lambda: _synced_revision(stream) == 1)


async def test_a_newer_revision_counts_only_once_its_changes_are_acked(stream: Stream) -> None:
    await stream.cache.publish(_snapshot(1, ONE_VERSION))
    await _sync_all(stream, _snapshot(1, ONE_VERSION))
    assert _synced_revision(stream) == 1

    await stream.cache.publish(_snapshot(2, TWO_VERSIONS))
    clusters = await stream.next(CLUSTER)
    endpoints = await stream.next(ENDPOINT)
    # Revision 1 is no longer what the proxy is compared against, and 2 is not in.
    assert _synced_revision(stream) is None
    # Envoy warms m/v2: it asks for its endpoints, then ACKs them and the clusters.
    stream.send(_ack(endpoints, ["m/v1", "m/v2"]))
    endpoints = await stream.next(ENDPOINT)
    stream.send(_ack(endpoints, ["m/v1", "m/v2"]), _ack(clusters))
    routes = await stream.next(ROUTE)
    assert _synced_revision(stream) is None
    stream.send(_ack(routes, [ROUTE_CONFIG_NAME]))
    await stream.until(lambda: _synced_revision(stream) == 2)


async def test_a_revision_that_changes_no_resource_is_synced_at_once(stream: Stream) -> None:
    await stream.cache.publish(_snapshot(1, ONE_VERSION))
    await _sync_all(stream, _snapshot(1, ONE_VERSION))
    # Same content, newer revision (a change that shapes nothing Envoy holds).
    await stream.cache.publish(_snapshot(2, ONE_VERSION))
    assert _synced_revision(stream) == 2


async def test_a_nack_is_not_synced(stream: Stream) -> None:
    await stream.cache.publish(_snapshot(1, ONE_VERSION))
    responses = await _sync_all(stream, _snapshot(1, ONE_VERSION))
    await stream.cache.publish(_snapshot(2, TWO_VERSIONS))
    clusters = await stream.next(CLUSTER)
    stream.send(_nack(clusters, responses[CLUSTER].version_info))
    await stream.until(lambda: stream.state(CLUSTER).nacked_version is not None)
    assert _synced_revision(stream) is None


async def test_a_type_with_nothing_to_hold_needs_no_subscription(stream: Stream) -> None:
    snapshot = _snapshot(1)  # no models: no clusters, so Envoy never asks for endpoints
    await stream.cache.publish(snapshot)
    stream.send(_subscribe(CLUSTER), _subscribe(LISTENER))
    clusters = await stream.next(CLUSTER)
    stream.send(_ack(clusters))
    listeners = await stream.next(LISTENER)
    stream.send(_subscribe(ROUTE, [ROUTE_CONFIG_NAME]), _ack(listeners))
    routes = await stream.next(ROUTE)
    stream.send(_ack(routes, [ROUTE_CONFIG_NAME]))
    await stream.until(lambda: _synced_revision(stream) == 1)
    assert not stream.state(ENDPOINT).subscribed


async def test_a_delta_stream_is_synced_once_every_type_is_current(
    harness: Stream,
) -> None:
    assert _synced_revision(harness) is None
    await delta._sync(harness)
    await harness.until(lambda: _synced_revision(harness) == delta.BASE.revision)

    moved = delta._snapshot(2, {"v1": 8001, "v2": 9999}, {"v1": 100})
    await harness.cache.publish(moved)
    response = await harness.next(ENDPOINT)
    assert _synced_revision(harness) is None
    harness.send(delta._request(ENDPOINT, nonce=response.nonce))
    await harness.until(lambda: _synced_revision(harness) == 2)


harness = delta.harness
