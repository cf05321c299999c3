"""The batcher's spans: it continues each caller's trace and traces each batch.

With tracing on, every request gets a server span ``batcher.request``, child
of the caller's span (its W3C ``traceparent``, from Envoy). Each upstream call
gets one client span ``batcher.batch``, linked to the span of every request in
the batch, and the model server receives that span's ``traceparent``. The
batch span's parent is the first sampled request's span (the first request's
when none is sampled), so the trace of that caller shows the model call; the
other callers' traces reach it through the links.
https://opentelemetry.io/docs/specs/otel/overview/#links-between-spans

With tracing off, nothing here runs, and a batch carries the ``traceparent``
(and ``tracestate``) of its first request as is.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["SERVICE_NAME", "TRACE_HEADERS", "batch_span", "extract_trace", "inject_trace"]

SERVICE_NAME = "turnout-batcher"
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
_W3C = TraceContextTextMapPropagator()


def extract_trace(headers: Mapping[str, str]) -> otel_context.Context:
    """Return the trace context of a request's W3C headers (empty when absent)."""
    return _W3C.extract(headers)


def inject_trace(headers: MutableMapping[str, str], span: trace.Span) -> None:
    """Add ``span``'s ``traceparent`` (and ``tracestate``) to ``headers``."""
    _W3C.inject(headers, context=trace.set_span_in_context(span))


def batch_span(tracer: trace.Tracer, members: Sequence[trace.Span], rows: int) -> trace.Span:
    """Start the span of one upstream call carrying the requests traced by ``members``."""
    contexts = [span.get_span_context() for span in members]
    sampled = [span for span, c in zip(members, contexts, strict=True) if c.trace_flags.sampled]
    parent = (sampled or list(members))[:1]
    return tracer.start_span(
        "batcher.batch",
        context=trace.set_span_in_context(parent[0]) if parent else None,
        kind=trace.SpanKind.CLIENT,
        links=[trace.Link(c) for c in contexts if c.is_valid],
        attributes={"turnout.batch.size": len(members), "turnout.batch.rows": rows},
    )
