"""Tenants end to end: credentials, model grants, rate limits and revocation, all
checked by a real Envoy (over both xDS variants).

After each change the tests wait until Envoy has ACKed the revision it created
(``applied``): a grant or revocation is in force from then on, not merely soon.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from controlplane.runtime import ControlPlane
from tests.support import EnvoyProcess, RunningModelServer, applied

pytestmark = pytest.mark.envoy


@pytest.fixture
async def model_server() -> AsyncIterator[RunningModelServer]:
    server = await RunningModelServer("v1").start()
    try:
        yield server
    finally:
        await server.stop()


async def _model(api: httpx.AsyncClient, name: str, port: int, protocol: str = "http") -> None:
    response = await api.post("/v1/models", json={"name": name, "protocol": protocol})
    assert response.status_code == 201, response.text
    response = await api.post(
        f"/v1/models/{name}/versions",
        json={"version": "v1", "endpoints": [{"address": "127.0.0.1", "port": port}]},
    )
    assert response.status_code == 201, response.text


async def _tenant(
    api: httpx.AsyncClient, name: str, models: list[str], rps: int, burst: int
) -> str:
    """Create a tenant; return a credential issued to it."""
    rate = {"requests_per_second": rps, "burst": burst}
    body = {"name": name, "models": models, "rate_limit": rate}
    response = await api.post("/v1/tenants", json=body)
    assert response.status_code == 201, response.text
    response = await api.post(f"/v1/tenants/{name}/credentials")
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_credentials_grants_and_revocation(
    api: httpx.AsyncClient, envoy: EnvoyProcess, model_server: RunningModelServer
) -> None:
    for name in ("secret", "other", "open"):
        await _model(api, name, model_server.port, protocol="openai")
    token = await _tenant(api, "acme", ["secret"], rps=1000, burst=1000)
    await _tenant(api, "globex", ["other"], rps=1000, burst=1000)
    await applied(api, envoy.node_id, timeout=10)
    url = f"{envoy.base_url}/models/secret/predict"
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"] == "unauthenticated"
        assert response.json()["reason"] == "Jwt is missing", response.text
        header, payload, signature = token.split(".")
        flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
        response = await client.get(url, headers=_bearer(f"{header}.{payload}.{flipped}"))
        assert response.status_code == 401
        assert response.json()["error"] == "unauthenticated"

        response = await client.get(url, headers=_bearer(token))
        assert response.status_code == 200, response.text
        assert response.json()["version"] == "v1"
        # By header too, and with the token stripped before the model server.
        response = await client.get(
            f"{envoy.base_url}/predict", headers={"x-turnout-model": "secret", **_bearer(token)}
        )
        assert response.status_code == 200, response.text
        assert model_server.server.authorized_requests == 0

        # A model granted to another tenant only: 403 with a JSON body.
        other = f"{envoy.base_url}/models/other/predict"
        response = await client.get(other, headers=_bearer(token))
        assert response.status_code == 403
        assert response.json()["error"] == "permission_denied"
        # An open model needs no credential.
        response = await client.get(f"{envoy.base_url}/models/open/predict")
        assert response.status_code == 200, response.text
        # A body naming a protected model gets no way around the check.
        chat = f"{envoy.base_url}/v1/chat/completions"
        response = await client.post(chat, json={"model": "secret", "messages": []})
        assert response.status_code == 401, response.text
        response = await client.post(
            chat, json={"model": "secret", "messages": []}, headers=_bearer(token)
        )
        assert response.status_code == 200, response.text

        # No credential in Envoy's config.
        dump = (await client.get(f"{envoy.admin_url}/config_dump")).text
        assert "envoy.filters.http.jwt_authn" in dump
        assert token not in dump
        assert token.split(".")[2] not in dump

        credentials = (await api.get("/v1/tenants/acme/credentials")).json()
        response = await api.delete(f"/v1/tenants/acme/credentials/{credentials[0]['id']}")
        assert response.status_code == 204, response.text
        await applied(api, envoy.node_id, timeout=2)
        response = await client.get(url, headers=_bearer(token))
        assert response.status_code == 403, response.text
        # A new credential of the same tenant still works.
        response = await api.post("/v1/tenants/acme/credentials")
        assert response.status_code == 201, response.text
        fresh = response.json()["token"]
        await applied(api, envoy.node_id, timeout=5)
        response = await client.get(url, headers=_bearer(fresh))
        assert response.status_code == 200, response.text


async def test_rate_limit_per_tenant(
    api: httpx.AsyncClient, envoy: EnvoyProcess, model_server: RunningModelServer
) -> None:
    await _model(api, "secret", model_server.port)
    slow = await _tenant(api, "slow", ["secret"], rps=1, burst=3)
    other = await _tenant(api, "other", ["secret"], rps=1, burst=3)
    # Both tenants' grants and limits: the first one's alone already makes the
    # model protected, so a 401 without a credential proves nothing about "other".
    await applied(api, envoy.node_id, timeout=10)
    url = f"{envoy.base_url}/models/secret/predict"
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url)).status_code == 401
        statuses = await asyncio.gather(
            *(client.get(url, headers=_bearer(slow)) for _ in range(10))
        )
        codes = [r.status_code for r in statuses]
        assert codes.count(200) <= 4, codes  # a burst of 3, and at most one refill
        limited = [r for r in statuses if r.status_code == 429]
        assert len(limited) >= 6, codes
        assert limited[0].headers["content-type"].startswith("application/json")
        assert limited[0].json()["error"] == "rate_limited"
        # The other tenant has its own bucket.
        response = await client.get(url, headers=_bearer(other))
        assert response.status_code == 200, response.text


async def test_a_grant_that_reaches_envoy_late_is_waited_for(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    model_server: RunningModelServer,
    control_plane: ControlPlane,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``applied`` waits for the revision of the last change, not for an earlier one
    that already answers like it (the model is protected after the first grant)."""
    await _model(api, "secret", model_server.port)
    first = await _tenant(api, "first", ["secret"], rps=1000, burst=1000)
    await applied(api, envoy.node_id, timeout=10)
    publish = control_plane.cache.publish

    async def late(*args: Any, **kwargs: Any) -> None:
        # A slow control plane: every later snapshot reaches the cache a second late.
        await asyncio.sleep(1.0)
        await publish(*args, **kwargs)

    monkeypatch.setattr(control_plane.cache, "publish", late)
    second = await _tenant(api, "second", ["secret"], rps=1000, burst=1000)
    await applied(api, envoy.node_id, timeout=10)
    url = f"{envoy.base_url}/models/secret/predict"
    async with httpx.AsyncClient(timeout=10) as client:
        for token in (first, second):
            response = await client.get(url, headers=_bearer(token))
            assert response.status_code == 200, response.text
