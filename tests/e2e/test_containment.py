"""One resource that Envoy rejects never freezes the mesh (issue 9, item 1).

The bad resource is written straight to the database, past the API's
validation: an endpoint address with an IPv6 zone id, which Envoy refuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from controlplane.runtime import ControlPlane
from tests.support import EnvoyProcess, RunningModelServer, eventually, writing

pytestmark = pytest.mark.envoy

BAD_ADDRESS = "::1%abc"


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, RunningModelServer]]:
    # good/v1, good/v2, bad/v1, bad/v2: each server answers with its version.
    started = {
        name: await RunningModelServer(name.split("/")[1]).start()
        for name in ("good/v1", "good/v2", "bad/v1", "bad/v2")
    }
    try:
        yield started
    finally:
        for server in started.values():
            await server.stop()


def _endpoint(server: RunningModelServer) -> dict[str, Any]:
    return {"address": "127.0.0.1", "port": server.port}


async def _served(client: httpx.AsyncClient, url: str, **kwargs: Any) -> str | None:
    response = await client.get(url, **kwargs)
    if response.status_code != 200:
        return None
    return str(response.json()["version"])


async def _proxy(api: httpx.AsyncClient, node_id: str) -> dict[str, Any] | None:
    for proxy in (await api.get("/v1/proxies")).json():
        if proxy["node_id"] == node_id:
            return dict(proxy)
    return None


async def test_a_rejected_resource_is_held_back_and_the_rest_moves_on(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    control_plane: ControlPlane,
    servers: dict[str, RunningModelServer],
) -> None:
    for model in ("good", "bad"):
        assert (await api.post("/v1/models", json={"name": model, "protocol": "http"})).is_success
    for version in ("v1", "v2"):
        response = await api.post(
            "/v1/models/good/versions",
            json={"version": version, "endpoints": [_endpoint(servers[f"good/{version}"])]},
        )
        assert response.status_code == 201, response.text
    response = await api.post(
        "/v1/models/bad/versions",
        json={"version": "v1", "endpoints": [_endpoint(servers["bad/v1"])]},
    )
    assert response.status_code == 201, response.text
    await api.put("/v1/models/good/traffic", json={"weights": {"v1": 100, "v2": 0}})
    good, bad = f"{envoy.base_url}/models/good/predict", f"{envoy.base_url}/models/bad/predict"

    async with httpx.AsyncClient(timeout=5) as client:
        assert await eventually(lambda: _served(client, good), timeout=15) == "v1"
        assert await eventually(lambda: _served(client, bad), timeout=15) == "v1"

        # The bad row, past the API: then a change to that model makes it current.
        async with writing(control_plane.sessionmaker) as session:
            await session.execute(
                text("UPDATE endpoints SET address = :bad WHERE port = :port"),
                {"bad": BAD_ADDRESS, "port": servers["bad/v1"].port},
            )
        response = await api.post(
            "/v1/models/bad/versions",
            json={"version": "v2", "endpoints": [_endpoint(servers["bad/v2"])]},
        )
        assert response.status_code == 201, response.text

        async def held_back() -> dict[str, Any] | None:
            proxy = await _proxy(api, envoy.node_id)
            return proxy if proxy is not None and proxy["degraded"] else None

        proxy = await eventually(held_back, timeout=15)
        endpoints = proxy["types"]["endpoints"]
        assert [h["model"] for h in endpoints["held"]] == ["bad"]
        assert "bad/v1" in endpoints["held"][0]["resources"]
        assert endpoints["held"][0]["reason"]

        # Another model's change still reaches Envoy, at the new revision.
        response = await api.put("/v1/models/good/traffic", json={"weights": {"v1": 0, "v2": 100}})
        assert response.status_code == 200, response.text

        async def moved() -> bool:
            return await _served(client, good) == "v2"

        await eventually(moved, timeout=15)
        # The bad model keeps its last accepted config: v1 at its old address, no v2.
        assert await _served(client, bad) == "v1"
        pinned = await client.get(bad, headers={"x-turnout-version": "v2"})
        assert pinned.status_code == 404, pinned.text

        status = (await api.get("/v1/models/bad")).json()
        assert status["status"] == "degraded", status
        assert status["degraded"][0]["type"] == "endpoints"
        assert (await api.get("/v1/models/good")).json()["status"] == "ok"
        metrics = (await api.get("/metrics")).text
        assert 'turnout_xds_model_degraded{model="bad"} 1.0' in metrics

        # Fixing the bad resource releases the model at its new config.
        response = await api.patch(
            "/v1/models/bad/versions/v1", json={"endpoints": [_endpoint(servers["bad/v1"])]}
        )
        assert response.status_code == 200, response.text

        async def released() -> bool:
            pinned = await _served(client, bad, headers={"x-turnout-version": "v2"})
            return pinned == "v2"

        await eventually(released, timeout=15)
        assert (await api.get("/v1/models/bad")).json()["status"] == "ok"
        proxy = await eventually(lambda: _proxy(api, envoy.node_id))
        assert not proxy["degraded"]
        assert 'turnout_xds_model_degraded{model="bad"} 1.0' not in (await api.get("/metrics")).text
