"""Fixtures for the batcher tests: a synthetic upstream and batchers in front of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from examples.model_server import bound_port, serve
from examples.synthetic import SyntheticServer
from filters.batcher import BatcherConfig, BatchingPolicy, RunningBatcher, start_batcher


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once ``condition()`` holds; fail the test if it does not within ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not met within the timeout")
        await asyncio.sleep(0.002)


@dataclass
class Upstream:
    """A running synthetic model server."""

    model: SyntheticServer
    runner: web.AppRunner
    url: str


async def start_upstream(**kwargs: Any) -> Upstream:
    """Start a synthetic server on 127.0.0.1, port 0."""
    model = SyntheticServer("v1", **kwargs)
    runner = await serve(model, "127.0.0.1", 0)
    return Upstream(model, runner, f"http://127.0.0.1:{bound_port(runner)}")


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A fast synthetic upstream: T(n) = 2 ms + 0.1 ms * n, one call at a time."""
    started = await start_upstream(a_ms=2.0, b_ms=0.1)
    yield started
    started.model.gate.set()
    await started.runner.cleanup()


BatcherFactory = Callable[..., Awaitable[RunningBatcher]]


@pytest.fixture
async def make_batcher(upstream: Upstream) -> AsyncIterator[BatcherFactory]:
    """Start batchers in front of ``upstream``; all are closed after the test."""
    started: list[RunningBatcher] = []

    async def factory(policy: BatchingPolicy | None = None, **config: Any) -> RunningBatcher:
        config.setdefault("upstream", upstream.url)
        batcher = await start_batcher(
            BatcherConfig(host="127.0.0.1", port=0, policy=policy or BatchingPolicy(), **config)
        )
        started.append(batcher)
        return batcher

    yield factory
    upstream.model.gate.set()
    for batcher in started:
        await batcher.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def v2_body(request_id: str, rows: list[list[float]]) -> dict[str, Any]:
    """A KServe v2 infer body with one FP32 input ``x`` of shape [len(rows), width]."""
    width = len(rows[0])
    return {
        "id": request_id,
        "inputs": [
            {
                "name": "x",
                "shape": [len(rows), width],
                "datatype": "FP32",
                "data": [v for row in rows for v in row],
            }
        ],
    }
