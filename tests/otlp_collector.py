"""An in-process OpenTelemetry collector for tests: a real ``grpc.aio`` server that
implements OTLP's ``TraceService/Export`` and keeps every span it receives.

It decodes with ``opentelemetry.proto``'s generated trace service, not with the
exporter's own messages (``filters.otlp``), so a wrong field number on the
sending side fails the test. Which copy of those modules is installed (see
``filters/otlp.py``) does not matter: the two differ only in field names that
this module reads by number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

__all__ = ["FakeCollector", "ReceivedSpan"]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector received it; ids in lower-case hex."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


class FakeCollector:
    """Collects spans; ``endpoint`` is its ``host:port`` once :meth:`start` returned."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        """Where to send spans: ``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeCollector:
        """Listen on a free port of 127.0.0.1."""
        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._export,
                    request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
                    response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
                )
            },
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            await self._server.stop(grace=None)

    def named(self, name: str, **attributes: Any) -> list[ReceivedSpan]:
        """Return the spans called ``name`` that carry every one of ``attributes``."""
        return [
            span
            for span in self.spans
            if span.name == name
            and all(span.attributes.get(key) == value for key, value in attributes.items())
        ]

    async def _export(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        for resource_spans in request.resource_spans:
            service = _attributes(resource_spans.resource.attributes).get("service.name", "")
            # Field 2: scope_spans in OTLP 1.x, instrumentation_library_spans before.
            scopes = getattr(resource_spans, resource_spans.DESCRIPTOR.fields_by_number[2].name)
            for scope in scopes:
                for span in scope.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            links=tuple((k.trace_id.hex(), k.span_id.hex()) for k in span.links),
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()
