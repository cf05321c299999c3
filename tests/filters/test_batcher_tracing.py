"""The batcher's spans, recorded in memory: each request continues its caller's
trace, a batch is one span linked to every request in it, and the model server
gets the batch span's traceparent. Untraced, the caller's traceparent still
reaches the model server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from examples.model_server import bound_port, serve
from filters.batcher import BatcherConfig, BatchingPolicy, RunningBatcher, start_batcher
from tests.support import RecordingModel

from .conftest import v2_body, wait_until

MEMBERS = 4


def traceparent(i: int) -> str:
    return f"00-{i + 1:032x}-{i + 1:016x}-01"


@pytest.fixture
async def recording() -> AsyncIterator[tuple[RecordingModel, str]]:
    model = RecordingModel()
    runner = await serve(model, "127.0.0.1", 0)
    yield model, f"http://127.0.0.1:{bound_port(runner)}"
    model.model.gate.set()
    await runner.cleanup()


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def _start(
    upstream: str, provider: TracerProvider | None, policy: BatchingPolicy
) -> RunningBatcher:
    return await start_batcher(
        BatcherConfig(upstream=upstream, host="127.0.0.1", port=0, policy=policy),
        tracer_provider=provider,
    )


async def _infer(
    client: aiohttp.ClientSession, batcher: RunningBatcher, i: int, headers: dict[str, str]
) -> None:
    body = v2_body(f"r{i}", [[float(i)]])
    async with client.post(f"{batcher.url}/v2/models/m/infer", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_a_batch_is_one_span_linked_to_every_request_in_it(
    recording: tuple[RecordingModel, str],
    spans: tuple[TracerProvider, InMemorySpanExporter],
    client: aiohttp.ClientSession,
) -> None:
    model, url = recording
    provider, exporter = spans
    batcher = await _start(url, provider, BatchingPolicy(max_batch_size=16, slo_ms=60_000))
    try:
        # One call holds the upstream, so the next requests queue up and go as one batch.
        model.model.gate.clear()
        blocker = asyncio.create_task(_infer(client, batcher, 99, {}))
        await wait_until(lambda: batcher.dispatcher.in_flight == 1)
        callers = [
            asyncio.create_task(_infer(client, batcher, i, {"traceparent": traceparent(i)}))
            for i in range(MEMBERS)
        ]
        await wait_until(lambda: batcher.dispatcher.depth == MEMBERS)
        model.model.gate.set()
        await asyncio.gather(blocker, *callers)
    finally:
        await batcher.close()

    members = {
        span.parent.trace_id: span
        for span in _named(exporter, "batcher.request")
        if span.parent is not None
    }
    assert sorted(members) == [i + 1 for i in range(MEMBERS)]
    for i in range(MEMBERS):
        member = members[i + 1]
        assert member.parent is not None and member.parent.span_id == i + 1  # the caller's span
        assert member.attributes is not None
        assert member.attributes["turnout.batch.size"] == MEMBERS
    (batch,) = [span for span in _named(exporter, "batcher.batch") if len(span.links) > 1]
    linked = {(link.context.trace_id, link.context.span_id) for link in batch.links}
    assert linked == {(m.context.trace_id, m.context.span_id) for m in members.values()}
    assert batch.parent is not None
    assert batch.parent.span_id in {m.context.span_id for m in members.values()}
    context = batch.context
    assert f"00-{context.trace_id:032x}-{context.span_id:016x}-01" in model.traceparents


async def test_untraced_the_callers_traceparent_reaches_the_model_server(
    recording: tuple[RecordingModel, str], client: aiohttp.ClientSession
) -> None:
    model, url = recording
    batcher = await _start(url, None, BatchingPolicy(slo_ms=60_000))
    try:
        await _infer(client, batcher, 0, {"traceparent": traceparent(7)})
    finally:
        await batcher.close()
    assert model.traceparents == [traceparent(7)]


async def test_a_passed_through_request_is_traced_too(
    recording: tuple[RecordingModel, str],
    spans: tuple[TracerProvider, InMemorySpanExporter],
    client: aiohttp.ClientSession,
) -> None:
    model, url = recording
    provider, exporter = spans
    batcher = await _start(url, provider, BatchingPolicy(enabled=False))
    try:
        await _infer(client, batcher, 0, {"traceparent": traceparent(3)})
    finally:
        await batcher.close()
    (member,) = _named(exporter, "batcher.request")
    assert member.parent is not None and member.parent.span_id == 4
    context = member.context
    assert model.traceparents == [f"00-{context.trace_id:032x}-{context.span_id:016x}-01"]
