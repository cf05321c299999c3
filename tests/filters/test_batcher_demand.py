"""The batcher's queue depth as a per-version demand signal on its /metrics.

An autoscaler (KEDA's Prometheus scaler, or an HPA on external metrics) sums
``turnout_batcher_queue_depth`` over the replicas of one model version, so the
series must name the version and follow the queue as it fills and drains.
"""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from filters.batcher import BatchingPolicy, RunningBatcher
from filters.batcher.__main__ import build_config

from .conftest import BatcherFactory, Upstream, v2_body, wait_until
from .test_batcher import SLOW_CI_SLO_MS, hold_upstream, post


async def queue_depth(client: aiohttp.ClientSession, batcher: RunningBatcher) -> dict[str, float]:
    async with client.get(batcher.url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        f"{sample.labels['model']}/{sample.labels['version']}": sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "turnout_batcher_queue_depth"
        for sample in family.samples
    }


async def test_queue_depth_names_the_version_and_follows_the_queue(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    batcher = await make_batcher(
        BatchingPolicy(max_batch_size=64, slo_ms=SLOW_CI_SLO_MS), model="sentiment", version="v2"
    )
    assert await queue_depth(client, batcher) == {"sentiment/v2": 0.0}
    blocker = await hold_upstream(client, batcher, upstream)
    tasks = [
        asyncio.create_task(post(client, batcher, "/v2/models/m/infer", v2_body(f"q{i}", [[1.0]])))
        for i in range(5)
    ]
    await wait_until(lambda: batcher.dispatcher.depth == 5)
    assert await queue_depth(client, batcher) == {"sentiment/v2": 5.0}
    upstream.model.gate.set()
    await blocker
    assert all(status == 200 for status, _, _ in await asyncio.gather(*tasks))
    assert await queue_depth(client, batcher) == {"sentiment/v2": 0.0}


def test_the_command_line_labels_the_metrics_with_model_and_version() -> None:
    config = build_config(
        ["--upstream", "http://127.0.0.1:9", "--model", "sentiment", "--model-version", "v2"],
        api_key=None,
    )
    assert (config.model, config.version) == ("sentiment", "v2")
    unnamed = build_config(["--upstream", "http://127.0.0.1:9"], api_key=None)
    assert (unnamed.model, unnamed.version) == ("", "")
