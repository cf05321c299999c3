"""The control plane's traces: an admin write, its commit, and the push of the
revision it made.

With ``TURNOUT_OTLP_ENDPOINT`` set, each replica has an OpenTelemetry tracer
provider that batches spans to that collector (``filters.otlp``); unset, the
tracer is OpenTelemetry's no-op tracer and nothing is recorded or sent.

The spans of one change:

- ``admin.write`` (server): one mutating admin request, from its first byte to
  its answer, child of the caller's ``traceparent`` when it sends one;
- ``db.commit``: its child, the commit of the request's transaction;
- ``xds.push``: the sync loop loading, translating and publishing the revision
  the write committed, child of the write's span, and linked to the spans of
  the other writes it publishes at once (a push can carry several revisions).

A write's span context travels to the push in-process, in :class:`Tracing`'s
bounded map from revision to span context. A replica that learns of a revision
from another replica (Postgres NOTIFY or its poll) has no such context: its
push span starts a trace of its own, tied to no write.
"""

from __future__ import annotations

from collections import OrderedDict

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from controlplane.settings import Settings
from controlplane.xds.tracing import TracingOptions
from filters.otlp import tracer_provider

__all__ = ["SERVICE_NAME", "Tracing", "envoy_tracing"]

SERVICE_NAME = "turnout-controlplane"
# Writes whose push has not run yet; far more than a replica ever has waiting.
_REMEMBERED_WRITES = 1024


class Tracing:
    """A replica's tracer, and the span context of each write by the revision it
    committed. With ``provider`` None, tracing is off: the tracer records nothing."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self.tracer: trace.Tracer = (
            provider.get_tracer("turnout.controlplane")
            if provider is not None
            else trace.NoOpTracer()
        )
        self._writes: OrderedDict[int, trace.SpanContext] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing:
        """Return the tracing ``settings`` ask for (off without an OTLP endpoint)."""
        if settings.otlp_endpoint is None:
            return cls()
        return cls(tracer_provider(settings.otlp_endpoint, SERVICE_NAME, settings.trace_sampling))

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded and sent."""
        return self._provider is not None

    def remember(self, revision: int, span: trace.Span) -> None:
        """Note that the write traced by ``span`` committed ``revision``."""
        context = span.get_span_context()
        if not context.is_valid:
            return
        self._writes[revision] = context
        while len(self._writes) > _REMEMBERED_WRITES:
            self._writes.popitem(last=False)

    def start_push(self, after: int | None, revision: int, start_time: int) -> trace.Span:
        """Start the span of pushing ``revision`` (the previous push was ``after``;
        ``start_time`` in ns since the epoch): child of the newest write this replica
        committed in between, linked to the others; forget those writes."""
        writes = [
            (number, context)
            for number, context in self._writes.items()
            if (after is None or number > after) and number <= revision
        ]
        for number, _ in writes:
            del self._writes[number]
        parent = None
        if writes:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(writes[-1][1]))
        return self.tracer.start_span(
            "xds.push",
            context=parent,
            links=[trace.Link(context) for _, context in writes],
            attributes={"turnout.revision": revision, "turnout.writes": len(writes)},
            start_time=start_time,
        )

    def shutdown(self) -> None:
        """Send what is buffered and stop (a no-op when off, or the second time)."""
        provider, self._provider = self._provider, None
        if provider is not None:
            provider.shutdown()


def envoy_tracing(settings: Settings) -> TracingOptions | None:
    """Return how Envoy traces under ``settings`` (None: it does not)."""
    if settings.otlp_endpoint is None:
        return None
    host, _, port = settings.otlp_endpoint.rpartition(":")
    return TracingOptions(
        collector_host=host.strip("[]"),
        collector_port=int(port),
        sampling_percent=settings.trace_sampling,
    )
