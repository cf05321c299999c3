"""The control plane's tracing: settings, the write -> push hand-over by revision,
and the OTLP exporter over a real gRPC channel."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from controlplane.settings import Settings
from controlplane.tracing import Tracing, envoy_tracing
from controlplane.xds.tracing import TracingOptions
from filters.otlp import OtlpSpanExporter
from tests.otlp_collector import FakeCollector


def _recording() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


@pytest.mark.parametrize("value", ["http://collector:4317", "collector", "collector:http", ":4317"])
def test_an_otlp_endpoint_must_be_host_and_port(value: str) -> None:
    with pytest.raises(ValidationError, match="HOST:PORT"):
        Settings(otlp_endpoint=value)


def test_envoy_traces_only_with_an_endpoint() -> None:
    assert envoy_tracing(Settings()) is None
    assert envoy_tracing(Settings(otlp_endpoint="", trace_sampling=5)) is None
    options = envoy_tracing(Settings(otlp_endpoint="otel-collector:4317", trace_sampling=5))
    assert options == TracingOptions("otel-collector", 4317, 5.0)


def test_untraced_nothing_is_recorded() -> None:
    tracing = Tracing.from_settings(Settings())
    assert not tracing.enabled
    with tracing.tracer.start_as_current_span("admin.write") as span:
        tracing.remember(4, span)
    assert not tracing.start_push(None, 4, 0).is_recording()


def test_a_push_is_the_child_of_its_write_and_linked_to_every_write_it_carries() -> None:
    tracing, exporter = _recording()
    writes = {}
    for revision in (3, 4, 5):
        with tracing.tracer.start_as_current_span(f"write {revision}") as span:
            tracing.remember(revision, span)
            writes[revision] = span.get_span_context()
    push = tracing.start_push(3, 5, 0)
    push.end()
    (recorded,) = [s for s in exporter.get_finished_spans() if s.name == "xds.push"]
    assert recorded.parent is not None and recorded.parent.span_id == writes[5].span_id
    assert [link.context for link in recorded.links] == [writes[4], writes[5]]
    assert recorded.attributes is not None and recorded.attributes["turnout.revision"] == 5
    # Those writes are pushed: a later push is tied to none of them.
    again = tracing.start_push(5, 6, 0)
    again.end()
    assert exporter.get_finished_spans()[-1].parent is None


async def test_the_exporter_delivers_spans_to_an_otlp_collector() -> None:
    collector = await FakeCollector().start()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("parent") as parent,
        tracer.start_as_current_span(
            "child", links=[trace.Link(parent.get_span_context())], attributes={"n": 3}
        ),
    ):
        pass
    otlp = OtlpSpanExporter(collector.endpoint)
    try:
        result = await asyncio.to_thread(otlp.export, exporter.get_finished_spans())
    finally:
        otlp.shutdown()
        await collector.stop()
    assert result is SpanExportResult.SUCCESS
    child, root = collector.spans
    assert (child.name, root.name) == ("child", "parent")
    assert child.parent_span_id == root.span_id and child.trace_id == root.trace_id
    assert child.links == ((root.trace_id, root.span_id),)
    assert child.attributes == {"n": 3}


def test_the_exporter_reports_a_collector_it_cannot_reach() -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("lost"):
        pass
    otlp = OtlpSpanExporter("127.0.0.1:1", timeout_s=0.5)
    try:
        assert otlp.export(exporter.get_finished_spans()) is SpanExportResult.FAILURE
    finally:
        otlp.shutdown()
