"""Discovery by Kubernetes Service, end to end: a version that names a Service
gets traffic through the real Envoy to the endpoints the (fake) Kubernetes API
lists for it, and follows them when they change."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from controlplane.settings import Settings
from tests.conftest import discovery_settings, sqlite_copy
from tests.kube_api import FakeKubernetes, slice_endpoint
from tests.support import EnvoyProcess, RunningModelServer, eventually

pytestmark = pytest.mark.envoy


@pytest.fixture
async def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    # Discovery against both databases is tested in tests/integration: SQLite here.
    return sqlite_copy(tmp_path, sqlite_template)


@pytest.fixture
def settings(database_url: str, fake: FakeKubernetes, tmp_path: Path) -> Settings:
    return discovery_settings(database_url, fake, tmp_path)


async def test_a_version_by_service_gets_traffic_at_its_discovered_endpoints(
    api: httpx.AsyncClient, envoy: EnvoyProcess, fake: FakeKubernetes
) -> None:
    first = await RunningModelServer("pod-a").start()
    # The same port on another loopback address: only the slice tells them apart.
    second = await RunningModelServer("pod-b").start(host="127.0.0.2", port=first.port)
    try:
        await fake.put_slice(
            "ml",
            "sentiment-v2-abc",
            "sentiment-v2",
            [slice_endpoint("127.0.0.1", zone="a"), slice_endpoint("127.0.0.2", ready=False)],
            ports=[("metrics", 9090), ("http", first.port)],
        )
        response = await api.post("/v1/models", json={"name": "sentiment", "protocol": "http"})
        assert response.status_code == 201, response.text
        response = await api.post(
            "/v1/models/sentiment/versions",
            json={
                "version": "v2",
                "kubernetes": {"namespace": "ml", "service": "sentiment-v2", "port": "http"},
            },
        )
        assert response.status_code == 201, response.text

        url = f"http://127.0.0.1:{envoy.listener_port}/models/sentiment/predict"
        async with httpx.AsyncClient(timeout=5) as client:

            async def answered_by(server: str) -> bool:
                response = await client.get(url)
                return response.status_code == 200 and response.json()["version"] == server

            await eventually(lambda: answered_by("pod-a"), timeout=20)

            # The first pod turns not ready and the second ready: traffic follows.
            await fake.put_slice(
                "ml",
                "sentiment-v2-abc",
                "sentiment-v2",
                [slice_endpoint("127.0.0.1", ready=False), slice_endpoint("127.0.0.2")],
                ports=[("http", first.port)],
            )
            await eventually(lambda: answered_by("pod-b"), timeout=20)
            for _ in range(5):
                assert await answered_by("pod-b")
        version = (await api.get("/v1/models/sentiment/versions/v2")).json()
        assert [(e["address"], e["port"]) for e in version["discovered"]] == [
            ("127.0.0.2", first.port)
        ]
    finally:
        await second.stop()
        await first.stop()
