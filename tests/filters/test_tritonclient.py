"""tritonclient (HTTP) through the batcher: binary tensors by default, and ``binary_data=False``."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http.aio as triton
from tritonclient.utils import InferenceServerException

from filters.batcher import BatchingPolicy, RunningBatcher

from .conftest import BatcherFactory, Upstream, wait_until

SLOW_CI_SLO_MS = 60_000.0
CALLERS = 8


def inputs_for(i: int, binary: bool) -> list[triton.InferInput]:
    """Two inputs unique to caller ``i``: FP32 ``x`` [2, 3] and BYTES ``s`` [2, 1]."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3) + np.float32(i * 10) + np.float32(0.25)
    s = np.array([[f"caller {i} a".encode()], [f"caller {i} b".encode()]], dtype=np.object_)
    tensors = [triton.InferInput("x", [2, 3], "FP32"), triton.InferInput("s", [2, 1], "BYTES")]
    tensors[0].set_data_from_numpy(x, binary_data=binary)
    tensors[1].set_data_from_numpy(s, binary_data=binary)
    return tensors


def check_own_answer(result: Any, i: int) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3) + np.float32(i * 10) + np.float32(0.25)
    np.testing.assert_array_equal(result.as_numpy("x_out"), 2 * x + 1)
    strings = result.as_numpy("s_out")
    assert strings.shape == (2, 1)
    assert [v.decode() if isinstance(v, bytes) else v for v in strings.ravel()] == [
        f"CALLER {i} A",
        f"CALLER {i} B",
    ]
    assert result.get_response()["id"] == f"req-{i}"


def outputs_for(form: str) -> list[triton.InferRequestedOutput] | None:
    if form == "default":
        return None  # tritonclient then asks for every output as binary data
    binary = form == "binary_out"
    return [
        triton.InferRequestedOutput("x_out", binary_data=binary),
        triton.InferRequestedOutput("s_out", binary_data=binary),
    ]


async def held_batch(batcher: RunningBatcher, upstream: Upstream, callers: list[Any]) -> list[Any]:
    """Hold the upstream until every caller is queued behind one in-flight call, then release."""
    client = triton.InferenceServerClient(batcher.url.removeprefix("http://"))
    try:
        upstream.model.gate.clear()
        blocker = asyncio.create_task(client.infer("m", inputs_for(99, True), request_id="req-99"))
        await wait_until(lambda: batcher.dispatcher.in_flight == 1)
        tasks = [asyncio.create_task(call(client)) for call in callers]
        await wait_until(lambda: batcher.dispatcher.depth == len(callers))
        upstream.model.gate.set()
        check_own_answer(await blocker, 99)
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        upstream.model.gate.set()
        await client.close()


@pytest.mark.parametrize(
    ("binary_in", "form"),
    [(True, "default"), (True, "binary_out"), (False, "json_out"), (False, "default")],
    ids=["binary-default", "binary-listed", "json-all", "json-in-binary-out"],
)
async def test_tritonclient_calls_are_batched_and_each_gets_its_own_answer(
    make_batcher: BatcherFactory, upstream: Upstream, binary_in: bool, form: str
) -> None:
    batcher = await make_batcher(BatchingPolicy(slo_ms=SLOW_CI_SLO_MS))

    def caller(i: int) -> Any:
        async def call(client: triton.InferenceServerClient) -> Any:
            return await client.infer(
                "m", inputs_for(i, binary_in), outputs=outputs_for(form), request_id=f"req-{i}"
            )

        return call

    results = await held_batch(batcher, upstream, [caller(i) for i in range(CALLERS)])
    for i, result in enumerate(results):
        check_own_answer(result, i)
    # The blocker, then the queued callers in one call.
    assert upstream.model.calls == 2
    assert upstream.model.stats()["max_call_rows"] == 2 * CALLERS


async def test_callers_asking_for_binary_and_json_outputs_share_a_batch(
    make_batcher: BatcherFactory, upstream: Upstream
) -> None:
    batcher = await make_batcher(BatchingPolicy(slo_ms=SLOW_CI_SLO_MS))
    forms = ["binary_out", "json_out"] * (CALLERS // 2)

    def caller(i: int) -> Any:
        async def call(client: triton.InferenceServerClient) -> Any:
            return await client.infer(
                "m", inputs_for(i, True), outputs=outputs_for(forms[i]), request_id=f"req-{i}"
            )

        return call

    results = await held_batch(batcher, upstream, [caller(i) for i in range(CALLERS)])
    for i, result in enumerate(results):
        check_own_answer(result, i)
        raw = result.get_response()
        for output in raw["outputs"]:
            assert ("data" in output) == (forms[i] == "json_out")
    assert upstream.model.calls == 2


async def test_a_bad_binary_request_fails_alone(
    make_batcher: BatcherFactory, upstream: Upstream
) -> None:
    batcher = await make_batcher(BatchingPolicy(slo_ms=SLOW_CI_SLO_MS))

    def good(i: int) -> Any:
        async def call(client: triton.InferenceServerClient) -> Any:
            return await client.infer("m", inputs_for(i, True), request_id=f"req-{i}")

        return call

    async def poisoned(client: triton.InferenceServerClient) -> Any:
        s = np.array([[b"poison"], [b"fine"]], dtype=np.object_)  # the model refuses it
        tensors = inputs_for(7, True)
        tensors[1].set_data_from_numpy(s)
        return await client.infer("m", tensors, request_id="req-7")

    callers = [good(i) for i in range(7)] + [poisoned]
    async with aiohttp.ClientSession() as session:
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, 1],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            }
        ).encode()
        async with session.post(
            batcher.url + "/v2/models/m/infer",
            data=header + struct.pack("<f", 1.0),  # 4 bytes where 8 were announced
            headers={"Inference-Header-Content-Length": str(len(header))},
        ) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "malformed_input"
    results = await held_batch(batcher, upstream, callers)
    for i, result in enumerate(results[:7]):
        check_own_answer(result, i)
    assert isinstance(results[7], InferenceServerException)
    assert upstream.model.rejected >= 1
