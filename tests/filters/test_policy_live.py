"""Live policy changes: a policy source's answer reaches the running batcher."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from examples.model_server import bound_port, serve
from filters.batcher import BatchingPolicy, HttpPolicySource

from .conftest import BatcherFactory, Upstream, v2_body, wait_until


class FakePolicySource:
    """Answers whatever policy the test set last; counts fetches."""

    def __init__(self, policy: BatchingPolicy | None) -> None:
        self.policy = policy
        self.fetches = 0

    async def fetch(self) -> BatchingPolicy | None:
        self.fetches += 1
        return self.policy


async def test_policy_change_reaches_running_batcher(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    source = FakePolicySource(None)  # None: keep the initial policy
    batcher = await make_batcher(
        BatchingPolicy(max_batch_size=32), policy_source=source, policy_interval_s=0.01
    )
    await wait_until(lambda: source.fetches >= 2)
    assert batcher.dispatcher.policy.max_batch_size == 32

    source.policy = BatchingPolicy(max_batch_size=2)
    await wait_until(lambda: batcher.dispatcher.policy.max_batch_size == 2)
    upstream.model.gate.clear()
    url = batcher.url + "/v2/models/m/infer"

    async def send(rid: str) -> int:
        async with client.post(url, json=v2_body(rid, [[1.0]])) as response:
            return response.status

    tasks = [asyncio.create_task(send(f"r{i}")) for i in range(7)]
    batched = batcher.metrics.requests.labels(mode="batched")
    await wait_until(lambda: batched._value.get() == 7 and batcher.dispatcher.in_flight == 1)
    upstream.model.gate.set()
    assert await asyncio.gather(*tasks) == [200] * 7
    assert max(upstream.model.call_rows) == 2

    source.policy = BatchingPolicy(enabled=False)
    await wait_until(lambda: not batcher.dispatcher.policy.enabled)
    upstream.model.gate.clear()
    before = upstream.model.requests
    tasks = [asyncio.create_task(send(f"p{i}")) for i in range(4)]
    await wait_until(lambda: upstream.model.requests == before + 4)  # all reached the upstream
    upstream.model.gate.set()
    assert await asyncio.gather(*tasks) == [200] * 4
    assert list(upstream.model.call_rows)[-4:] == [1, 1, 1, 1]  # passed through one by one
    assert batcher.metrics.requests.labels(mode="passthrough")._value.get() == 4


class FakeControlPlane:
    """Serves GET /v1/models/{model}/versions/{version} with a settable body."""

    def __init__(self) -> None:
        self.status = 200
        self.body: Any = {"name": "v1", "batching": None}
        self.authorizations: list[str | None] = []

    def app(self) -> web.Application:
        application = web.Application()
        application.router.add_get("/v1/models/{model}/versions/{version}", self._get)
        return application

    async def _get(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        assert request.match_info["model"] == "m" and request.match_info["version"] == "v1"
        return web.json_response(self.body, status=self.status)


async def test_http_policy_source_reads_the_admin_api() -> None:
    plane = FakeControlPlane()
    runner = await serve(plane, "127.0.0.1", 0)
    source = HttpPolicySource(
        f"http://127.0.0.1:{bound_port(runner)}/", "m", "v1", api_key="secret-key"
    )
    try:
        plane.body = {
            "batching": {
                "enabled": True,
                "max_batch_size": 16,
                "max_queue_delay_ms": 2.5,
                "max_queue": 100,
                "slo_ms": 250,
            }
        }
        expected = BatchingPolicy(
            max_batch_size=16, max_queue_delay_ms=2.5, max_queue=100, slo_ms=250
        )
        assert await source.fetch() == expected
        plane.body = {"batching": None}
        disabled = await source.fetch()
        assert disabled is not None and not disabled.enabled and disabled.max_batch_size == 16
        plane.status = 500
        assert await source.fetch() is None  # errors keep the last policy
        plane.status = 200
        plane.body = {"batching": {"max_batch_size": 0}}
        assert await source.fetch() is None  # an invalid policy is not applied
        assert plane.authorizations == ["Bearer secret-key"] * 4
    finally:
        await source.close()
        await runner.cleanup()


async def test_http_policy_source_survives_an_unreachable_control_plane() -> None:
    source = HttpPolicySource("http://127.0.0.1:9", "m", "v1", timeout_s=1)
    try:
        assert await source.fetch() is None
    finally:
        await source.close()
