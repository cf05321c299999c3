"""Endpoints named by DNS, end to end: the version becomes a cluster that the
real Envoy resolves itself, and it follows the name when its answer changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from controlplane.settings import Settings
from tests.conftest import plane_settings, sqlite_copy
from tests.dns_server import DnsServer
from tests.support import EnvoyProcess, RunningModelServer, applied, eventually, served_version

pytestmark = pytest.mark.envoy

NAME = "sentiment-v1.models.test"


@pytest.fixture
async def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    # Name resolution happens in Envoy, whatever the database: SQLite only.
    return sqlite_copy(tmp_path, sqlite_template)


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = await DnsServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(database_url: str, dns: DnsServer) -> Settings:
    return plane_settings(
        database_url,
        dns_resolvers=f"127.0.0.1:{dns.port}",
        dns_refresh_rate_s=0.2,
        dns_respect_ttl=False,
    )


async def _register(api: httpx.AsyncClient, address: str, port: int) -> None:
    response = await api.post("/v1/models", json={"name": "sentiment", "protocol": "http"})
    assert response.status_code == 201, response.text
    response = await api.post(
        "/v1/models/sentiment/versions",
        json={"version": "v1", "endpoints": [{"address": address, "port": port}]},
    )
    assert response.status_code == 201, response.text
    assert response.json()["endpoints"][0]["address"] == address.lower()
    response = await api.put("/v1/models/sentiment/traffic", json={"weights": {"v1": 100}})
    assert response.status_code == 200, response.text


async def test_a_version_named_by_dns_is_resolved_and_followed_by_envoy(
    api: httpx.AsyncClient, envoy: EnvoyProcess, dns: DnsServer
) -> None:
    first = await RunningModelServer("v1").start()
    # The same port on another loopback address: only the name's answer tells them apart.
    second = await RunningModelServer("v1-moved").start(host="127.0.0.2", port=first.port)
    try:
        dns.records[NAME] = ["127.0.0.1"]
        await _register(api, NAME.upper(), first.port)
        await applied(api, envoy.node_id)
        url = f"http://127.0.0.1:{envoy.listener_port}/models/sentiment/predict"
        async with httpx.AsyncClient(timeout=5) as client:

            async def answered_by(version: str) -> bool:
                response = await client.get(url)
                return response.status_code == 200 and response.json()["version"] == version

            await eventually(lambda: answered_by("v1"), timeout=15)
            assert dns.questions > 0

            # The name moves: Envoy re-resolves it and follows, with no change to the state.
            dns.records[NAME] = ["127.0.0.2"]
            await eventually(lambda: answered_by("v1-moved"), timeout=15)
    finally:
        await second.stop()
        await first.stop()


async def test_localhost_is_resolved_by_the_proxy_s_own_resolver(
    api: httpx.AsyncClient, envoy: EnvoyProcess, dns: DnsServer
) -> None:
    server = await RunningModelServer("v1").start()
    try:
        # "localhost" is in /etc/hosts, which Envoy reads before asking a server.
        await _register(api, "localhost", server.port)
        await applied(api, envoy.node_id)
        url = f"http://127.0.0.1:{envoy.listener_port}/models/sentiment/predict"
        async with httpx.AsyncClient(timeout=5) as client:

            async def served() -> str | None:
                response = await client.get(url)
                return await served_version(client, url) if response.status_code == 200 else None

            assert await eventually(served, timeout=15) == "v1"
    finally:
        await server.stop()
