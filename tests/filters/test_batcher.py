"""The batcher over real HTTP on 127.0.0.1, with the synthetic model as its upstream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from filters.batcher import BatchingPolicy, RunningBatcher

from .conftest import BatcherFactory, Upstream, v2_body, wait_until

# Tests that hold the upstream on purpose must not race the default 1 s deadline
# on a loaded machine: deadlines have their own tests.
SLOW_CI_SLO_MS = 60_000.0


async def post(
    client: aiohttp.ClientSession,
    batcher: RunningBatcher,
    path: str,
    doc: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    async with client.post(batcher.url + path, json=doc, headers=headers) as response:
        text = await response.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = {"text": text}
        return response.status, body, response.headers


async def hold_upstream(
    client: aiohttp.ClientSession, batcher: RunningBatcher, upstream: Upstream
) -> asyncio.Task[Any]:
    """Close the upstream's gate and put one request in flight, stuck at the gate."""
    upstream.model.gate.clear()
    blocker = asyncio.create_task(
        post(client, batcher, "/v2/models/m/infer", v2_body("blocker", [[0.0]]))
    )
    await wait_until(lambda: batcher.dispatcher.in_flight == 1)
    return blocker


def expect_v2(answer: dict[str, Any], request_id: str, rows: list[list[float]]) -> None:
    assert answer["id"] == request_id
    (output,) = answer["outputs"]
    assert output["shape"] == [len(rows), len(rows[0])]
    assert output["data"] == [2 * v + 1 for row in rows for v in row]


