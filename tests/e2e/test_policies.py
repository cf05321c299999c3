"""Traffic policies end to end: admin API -> xDS -> real Envoy -> test model servers.

After the changes the tests wait until Envoy has ACKed every type at the
revision they created (``applied``: ``synced_revision`` in /v1/proxies), so each
test also shows that Envoy accepts the rendered config, and checks traffic only
once that config is in force.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from tests.e2e.servers import TestServer
from tests.support import EnvoyProcess, applied, eventually

pytestmark = pytest.mark.envoy

MODEL = "llm"
# Retries that move to another replica at once. Without a budget Envoy allows 3
# concurrent retries per cluster (its max_retries default), too few for a
# replica dying under load.
FAILOVER_RETRIES = {
    "retry_on": ["connect-failure", "reset", "5xx"],
    "num_retries": 2,
    "budget_percent": 25.0,
    "budget_min_concurrency": 10,
}
URL = f"/models/{MODEL}/predict"


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[TestServer]]]:
    """Start test servers on demand; stop them all at the end."""
    started: list[TestServer] = []

    async def start(version: str, replica: str = "", **knobs: Any) -> TestServer:
        server = await TestServer(version, replica or version, **knobs).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.stop()


async def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201, 204), response.text
    return response.json() if response.content else {}


async def _register(
    api: httpx.AsyncClient,
    versions: dict[str, list[dict[str, object]]],
    weights: dict[str, int],
    protocol: str = "http",
) -> None:
    await _ok(await api.post("/v1/models", json={"name": MODEL, "protocol": protocol}))
    for version, endpoints in versions.items():
        body = {"version": version, "endpoints": endpoints}
        await _ok(await api.post(f"/v1/models/{MODEL}/versions", json=body))
    await _ok(await api.put(f"/v1/models/{MODEL}/traffic", json={"weights": weights}))


async def _gather(
    client: httpx.AsyncClient, total: int, concurrency: int, **kwargs: Any
) -> list[httpx.Response]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> httpx.Response:
        async with semaphore:
            return await client.post(URL, **kwargs)

    return await asyncio.gather(*(one() for _ in range(total)))


async def test_retries_turn_30_percent_503s_into_99_percent_success(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    servers: Callable[..., Awaitable[TestServer]],
) -> None:
    flaky = await servers("v1", fail_30_percent=True)
    await _register(api, {"v1": [flaky.endpoint()]}, {"v1": 100})
    policy = {
        "retries": {
            "retry_on": ["5xx"],
            "num_retries": 2,
            "per_try_timeout_ms": 2000,
            "backoff_base_ms": 5,
            "backoff_max_ms": 20,
            "budget_percent": 100.0,
            "budget_min_concurrency": 10,
        }
    }
    await _ok(await api.put(f"/v1/models/{MODEL}/policy", json=policy))
    await applied(api, envoy.node_id, timeout=15)
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        # One at a time, so the server's failures stay as spread out as it makes them.
        responses = await _gather(client, 200, concurrency=1)
    statuses = Counter(r.status_code for r in responses)
    assert statuses[200] / 200 >= 0.99, statuses
    assert flaky.failures / flaky.requests >= 0.25, (flaky.failures, flaky.requests)
    assert await envoy.stat(f"cluster.{MODEL}_v1.upstream_rq_retry") >= 50


async def test_request_timeout_gives_504_at_the_configured_bound(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    servers: Callable[..., Awaitable[TestServer]],
) -> None:
    slow = await servers("v1", hold=asyncio.Event())
    await _register(api, {"v1": [slow.endpoint()]}, {"v1": 100})
    policy = {"timeouts": {"request_timeout_ms": 400, "idle_timeout_ms": 30000}}
    await _ok(await api.put(f"/v1/models/{MODEL}/policy", json=policy))
    await applied(api, envoy.node_id, timeout=15)
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=30) as client:
        responses = await asyncio.gather(*(client.post(URL) for _ in range(3)))
    assert [r.status_code for r in responses] == [504, 504, 504]
    assert all(r.json()["error"] == "upstream_timeout" for r in responses)
    assert all(r.json()["reason"] == "upstream request timeout" for r in responses)
    # Envoy tells the upstream the bound it applies to the request.
    assert slow.headers[-1]["x-envoy-expected-rq-timeout-ms"] == "400"
    assert await envoy.stat(f"cluster.{MODEL}_v1.upstream_rq_timeout") >= 3
    assert slow.hold is not None
    slow.hold.set()


async def test_circuit_breaker_overflow_gets_503_overloaded(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    servers: Callable[..., Awaitable[TestServer]],
) -> None:
    hold = asyncio.Event()
    busy = await servers("v1", hold=hold)
    await _register(api, {"v1": [busy.endpoint()]}, {"v1": 100})
    breakers = {
        "max_connections": 1,
        "max_pending_requests": 1,
        "max_requests": 1,
        "max_retries": 1,
    }
    await _ok(
        await api.put(f"/v1/models/{MODEL}/versions/v1/policy", json={"circuit_breakers": breakers})
    )
    await applied(api, envoy.node_id, timeout=15)
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=30) as client:
        pending = [asyncio.create_task(client.post(URL)) for _ in range(8)]

        async def held() -> bool:
            return busy.requests >= 1

        await eventually(held, timeout=10)
        # One request is at the server and one may wait in Envoy's queue; the
        # rest overflow, fail fast, and say so.
        overflowed = await eventually(
            lambda: _done([t for t in pending if t.done()], 6), timeout=10
        )
        hold.set()
        responses = await asyncio.gather(*pending)
    assert all(r.status_code == 503 for r in overflowed)
    assert all(r.headers.get("x-envoy-overloaded") == "true" for r in overflowed)
    assert Counter(r.status_code for r in responses)[200] >= 1
    assert busy.requests <= 2


async def _done(tasks: list[asyncio.Task[httpx.Response]], count: int) -> list[httpx.Response]:
    return [t.result() for t in tasks] if len(tasks) >= count else []


async def test_outlier_detection_keeps_success_when_a_replica_dies(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    servers: Callable[..., Awaitable[TestServer]],
) -> None:
    replicas = [await servers("v1", f"r{i}") for i in range(3)]
    await _register(api, {"v1": [r.endpoint() for r in replicas]}, {"v1": 100})
    await _ok(
        await api.put(
            f"/v1/models/{MODEL}/versions/v1/policy",
            json={
                "outlier_detection": {
                    "consecutive_5xx": 2,
                    "interval_ms": 500,
                    "base_ejection_time_ms": 30000,
                    "max_ejection_percent": 50,
                }
            },
        )
    )
    await _ok(await api.put(f"/v1/models/{MODEL}/policy", json={"retries": FAILOVER_RETRIES}))
    await applied(api, envoy.node_id, timeout=15)
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        before = await _gather(client, 100, concurrency=4)
        await replicas[0].stop()
        after = await _gather(client, 300, concurrency=4)
    statuses = Counter(r.status_code for r in before + after)
    assert statuses[200] / 400 >= 0.995, statuses
    served = Counter(r.json()["replica"] for r in after[100:] if r.status_code == 200)
    assert set(served) == {"r1", "r2"}

    async def ejected() -> bool:
        name = f"cluster.{MODEL}_v1.outlier_detection.ejections_enforced_total"
        return await envoy.stat(name) >= 1

    await eventually(ejected, timeout=10)


async def test_shadow_gets_its_share_and_clients_see_only_the_primary(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    servers: Callable[..., Awaitable[TestServer]],
) -> None:
    primary = await servers("v1")
    shadow = await servers("v2")
    await _register(api, {"v1": [primary.endpoint()], "v2": [shadow.endpoint()]}, {"v1": 100})
    policy = {"shadow": {"version": "v2", "percent": 50}}
    await _ok(await api.put(f"/v1/models/{MODEL}/policy", json=policy))
    await applied(api, envoy.node_id, timeout=15)
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        sent_before = primary.requests
        responses = await _gather(client, 200, concurrency=8)
    assert all(r.status_code == 200 for r in responses)
    assert {r.json()["version"] for r in responses} == {"v1"}
    assert {r.headers["x-turnout-version"] for r in responses} == {"v1"}
    sent = primary.requests - sent_before

    async def mirrored() -> bool:
        return shadow.requests >= 0.35 * sent

    await eventually(mirrored, timeout=10)
    assert shadow.requests <= 0.65 * sent + 10, (shadow.requests, sent)
    # Envoy marks mirrored requests by suffixing the authority.
    assert all("-shadow" in h["Host"] for h in shadow.headers), shadow.headers[0]


async def test_experiments_and_sticky_arms(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    servers: Callable[..., Awaitable[TestServer]],
) -> None:
    v1 = [await servers("v1", f"v1-r{i}") for i in range(2)]
    v2 = await servers("v2")
    await _register(
        api,
        {"v1": [s.endpoint() for s in v1], "v2": [v2.endpoint()]},
        {"v1": 50, "v2": 50},
    )
    policy = {
        "experiments": [{"header": "x-tenant", "value": "acme", "version": "v2"}],
        "sticky": {"header": "x-user-id"},
    }
    await _ok(await api.put(f"/v1/models/{MODEL}/policy", json=policy))
    # Ring hash on the same header: each user also keeps one replica of v1.
    balancing = {"load_balancing": {"policy": "ring_hash", "hash_header": "x-user-id"}}
    await _ok(await api.put(f"/v1/models/{MODEL}/versions/v1/policy", json=balancing))
    await applied(api, envoy.node_id, timeout=15)
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        seen: dict[str, set[tuple[str, str]]] = {}
        for user in range(40):
            for _ in range(5):
                response = await client.post(URL, headers={"x-user-id": f"user-{user}"})
                body = response.json()
                seen.setdefault(f"user-{user}", set()).add((body["version"], body["replica"]))
        acme = await _gather(client, 30, concurrency=4, headers={"x-tenant": "acme"})
        other = await _gather(client, 30, concurrency=4, headers={"x-tenant": "globex"})
    assert all(len(arms) == 1 for arms in seen.values()), seen
    on_v2 = sum(1 for arms in seen.values() if next(iter(arms))[0] == "v2")
    assert 8 <= on_v2 <= 32, on_v2  # the population splits ~50/50 (40 users)
    assert {r.json()["version"] for r in acme} == {"v2"}
    assert {r.json()["version"] for r in other} == {"v1", "v2"}


async def test_openai_requests_route_by_the_body_model_field(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    servers: Callable[..., Awaitable[TestServer]],
) -> None:
    v1 = await servers("v1")
    v2 = await servers("v2")
    await _register(
        api, {"v1": [v1.endpoint()], "v2": [v2.endpoint()]}, {"v1": 100}, protocol="openai"
    )
    await applied(api, envoy.node_id, timeout=15)
    chat = {
        "model": MODEL,
        # A quoted "model" inside the messages must not fool the router.
        "messages": [{"role": "user", "content": '{"model": "other:v9"}'}],
    }
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            response = await client.post(path, json=chat)
            assert response.status_code == 200, (path, response.text)
            assert response.json()["version"] == "v1"
            assert response.json()["path"] == path
            assert response.json()["body_bytes"] == len(response.request.content)
        pinned = await client.post("/v1/chat/completions", json={**chat, "model": f"{MODEL}:v2"})
        assert pinned.json()["version"] == "v2"
        assert pinned.headers["x-turnout-version"] == "v2"
        unknown_version = await client.post(
            "/v1/chat/completions", json={**chat, "model": f"{MODEL}:v9"}
        )
        assert unknown_version.status_code == 404
        # Errors on the OpenAI paths come in OpenAI's shape (controlplane.xds.replies).
        assert unknown_version.json()["error"]["code"] == "version_not_found"
        unknown = await client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"
        no_model = await client.post("/v1/completions", json={"prompt": "x"})
        assert no_model.status_code == 404
        # An explicit header wins over the body.
        headed = await client.post(
            "/v1/chat/completions",
            json={**chat, "model": f"{MODEL}:v2"},
            headers={"x-turnout-model": MODEL},
        )
        assert headed.json()["version"] == "v1"


@pytest.fixture(params=["sotw", "delta"])
async def zoned_envoy(
    request: pytest.FixtureRequest,
    control_plane: ControlPlane,
    settings: Settings,
    tmp_path: Path,
) -> AsyncIterator[EnvoyProcess]:
    """A real Envoy whose bootstrap says it runs in zone-a, over either xDS variant."""
    process = EnvoyProcess(
        node_id=f"test-{uuid.uuid4().hex[:6]}",
        xds_port=control_plane.xds_port,
        listener_port=settings.listener_port,
        workdir=tmp_path,
        zone="zone-a",
        delta=request.param == "delta",
    )
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def test_local_zone_first_and_failover_when_it_goes_down(
    api: httpx.AsyncClient,
    zoned_envoy: EnvoyProcess,
    servers: Callable[..., Awaitable[TestServer]],
) -> None:
    local = [await servers("v1", f"a{i}") for i in range(2)]
    remote = await servers("v1", "b0")
    endpoints = [s.endpoint(zone="zone-a", accelerator="h100") for s in local]
    endpoints.append(remote.endpoint(zone="zone-b", accelerator="l4"))
    await _register(api, {"v1": endpoints}, {"v1": 100})
    health = {
        "path": "/healthz",
        "interval_ms": 200,
        # Generous: a check that times out on a busy test machine would move
        # traffic early. A dead replica refuses connections at once anyway.
        "timeout_ms": 1000,
        "healthy_threshold": 1,
        "unhealthy_threshold": 2,
    }
    await _ok(
        await api.put(f"/v1/models/{MODEL}/versions/v1/policy", json={"health_check": health})
    )
    await _ok(await api.put(f"/v1/models/{MODEL}/policy", json={"retries": FAILOVER_RETRIES}))
    await applied(api, zoned_envoy.node_id, timeout=15)
    async with httpx.AsyncClient(base_url=zoned_envoy.base_url, timeout=10) as client:

        async def local_replicas_healthy() -> bool:
            # The config is in force; what remains is Envoy's own first health checks
            # of the local replicas (until then it spills over to the other zone).
            hosts = (await client.get(f"{zoned_envoy.admin_url}/clusters")).text
            return all(f"::127.0.0.1:{s.port}::health_flags::healthy" in hosts for s in local)

        await eventually(local_replicas_healthy, timeout=15)
        remote_before = remote.requests
        steady = await _gather(client, 100, concurrency=4)
        assert {r.json()["replica"] for r in steady} == {"a0", "a1"}
        assert remote.requests == remote_before

        for server in local:
            server.healthy = False
            await server.stop()
        # Steady load while the health checker notices and Envoy moves priority.
        moved = await _gather(client, 200, concurrency=4)
    errors = [r for r in moved if r.status_code != 200]
    assert len(errors) <= 4, Counter(
        (r.status_code, r.text, r.headers.get("x-turnout-version")) for r in errors
    )
    assert {r.json()["replica"] for r in moved[-50:]} == {"b0"}
