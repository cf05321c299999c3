"""Tracing end to end: a fake OTLP collector receives Envoy's span, the batcher's
request and batch spans, and the control plane's write, commit and push spans,
each tied to the right parent.

The control plane, the batcher and Envoy (configured over xDS) all send to one
in-process collector (``tests.otlp_collector``) with sampling at 100%.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from controlplane.settings import Settings
from filters.batcher import BatcherConfig, BatchingPolicy, RunningBatcher, start_batcher
from tests.otlp_collector import FakeCollector, ReceivedSpan
from tests.support import EnvoyProcess, RecordingModel, applied, eventually, serving

# The caller's own span: every span of the request belongs to this trace.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
# Envoy sends its spans every 5 s by default.
SPAN_TIMEOUT_S = 30.0


@pytest.fixture
async def collector() -> AsyncIterator[FakeCollector]:
    running = await FakeCollector().start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def settings(settings: Settings, collector: FakeCollector) -> Settings:
    """The usual test settings, tracing every request to ``collector``."""
    return settings.model_copy(update={"otlp_endpoint": collector.endpoint, "trace_sampling": 100})


@pytest.fixture
async def model_server() -> AsyncIterator[tuple[RecordingModel, int]]:
    recording = RecordingModel()
    async with serving(recording) as port:
        yield recording, port


@pytest.fixture
async def batcher(
    collector: FakeCollector, model_server: tuple[RecordingModel, int]
) -> AsyncIterator[RunningBatcher]:
    running = await start_batcher(
        BatcherConfig(
            upstream=f"http://127.0.0.1:{model_server[1]}",
            port=0,
            policy=BatchingPolicy(enabled=True, slo_ms=30_000),
            otlp_endpoint=collector.endpoint,
            trace_sampling=100,
        )
    )
    try:
        yield running
    finally:
        await running.close()


async def _span(
    collector: FakeCollector, description: str, match: Callable[[ReceivedSpan], bool]
) -> ReceivedSpan:
    """Wait for the one span that ``match`` picks; fail naming ``description``."""

    async def found() -> ReceivedSpan | None:
        spans = [span for span in collector.spans if match(span)]
        assert len(spans) <= 1, (description, spans)
        return spans[0] if spans else None

    try:
        return await eventually(found, timeout=SPAN_TIMEOUT_S)
    except AssertionError:
        raise AssertionError(f"no {description}; received: {collector.spans}") from None


@pytest.mark.envoy
async def test_a_request_is_traced_from_envoy_through_the_batcher_to_the_model(
    api: httpx.AsyncClient,
    envoy: EnvoyProcess,
    collector: FakeCollector,
    batcher: RunningBatcher,
    model_server: tuple[RecordingModel, int],
) -> None:
    recording, port = model_server
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
    await applied(api, envoy.node_id)

    body = {
        "id": "traced",
        "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}],
    }
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(
            f"{envoy.base_url}/models/embedder/v2/models/embedder/infer",
            json=body,
            headers={"traceparent": TRACEPARENT},
        )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-turnout-batch-size"] == "1"  # through the batcher

    proxy = await _span(
        collector,
        "Envoy span child of the caller's",
        lambda s: s.service == "turnout-envoy" and s.parent_span_id == CALLER_SPAN,
    )
    assert proxy.trace_id == CALLER_TRACE
    assert proxy.attributes["model"] == "embedder"
    assert proxy.attributes["version"] == "v1"
    member = await _span(
        collector,
        "batcher request span child of Envoy's",
        lambda s: s.name == "batcher.request" and s.parent_span_id == proxy.span_id,
    )
    assert (member.service, member.trace_id) == ("turnout-batcher", CALLER_TRACE)
    assert member.attributes["turnout.batch.size"] == 1
    batch = await _span(
        collector,
        "batch span linked to the request's",
        lambda s: s.name == "batcher.batch" and (CALLER_TRACE, member.span_id) in s.links,
    )
    assert batch.links == ((CALLER_TRACE, member.span_id),)
    assert batch.attributes["turnout.batch.size"] == 1
    # The model server's parent is the batch span.
    assert f"00-{CALLER_TRACE}-{batch.span_id}-01" in recording.traceparents


async def test_an_admin_write_is_traced_through_its_commit_to_the_push(
    api: httpx.AsyncClient, collector: FakeCollector
) -> None:
    response = await api.post(
        "/v1/models",
        json={"name": "traced", "protocol": "kserve-v2"},
        headers={"traceparent": TRACEPARENT},
    )
    assert response.status_code == 201, response.text
    revision = int(response.headers["x-turnout-revision"])

    write = await _span(
        collector,
        f"write span of revision {revision}",
        lambda s: s.name == "admin.write" and s.attributes.get("turnout.revision") == revision,
    )
    assert (write.service, write.trace_id) == ("turnout-controlplane", CALLER_TRACE)
    assert write.parent_span_id == CALLER_SPAN
    assert write.attributes["http.response.status_code"] == 201
    await _span(
        collector,
        "commit span child of the write's",
        lambda s: s.name == "db.commit" and s.parent_span_id == write.span_id,
    )
    push = await _span(
        collector,
        f"push span of revision {revision}",
        lambda s: s.name == "xds.push" and s.attributes.get("turnout.revision") == revision,
    )
    assert (push.trace_id, push.parent_span_id) == (CALLER_TRACE, write.span_id)
    assert (CALLER_TRACE, write.span_id) in push.links