async def test_concurrent_requests_share_upstream_calls_and_get_their_own_rows(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    batcher = await make_batcher()
    blocker = await hold_upstream(client, batcher, upstream)
    rows = {f"r{i}": [[float(i), float(i) + 0.5]] for i in range(10)}
    tasks = {
        rid: asyncio.create_task(post(client, batcher, "/v2/models/m/infer", v2_body(rid, r)))
        for rid, r in rows.items()
    }
    await wait_until(lambda: batcher.dispatcher.depth == 10)
    upstream.model.gate.set()
    await blocker
    for rid, task in tasks.items():
        status, answer, headers = await task
        assert status == 200
        expect_v2(answer, rid, rows[rid])
        assert headers["x-turnout-batch-size"] == "10"
        # Each waited in the queue while the blocker held the upstream.
        assert int(headers["x-turnout-queue-wait-us"]) > 0
        assert "x-turnout-shed" not in headers
    assert upstream.model.calls == 2
    assert upstream.model.rows == 11


async def test_lone_request_is_dispatched_at_once_when_upstream_idle(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    # A one-minute queue delay and a large batch size: only work conservation
    # lets this request through before the test's timeout.
    batcher = await make_batcher(
        BatchingPolicy(max_queue_delay_ms=60_000, max_batch_size=64, slo_ms=SLOW_CI_SLO_MS)
    )
    status, answer, _ = await asyncio.wait_for(
        post(client, batcher, "/v2/models/m/infer", v2_body("solo", [[1.0]])), timeout=10
    )
    assert status == 200
    expect_v2(answer, "solo", [[1.0]])
    assert upstream.model.call_rows[-1] == 1


async def test_max_batch_size_bounds_rows_per_call(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    batcher = await make_batcher(BatchingPolicy(max_batch_size=4, slo_ms=SLOW_CI_SLO_MS))
    blocker = await hold_upstream(client, batcher, upstream)
    docs = [v2_body(f"r{i}", [[float(i)]] * (1 + i % 2)) for i in range(9)]
    tasks = [asyncio.create_task(post(client, batcher, "/v2/models/m/infer", d)) for d in docs]
    await wait_until(lambda: batcher.dispatcher.depth == 9)
    upstream.model.gate.set()
    await blocker
    results = await asyncio.gather(*tasks)
    assert all(status == 200 for status, _, _ in results)
    assert max(upstream.model.call_rows) == 4
    assert upstream.model.rows == 1 + sum(1 + i % 2 for i in range(9))


async def test_max_queue_delay_bounds_the_hold_for_a_free_slot(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    # Two slots, one taken by a call stuck upstream: the next request may wait
    # for company, but no longer than max_queue_delay, so it reaches the
    # upstream while the first is still stuck, alone (max_batch_size is 32).
    batcher = await make_batcher(
        BatchingPolicy(max_queue_delay_ms=20, slo_ms=SLOW_CI_SLO_MS), max_in_flight=2
    )
    blocker = await hold_upstream(client, batcher, upstream)
    second = asyncio.create_task(
        post(client, batcher, "/v2/models/m/infer", v2_body("second", [[2.0]]))
    )
    await wait_until(lambda: batcher.dispatcher.in_flight == 2)
    assert not blocker.done()
    upstream.model.gate.set()
    status, answer, headers = await second
    assert status == 200 and headers["x-turnout-batch-size"] == "1"
    expect_v2(answer, "second", [[2.0]])
    await blocker


async def test_full_queue_answers_429_with_retry_after(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    batcher = await make_batcher(BatchingPolicy(max_queue=2, slo_ms=SLOW_CI_SLO_MS))
    blocker = await hold_upstream(client, batcher, upstream)
    queued = [
        asyncio.create_task(post(client, batcher, "/v2/models/m/infer", v2_body(f"q{i}", [[1.0]])))
        for i in range(2)
    ]
    await wait_until(lambda: batcher.dispatcher.depth == 2)
    status, answer, headers = await post(
        client, batcher, "/v2/models/m/infer", v2_body("over", [[1.0]])
    )
    assert status == 429
    assert answer["error"] == "queue_full"
    assert int(headers["Retry-After"]) >= 1
    assert headers["x-turnout-shed"] == "1"
    assert "x-turnout-batch-size" not in headers
    upstream.model.gate.set()
    await blocker
    assert [status for status, _, _ in await asyncio.gather(*queued)] == [200, 200]


async def test_request_that_cannot_meet_its_deadline_is_rejected_early(
    make_batcher: BatcherFactory, client: aiohttp.ClientSession
) -> None:
    from .conftest import start_upstream

    slow = await start_upstream(a_ms=300.0, b_ms=0.0)
    try:
        batcher = await make_batcher(BatchingPolicy(slo_ms=100), upstream=slow.url)
        # The first call teaches the latency model that a call takes ~300 ms.
        status, _, _ = await post(client, batcher, "/v2/models/m/infer", v2_body("a", [[1.0]]))
        assert status == 200
        calls = slow.model.calls
        status, answer, headers = await post(
            client, batcher, "/v2/models/m/infer", v2_body("b", [[1.0]])
        )
        assert status == 503 and answer["error"] == "deadline"
        assert headers["x-turnout-shed"] == "1"
        # Envoy's expected timeout tightens the deadline below the SLO too.
        relaxed = BatchingPolicy(slo_ms=10_000)
        batcher.dispatcher.set_policy(relaxed)
        status, _, _ = await post(
            client,
            batcher,
            "/v2/models/m/infer",
            v2_body("c", [[1.0]]),
            headers={"x-envoy-expected-rq-timeout-ms": "50"},
        )
        assert status == 503
        assert slow.model.calls == calls
        status, _, _ = await post(client, batcher, "/v2/models/m/infer", v2_body("d", [[1.0]]))
        assert status == 200
    finally:
        await slow.runner.cleanup()


async def test_malformed_input_fails_only_its_own_request(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    batcher = await make_batcher()
    blocker = await hold_upstream(client, batcher, upstream)
    good = {f"g{i}": [[float(i)]] for i in range(6)}
    tasks = {
        rid: asyncio.create_task(post(client, batcher, "/v2/models/m/infer", v2_body(rid, r)))
        for rid, r in good.items()
    }
    await wait_until(lambda: batcher.dispatcher.depth == 6)
    bad = v2_body("bad", [[1.0]])
    bad["inputs"][0]["data"] = [1.0, 2.0]  # two values for a [1, 1] shape
    status, answer, _ = await post(client, batcher, "/v2/models/m/infer", bad)
    assert status == 400 and answer["error"] == "malformed_input"
    upstream.model.gate.set()
    await blocker
    for rid, task in tasks.items():
        status, answer, _ = await task
        assert status == 200
        expect_v2(answer, rid, good[rid])


async def test_upstream_rejection_is_split_until_only_the_bad_request_fails(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    batcher = await make_batcher()
    blocker = await hold_upstream(client, batcher, upstream)
    docs = {f"t{i}": {"model": "e", "input": [f"text {i}"]} for i in range(8)}
    docs["t5"] = {"model": "e", "input": ["poison"]}  # valid JSON, refused by the model
    tasks = {
        rid: asyncio.create_task(post(client, batcher, "/v1/embeddings", doc))
        for rid, doc in docs.items()
    }
    await wait_until(lambda: batcher.dispatcher.depth == 8)
    upstream.model.gate.set()
    await blocker
    for rid, task in tasks.items():
        status, answer, _ = await task
        if rid == "t5":
            assert status == 400
            continue
        assert status == 200
        (item,) = answer["data"]
        assert item["index"] == 0
        assert item["embedding"][0] == float(len(f"text {rid[1:]}"))
    assert upstream.model.rejected >= 2  # the whole batch, then the bad halves
    assert batcher.metrics.splits._value.get() >= 1


async def test_client_that_disconnects_leaves_the_queue(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    batcher = await make_batcher()
    blocker = await hold_upstream(client, batcher, upstream)
    async with aiohttp.ClientSession() as leaving:
        task = asyncio.create_task(
            post(leaving, batcher, "/v2/models/m/infer", v2_body("gone", [[9.0]]))
        )
        await wait_until(lambda: batcher.dispatcher.depth == 1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await wait_until(lambda: batcher.dispatcher.depth == 0)
    upstream.model.gate.set()
    await blocker
    assert (upstream.model.calls, upstream.model.rows) == (1, 1)  # the blocker only
    disconnected = batcher.metrics.rejections.labels(reason="disconnected")._value.get()
    assert disconnected == 1
    status, _, _ = await post(client, batcher, "/v2/models/m/infer", v2_body("next", [[1.0]]))
    assert status == 200


async def test_openai_and_v1_are_batched_end_to_end(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    batcher = await make_batcher()
    blocker = await hold_upstream(client, batcher, upstream)
    texts = [["alpha"], ["beta", "gamma delta"], ["epsilon"]]
    embeds = [
        asyncio.create_task(post(client, batcher, "/v1/embeddings", {"model": "e", "input": t}))
        for t in texts
    ]
    instances = [[[1, 2]], [[3, 4], [5, 6]]]
    predicts = [
        asyncio.create_task(post(client, batcher, "/v1/models/m:predict", {"instances": i}))
        for i in instances
    ]
    await wait_until(lambda: batcher.dispatcher.depth == 5)
    upstream.model.gate.set()
    await blocker
    total_tokens = 0
    for text, task in zip(texts, embeds, strict=True):
        status, answer, _ = await task
        assert status == 200
        assert [d["index"] for d in answer["data"]] == list(range(len(text)))
        assert [d["embedding"][0] for d in answer["data"]] == [float(len(t)) for t in text]
        total_tokens += answer["usage"]["total_tokens"]
    assert total_tokens == 5  # words across all inputs, split among callers
    for inst, task in zip(instances, predicts, strict=True):
        status, answer, _ = await task
        assert status == 200 and answer == {"predictions": [[2 * v + 1 for v in r] for r in inst]}
    assert upstream.model.calls == 3  # blocker, one embeddings batch, one predict batch


async def test_unbatchable_requests_pass_through_unchanged(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    batcher = await make_batcher()
    async with client.get(batcher.url + "/healthz") as response:
        assert response.status == 200 and await response.json() == {"status": "ok"}
    async with client.get(batcher.url + "/stats") as response:
        assert (await response.json())["version"] == "v1"
    status, _, headers = await post(client, batcher, "/v1/chat/completions", {"x": 1})
    assert status == 404  # the upstream's own answer
    # Served alone, and never queued.
    assert headers["x-turnout-batch-size"] == "1"
    assert "x-turnout-queue-wait-us" not in headers
    mismatched = {
        "id": "m",
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]},
            {"name": "b", "shape": [1], "datatype": "FP32", "data": [3.0]},
        ],
    }
    status, answer, _ = await post(client, batcher, "/v2/models/m/infer", mismatched)
    assert status == 200 and answer["id"] == "m"
    assert [o["data"] for o in answer["outputs"]] == [[3.0, 5.0], [7.0]]
    passthrough = batcher.metrics.requests.labels(mode="passthrough")._value.get()
    assert passthrough == 4
    assert batcher.dispatcher.batches_sent == 0


async def test_metrics_endpoint_reports_batches_waits_and_rejections(
    make_batcher: BatcherFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    batcher = await make_batcher()
    for i in range(3):
        status, _, _ = await post(client, batcher, "/v2/models/m/infer", v2_body(f"m{i}", [[1.0]]))
        assert status == 200
    status, _, _ = await post(client, batcher, "/v1/embeddings", {"input": []})
    assert status == 400
    async with client.get(batcher.url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert "turnout_batcher_batch_size_count 3.0" in text
    assert "turnout_batcher_queue_wait_seconds_count 3.0" in text
    assert "turnout_batcher_upstream_seconds_count 3.0" in text
    assert 'turnout_batcher_rejections_total{reason="malformed"} 1.0' in text
    assert 'turnout_batcher_rejections_total{reason="queue_full"} 0.0' in text
    assert "turnout_batcher_in_flight_batches 0.0" in text
    async with client.get(batcher.url + "/turnout/batcher") as response:
        status_doc = json.loads(await response.text())
    assert status_doc["policy"]["max_batch_size"] == 32 and status_doc["batches_sent"] == 3
