"""Kubernetes discovery in the control plane: a version that names a Service gets
the endpoints its EndpointSlices list (from a fake API server), over EDS, with no
revision and no audit event; one replica watches under a lease and every replica
serves the result; another takes over when the watcher stops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from controlplane.api.app import create_app
from controlplane.db.revisions import RevisionRepository
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from controlplane.xds.resources import ENDPOINT
from tests.conftest import discovery_settings
from tests.kube_api import FakeKubernetes, slice_endpoint
from tests.support import until


@pytest.fixture
def settings(database_url: str, fake: FakeKubernetes, tmp_path: Path) -> Settings:
    return discovery_settings(database_url, fake, tmp_path)


def served(plane: ControlPlane, cluster: str = "sentiment/v1") -> list[tuple[str, int, str]]:
    """(address, port, zone) of every endpoint ``plane`` serves ``cluster`` over EDS."""
    snapshot = plane.cache.snapshot
    if snapshot is None or cluster not in snapshot.resources[ENDPOINT]:
        return []
    assignment = endpoint_pb2.ClusterLoadAssignment()
    snapshot.resources[ENDPOINT][cluster].Unpack(assignment)
    return sorted(
        (
            lb.endpoint.address.socket_address.address,
            lb.endpoint.address.socket_address.port_value,
            locality.locality.zone,
        )
        for locality in assignment.endpoints
        for lb in locality.lb_endpoints
    )


async def _wait(predicate: Callable[[], Any]) -> Any:
    return await until(predicate, timeout=15)


async def _register(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/models", json={"name": "sentiment", "protocol": "http"})
    assert response.status_code == 201, response.text
    body = {
        "version": "v1",
        "kubernetes": {"namespace": "ml", "service": "sentiment-v2", "port": "http"},
    }
    response = await api.post("/v1/models/sentiment/versions", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["kubernetes"] == body["kubernetes"]


async def _head(plane: ControlPlane) -> int:
    async with plane.sessionmaker() as session:
        return (await RevisionRepository(session).head())[0]


async def _audit_count(api: httpx.AsyncClient) -> int:
    response = await api.get("/v1/audit/events", params={"limit": 500})
    assert response.status_code == 200, response.text
    return len(response.json()["items"])


async def test_a_version_by_service_serves_the_discovered_endpoints(
    control_plane: ControlPlane, api: httpx.AsyncClient, fake: FakeKubernetes
) -> None:
    await _register(api)
    revision = await _head(control_plane)
    events = await _audit_count(api)
    await fake.put_slice(
        "ml",
        "sentiment-v2-abc",
        "sentiment-v2",
        [slice_endpoint("10.0.0.1", zone="a"), slice_endpoint("10.0.0.2", zone="b")],
        ports=[("http", 8080), ("metrics", 9090)],
    )
    await _wait(lambda: served(control_plane) == [("10.0.0.1", 8080, "a"), ("10.0.0.2", 8080, "b")])
    response = await api.get("/v1/models/sentiment/versions/v1")
    assert response.status_code == 200
    version = response.json()
    assert version["endpoints"] == []
    assert [(e["address"], e["port"], e["zone"]) for e in version["discovered"]] == [
        ("10.0.0.1", 8080, "a"),
        ("10.0.0.2", 8080, "b"),
    ]

    # An endpoint turns not ready: it leaves EDS at once.
    await fake.put_slice(
        "ml",
        "sentiment-v2-abc",
        "sentiment-v2",
        [slice_endpoint("10.0.0.1", zone="a", ready=False), slice_endpoint("10.0.0.2", zone="b")],
    )
    await _wait(lambda: served(control_plane) == [("10.0.0.2", 8080, "b")])
    # Observed state: no revision, no audit event.
    assert await _head(control_plane) == revision
    assert await _audit_count(api) == events

    # Switched to listed endpoints, the version stops following the Service.
    response = await api.patch(
        "/v1/models/sentiment/versions/v1",
        json={"endpoints": [{"address": "10.9.9.9", "port": 80}]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["kubernetes"] is None and response.json()["discovered"] is None
    await _wait(lambda: served(control_plane) == [("10.9.9.9", 80, "")])


async def test_one_replica_watches_every_replica_serves_and_another_takes_over(
    control_plane: ControlPlane, api: httpx.AsyncClient, fake: FakeKubernetes, settings: Settings
) -> None:
    second = ControlPlane(settings.model_copy(update={"api_port": 0, "xds_port": 0}))
    await second.start(api=create_app)
    try:
        await _register(api)
        await fake.put_slice("ml", "sentiment-v2-abc", "sentiment-v2", [slice_endpoint("10.0.0.1")])
        for plane in (control_plane, second):
            await _wait(lambda plane=plane: served(plane) == [("10.0.0.1", 8080, "")])
        assert control_plane.discovery is not None and second.discovery is not None
        planes = {control_plane: control_plane.discovery, second: second.discovery}
        leaders = [plane for plane, leader in planes.items() if leader.leading]
        assert len(leaders) == 1
        watches_before = fake.watch_requests
        # The watcher stops (it gives the lease up): the other replica takes over.
        leader = leaders[0]
        follower = second if leader is control_plane else control_plane
        await leader.stop()
        assert follower.discovery is not None
        await _wait(lambda: follower.discovery.leading)  # type: ignore[union-attr]
        await _wait(lambda: fake.watch_requests > watches_before)
        await fake.put_slice("ml", "sentiment-v2-abc", "sentiment-v2", [slice_endpoint("10.0.0.3")])
        await _wait(lambda: served(follower) == [("10.0.0.3", 8080, "")])
    finally:
        await second.stop()
