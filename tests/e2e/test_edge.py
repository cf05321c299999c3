"""Edge defaults of the inference listener, through a real Envoy (issue 9, item 7)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from controlplane.domain.policy import DEFAULT_MAX_REQUEST_BYTES
from tests.support import EnvoyProcess, RunningModelServer, applied, eventually

pytestmark = pytest.mark.envoy

SMALL = 4096


@pytest.fixture
async def model_server() -> AsyncIterator[RunningModelServer]:
    server = await RunningModelServer("v1").start()
    try:
        yield server
    finally:
        await server.stop()


async def _model(api: httpx.AsyncClient, name: str, port: int, **policy: Any) -> None:
    response = await api.post("/v1/models", json={"name": name, "protocol": "openai"})
    assert response.status_code == 201, response.text
    response = await api.post(
        f"/v1/models/{name}/versions",
        json={"version": "v1", "endpoints": [{"address": "127.0.0.1", "port": port}]},
    )
    assert response.status_code == 201, response.text
    if policy:
        response = await api.put(f"/v1/models/{name}/policy", json=policy)
        assert response.status_code == 200, response.text


def _too_large(response: httpx.Response) -> bool:
    """A JSON 413 naming the request: in the OpenAI shape on /v1 paths, in the
    plain shape elsewhere (controlplane.xds.replies)."""
    if response.status_code != 413 or not response.headers["content-type"].startswith(
        "application/json"
    ):
        return False
    body = response.json()
    if response.request.url.path.startswith("/v1/"):
        error = body["error"]
        return bool(error["code"] == "request_too_large" and error["request_id"])
    return bool(body["error"] == "request_too_large" and body["request_id"])


async def test_bodies_over_the_model_limit_get_413_whichever_way_it_is_named(
    api: httpx.AsyncClient, envoy: EnvoyProcess, model_server: RunningModelServer
) -> None:
    await _model(api, "small", model_server.port, max_request_bytes=SMALL)
    await _model(api, "plain", model_server.port)
    policy = (await api.get("/v1/models/plain/policy")).json()
    assert policy["max_request_bytes"] is None  # the documented default applies
    # Both models, versions and splits are in force on the proxy before any request.
    await applied(api, envoy.node_id)
    base = envoy.base_url
    async with httpx.AsyncClient(timeout=30) as client:

        async def limited() -> bool:
            return _too_large(await client.post(f"{base}/models/small/p", content=b"x" * 8000))

        await eventually(limited, timeout=15)
        seen = len(model_server.server.paths)
        big = b"x" * (SMALL + 1)
        assert _too_large(
            await client.post(f"{base}/p", content=big, headers={"x-turnout-model": "small"})
        )
        chat = {"model": "small", "messages": [], "pad": "x" * SMALL}
        response = await client.post(f"{base}/v1/chat/completions", json=chat)
        assert _too_large(response), response.text
        assert len(model_server.server.paths) == seen  # none reached the model server
        # Under the limit, each way goes through.
        ok = await client.post(f"{base}/models/small/p", content=b"x" * 100)
        assert ok.status_code == 200, ok.text
        chat = {"model": "small", "messages": []}
        ok = await client.post(f"{base}/v1/chat/completions", json=chat)
        assert ok.status_code == 200, ok.text
        # The other model keeps the default limit: SMALL is nothing to it, 8 MiB + 1 is.
        ok = await client.post(f"{base}/v1/chat/completions", json={**chat, "model": "plain"})
        assert ok.status_code == 200, ok.text
        huge = b"x" * (DEFAULT_MAX_REQUEST_BYTES + 1)
        assert _too_large(await client.post(f"{base}/models/plain/p", content=huge))


async def test_escaped_slashes_are_refused(
    api: httpx.AsyncClient, envoy: EnvoyProcess, model_server: RunningModelServer
) -> None:
    await _model(api, "m", model_server.port)
    async with httpx.AsyncClient(timeout=10) as client:

        async def routed() -> bool:
            return (await client.get(f"{envoy.base_url}/models/m/ok")).status_code == 200

        await eventually(routed, timeout=15)
        seen = len(model_server.server.paths)
        for path in ("/models/m/..%2fadmin", "/models/m/a%2Fb", "/models/m/..%5cadmin"):
            response = await client.get(f"{envoy.base_url}{path}")
            assert response.status_code == 400, (path, response.status_code, response.text)
            assert response.json()["error"] == "bad_request"
        assert len(model_server.server.paths) == seen


async def test_credentials_are_taken_from_the_authorization_header_only(
    api: httpx.AsyncClient, envoy: EnvoyProcess, model_server: RunningModelServer
) -> None:
    await _model(api, "secret", model_server.port)
    rate = {"requests_per_second": 1000, "burst": 1000}
    body = {"name": "acme", "models": ["secret"], "rate_limit": rate}
    assert (await api.post("/v1/tenants", json=body)).status_code == 201
    token = (await api.post("/v1/tenants/acme/credentials")).json()["token"]
    url = f"{envoy.base_url}/models/secret/p"
    async with httpx.AsyncClient(timeout=10) as client:

        async def admitted() -> bool:
            response = await client.get(url, headers={"authorization": f"Bearer {token}"})
            return response.status_code == 200

        await eventually(admitted, timeout=15)
        response = await client.get(url, params={"access_token": token})
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "unauthenticated"


async def test_the_bootstrap_reconnects_to_the_control_plane_quickly(
    envoy: EnvoyProcess,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        dump = (await client.get(f"{envoy.admin_url}/config_dump")).json()
    bootstrap = next(c for c in dump["configs"] if c["@type"].endswith("BootstrapConfigDump"))
    ads = bootstrap["bootstrap"]["dynamic_resources"]["ads_config"]["grpc_services"][0]
    backoff = ads["envoy_grpc"]["retry_policy"]["retry_back_off"]
    assert backoff == {"base_interval": "0.500s", "max_interval": "5s"}
