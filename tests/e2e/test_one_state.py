"""One desired state end to end: a rollback restores traffic policies and never
access control, and a restarted control plane serves byte-identical resources
(both databases; both xDS variants where Envoy is involved)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from controlplane.api.app import create_app
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from tests.support import EnvoyProcess, RunningModelServer, synced_at

pytestmark = pytest.mark.envoy


@pytest.fixture
async def model_server() -> AsyncIterator[RunningModelServer]:
    server = await RunningModelServer("v1").start()
    try:
        yield server
    finally:
        await server.stop()


async def _ok(response: Any) -> httpx.Response:
    result: httpx.Response = await response
    assert result.status_code < 300, (result.status_code, result.text)
    return result


def _revision(response: httpx.Response) -> int:
    return int(response.headers["x-turnout-revision"])


def _values(document: Any, key: str) -> Iterator[Any]:
    if isinstance(document, dict):
        for name, value in document.items():
            if name == key:
                yield value
            yield from _values(value, key)
    elif isinstance(document, list):
        for item in document:
            yield from _values(item, key)


async def _model(api: httpx.AsyncClient, name: str, port: int) -> None:
    await _ok(api.post("/v1/models", json={"name": name, "protocol": "http"}))
    endpoints = [{"address": "127.0.0.1", "port": port}]
    await _ok(
        api.post(f"/v1/models/{name}/versions", json={"version": "v1", "endpoints": endpoints})
    )


async def _policies(api: httpx.AsyncClient, timeout_ms: int, max_requests: int) -> int:
    await _ok(api.put("/v1/models/m/policy", json={"timeouts": {"request_timeout_ms": timeout_ms}}))
    body = {"circuit_breakers": {"max_requests": max_requests}}
    return _revision(await _ok(api.put("/v1/models/m/versions/v1/policy", json=body)))


async def test_rollback_restores_model_and_version_policies_in_envoy(
    api: httpx.AsyncClient, envoy: EnvoyProcess, model_server: RunningModelServer
) -> None:
    await _model(api, "m", model_server.port)
    before = await _policies(api, timeout_ms=1500, max_requests=5)
    await _policies(api, timeout_ms=2500, max_requests=9)

    rollback = _revision(await _ok(api.post(f"/v1/revisions/{before}/rollback")))
    await synced_at(api, envoy.node_id, rollback)

    policy = (await api.get("/v1/models/m/policy")).json()
    assert policy["timeouts"]["request_timeout_ms"] == 1500
    version_policy = (await api.get("/v1/models/m/versions/v1/policy")).json()
    assert version_policy["circuit_breakers"]["max_requests"] == 5
    async with httpx.AsyncClient(timeout=10) as client:
        dump = (await client.get(f"{envoy.admin_url}/config_dump")).json()
    assert "1.500s" in set(_values(dump, "timeout"))
    assert "2.500s" not in set(_values(dump, "timeout"))
    assert set(_values(dump, "max_requests")) == {5}


async def test_rollback_never_opens_a_tenants_only_model(
    api: httpx.AsyncClient, envoy: EnvoyProcess, model_server: RunningModelServer
) -> None:
    await _model(api, "m", model_server.port)
    open_revision = _revision(
        await _ok(api.put("/v1/models/m/traffic", json={"weights": {"v1": 100}}))
    )
    rate = {"requests_per_second": 1000, "burst": 1000}
    await _ok(api.post("/v1/tenants", json={"name": "acme", "models": ["m"], "rate_limit": rate}))
    token = (await _ok(api.post("/v1/tenants/acme/credentials"))).json()["token"]
    revoked = (await _ok(api.post("/v1/tenants/acme/credentials"))).json()
    await _ok(api.delete(f"/v1/tenants/acme/credentials/{revoked['id']}"))

    rollback = _revision(await _ok(api.post(f"/v1/revisions/{open_revision}/rollback")))
    await synced_at(api, envoy.node_id, rollback)

    tenants = (await api.get("/v1/tenants")).json()
    assert [t["name"] for t in tenants] == ["acme"]
    url = f"{envoy.base_url}/models/m/predict"
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url)).status_code == 401
        bearer = {"authorization": f"Bearer {revoked['token']}"}
        assert (await client.get(url, headers=bearer)).status_code == 403
        bearer = {"authorization": f"Bearer {token}"}
        assert (await client.get(url, headers=bearer)).status_code == 200


async def test_a_restarted_control_plane_serves_identical_resources(
    api: httpx.AsyncClient,
    control_plane: ControlPlane,
    settings: Settings,
    envoy: EnvoyProcess,
    model_server: RunningModelServer,
) -> None:
    await _model(api, "m", model_server.port)
    await _model(api, "n", model_server.port)
    first = await _policies(api, timeout_ms=1500, max_requests=5)
    rate = {"requests_per_second": 50, "burst": 60}
    await _ok(api.post("/v1/tenants", json={"name": "acme", "models": ["n"], "rate_limit": rate}))
    credential = (await _ok(api.post("/v1/tenants/acme/credentials"))).json()
    await _ok(api.delete(f"/v1/tenants/acme/credentials/{credential['id']}"))
    await _policies(api, timeout_ms=2500, max_requests=9)
    await _ok(api.post(f"/v1/revisions/{first}/rollback"))
    await _ok(api.delete("/v1/models/n"))
    await _ok(api.post("/v1/models", json={"name": "o", "protocol": "openai"}))
    last = _revision(await _ok(api.post(f"/v1/revisions/{first + 2}/rollback")))
    await synced_at(api, envoy.node_id, last)

    proxies = (await api.get("/v1/proxies")).json()
    acked = {
        name: t["acked_version"]
        for p in proxies
        if p["node_id"] == envoy.node_id
        for name, t in p["types"].items()
    }
    served = (await api.get("/readyz")).json()
    assert served["revision"] == last

    restarted = ControlPlane(settings.model_copy(update={"xds_port": 0, "api_port": 0}))
    await restarted.start(api=create_app)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{restarted.api_port}", timeout=10
        ) as fresh:
            again = (await fresh.get("/readyz")).json()
    finally:
        await restarted.stop()
    assert again["revision"] == last
    assert again["xds_versions"] == served["xds_versions"]
    assert acked == served["xds_versions"]
