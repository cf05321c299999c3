"""Batching end to end: admin API policy -> xDS -> real Envoy -> batcher -> model server.

Two things follow a policy change, each waited for exactly: Envoy's config (the
revision the change created, ``applied``) and the batcher's own policy, which it
polls from the admin API.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from examples.synthetic import SyntheticServer, synthetic_value
from filters.batcher import (
    RunningBatcher,
)
from tests.support import EnvoyProcess, applied, eventually

pytestmark = pytest.mark.envoy

REQUESTS = 48


def _infer_body(request_id: str, value: float) -> dict[str, Any]:
    return {
        "id": request_id,
        "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [value, -value]}],
    }


async def _batcher_policy(batcher: RunningBatcher) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        state: dict[str, Any] = (await client.get(f"{batcher.url}/turnout/batcher")).json()
        return state


async def _batcher_enabled(batcher: RunningBatcher, max_batch_size: int) -> bool:
    policy = (await _batcher_policy(batcher))["policy"]
    return bool(policy["enabled"] and policy["max_batch_size"] == max_batch_size)


async def _serve_batched(
    api: httpx.AsyncClient, envoy: EnvoyProcess, batcher: RunningBatcher, port: int
) -> None:
    """Declare model embedder v1 behind ``batcher`` with batching on; wait until the
    batcher has heard and Envoy holds the config."""
    assert (
        await api.post("/v1/models", json={"name": "embedder", "protocol": "kserve-v2"})
    ).status_code == 201
    endpoint = {"address": "127.0.0.1", "port": port, "batcher_port": batcher.port}
    response = await api.post(
        "/v1/models/embedder/versions", json={"version": "v1", "endpoints": [endpoint]}
    )
    assert response.status_code == 201, response.text
    response = await api.put(
        "/v1/models/embedder/versions/v1/policy",
        json={"batching": {"enabled": True, "max_batch_size": 16, "slo_ms": 30_000}},
    )
    assert response.status_code == 200, response.text
    version = (await api.get("/v1/models/embedder/versions/v1")).json()
    assert version["batching"]["max_batch_size"] == 16
    await eventually(lambda: _batcher_enabled(batcher, 16), timeout=5)
    await applied(api, envoy.node_id, timeout=10)


async def test_concurrent_calls_reach_the_model_server_batched(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    synthetic: tuple[SyntheticServer, int],
    batcher: RunningBatcher,
) -> None:
    model, port = synthetic
    await _serve_batched(api, envoy, batcher, port)

    url = f"{envoy.base_url}/models/embedder/v2/models/embedder/infer"
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(url, json=_infer_body("probe", 0.5))
        assert answer.status_code == 200, answer.text
        assert "x-turnout-batch-size" in answer.headers  # through the batcher
        calls_before, requests_before = model.calls, model.requests

        async def one(i: int) -> tuple[str, Any, str]:
            answer = await client.post(url, json=_infer_body(f"req-{i}", float(i)))
            assert answer.status_code == 200, answer.text
            body = answer.json()
            return body["id"], body["outputs"][0]["data"], answer.headers["x-turnout-version"]

        results = await asyncio.gather(*(one(i) for i in range(REQUESTS)))

    # Every caller got its own answer, computed from its own input.
    for i, (request_id, data, version_header) in enumerate(results):
        assert request_id == f"req-{i}"
        assert data == synthetic_value([float(i), -float(i)])
        assert version_header == "v1"
    calls = model.calls - calls_before
    assert model.requests - requests_before == calls
    assert calls < REQUESTS, f"{calls} upstream calls for {REQUESTS} requests: nothing batched"
    assert model.stats()["max_call_rows"] > 1


async def test_turning_batching_off_goes_straight_to_the_replica(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    synthetic: tuple[SyntheticServer, int],
    batcher: RunningBatcher,
) -> None:
    _model, port = synthetic
    await api.post("/v1/models", json={"name": "embedder", "protocol": "kserve-v2"})
    endpoint = {"address": "127.0.0.1", "port": port, "batcher_port": batcher.port}
    await api.post("/v1/models/embedder/versions", json={"version": "v1", "endpoints": [endpoint]})
    await api.put(
        "/v1/models/embedder/versions/v1/policy", json={"batching": {"max_batch_size": 8}}
    )
    await eventually(lambda: _batcher_enabled(batcher, 8), timeout=10)
    await applied(api, envoy.node_id, timeout=10)
    url = f"{envoy.base_url}/models/embedder/v2/models/embedder/infer"
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(url, json=_infer_body("probe", 1.0))
        assert "x-turnout-batch-size" in answer.headers, answer.text  # batched
        response = await api.put("/v1/models/embedder/versions/v1/policy", json={})
        assert response.status_code == 200
        await applied(api, envoy.node_id, timeout=10)
        answer = await client.post(url, json=_infer_body("probe", 1.0))
        assert answer.status_code == 200, answer.text
        assert "x-turnout-batch-size" not in answer.headers  # straight to the replica

    async def batcher_off() -> bool:
        return not (await _batcher_policy(batcher))["policy"]["enabled"]

    # The batcher hears of it too (null batching: pass through).
    await eventually(batcher_off, timeout=5)


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
async def test_tritonclient_calls_through_envoy_are_batched(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    synthetic: tuple[SyntheticServer, int],
    batcher: RunningBatcher,
    binary: bool,
) -> None:
    np = pytest.importorskip("numpy")
    triton = pytest.importorskip("tritonclient.http.aio")
    model, port = synthetic
    await _serve_batched(api, envoy, batcher, port)
    prefix = envoy.base_url.removeprefix("http://") + "/models/embedder"
    client = triton.InferenceServerClient(prefix, conn_timeout=30.0)

    async def infer(i: int) -> Any:
        x = np.array([[float(i), -float(i) - 0.5]], dtype=np.float32)
        tensor = triton.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        # tritonclient's defaults: binary outputs; binary_data=False asks for JSON ones.
        outputs = None if binary else [triton.InferRequestedOutput("x_out", binary_data=False)]
        return await client.infer("embedder", [tensor], outputs=outputs, request_id=f"req-{i}")

    try:

        async def through_batcher() -> bool:
            try:
                await infer(-1)
            except Exception:
                return False
            return batcher.dispatcher.batches_sent > 0

        await eventually(through_batcher, timeout=10)
        calls_before, requests_before = model.calls, model.requests
        results = await asyncio.gather(*(infer(i) for i in range(REQUESTS)))
    finally:
        await client.close()

    for i, result in enumerate(results):
        assert result.get_response()["id"] == f"req-{i}"
        raw = result.get_response()["outputs"][0]
        assert ("data" in raw) == (not binary)
        expected = 2 * np.array([[float(i), -float(i) - 0.5]], dtype=np.float32) + 1
        np.testing.assert_array_equal(result.as_numpy("x_out"), expected)
    calls = model.calls - calls_before
    assert model.requests - requests_before == calls
    assert calls < REQUESTS, f"{calls} upstream calls for {REQUESTS} requests: nothing batched"
    assert model.stats()["max_call_rows"] > 1
