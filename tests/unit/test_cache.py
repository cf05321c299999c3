"""The snapshot cache: publish, wait for the next snapshot, refuse inconsistent ones."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER
from controlplane.xds.snapshot import InconsistentSnapshot, Snapshot
from controlplane.xds.translate import translate

TIMEOUT_S = 5.0


def _snapshot(revision: int, local_zone: str | None = None) -> Snapshot:
    endpoints = (
        EndpointSpec("10.0.0.1", 8000 + revision, zone="a"),
        EndpointSpec("10.0.0.2", 8000 + revision, zone="b"),
    )
    model = ModelSpec("m", "http", (VersionSpec("v1", endpoints),))
    state = DesiredState(revision, (model,))
    return Snapshot.from_resources(revision, translate(state, local_zone=local_zone))


def _inconsistent() -> Snapshot:
    dangling = cluster_pb2.Cluster(name="x/v1", type=cluster_pb2.Cluster.EDS)
    return Snapshot.from_resources(99, {CLUSTER: {"x/v1": dangling}})


async def _yield_to_other_tasks() -> None:
    # Lets a freshly created waiter task run up to its first suspension point.
    for _ in range(3):
        await asyncio.sleep(0)


async def test_cache_starts_empty() -> None:
    assert SnapshotCache().snapshot is None


async def test_publish_wakes_a_waiter() -> None:
    cache = SnapshotCache()
    waiter = asyncio.create_task(cache.next_snapshot(None))
    await _yield_to_other_tasks()
    assert not waiter.done()

    first = _snapshot(1)
    await cache.publish(first)

    assert await asyncio.wait_for(waiter, TIMEOUT_S) is first
    assert cache.snapshot is first


async def test_next_snapshot_returns_at_once_when_the_current_one_is_unseen() -> None:
    cache = SnapshotCache()
    first = _snapshot(1)
    await cache.publish(first)

    assert await asyncio.wait_for(cache.next_snapshot(None), TIMEOUT_S) is first


async def test_next_snapshot_does_not_return_the_seen_snapshot() -> None:
    cache = SnapshotCache()
    first, second = _snapshot(1), _snapshot(2)
    await cache.publish(first)
    waiter = asyncio.create_task(cache.next_snapshot(first))
    await _yield_to_other_tasks()
    assert not waiter.done()

    await cache.publish(second)

    assert await asyncio.wait_for(waiter, TIMEOUT_S) is second


async def test_inconsistent_snapshot_is_refused_and_the_previous_one_stays() -> None:
    cache = SnapshotCache()
    first = _snapshot(1)
    await cache.publish(first)
    waiter = asyncio.create_task(cache.next_snapshot(first))
    await _yield_to_other_tasks()

    with pytest.raises(InconsistentSnapshot):
        await cache.publish(_inconsistent())

    assert cache.snapshot is first
    await _yield_to_other_tasks()
    assert not waiter.done()
    waiter.cancel()


async def test_a_proxy_gets_its_zones_snapshot_else_the_default() -> None:
    cache = SnapshotCache()
    default, zone_a = _snapshot(1), _snapshot(1, local_zone="a")
    await cache.publish(default, {"a": zone_a})

    assert cache.snapshot_for("a") is zone_a
    assert cache.snapshot_for("c") is default
    assert cache.snapshot_for("") is default


async def test_an_inconsistent_zone_snapshot_refuses_the_whole_publish() -> None:
    cache = SnapshotCache()
    first = _snapshot(1)
    await cache.publish(first)

    with pytest.raises(InconsistentSnapshot):
        await cache.publish(_snapshot(2), {"a": _inconsistent()})

    assert cache.snapshot is first
    assert cache.snapshot_for("a") is first


async def test_next_snapshot_for_a_zone_returns_that_zones_snapshot() -> None:
    cache = SnapshotCache()
    zone_a = _snapshot(1, local_zone="a")
    await cache.publish(_snapshot(1), {"a": zone_a})

    assert await asyncio.wait_for(cache.next_snapshot(None, "a"), TIMEOUT_S) is zone_a


async def test_a_zone_snapshot_with_other_names_is_checked_on_its_own() -> None:
    cache = SnapshotCache()
    good = _snapshot(1)
    same_names = _snapshot(1, local_zone="a")
    assert same_names.same_names_and_references(good)
    broken = _inconsistent()
    assert not broken.same_names_and_references(good)
    with pytest.raises(InconsistentSnapshot):
        await cache.publish(good, {"a": same_names, "b": broken})
    assert cache.snapshot is None
    await cache.publish(good, {"a": same_names})
    assert cache.snapshot_for("a") is same_names
