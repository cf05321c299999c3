"""OpenTelemetry tracing for Turnout's processes: an OTLP/gRPC span exporter and
the tracer provider built on it.

Why not ``opentelemetry-exporter-otlp-proto-grpc``: it needs the generated
modules of ``opentelemetry-proto`` 1.x, and ``xds-protos`` (Envoy's API, which
the control plane needs) ships an old copy of the same modules under the same
paths (``opentelemetry/proto/...``, from OTLP 0.x, without ``ScopeSpans``).
Whichever package pip installs last owns those files, and on a fresh install
that is ``xds-protos``: the official exporter then fails to import. So the
messages of OTLP's trace service are declared here, in a descriptor pool of
their own (field numbers from
https://github.com/open-telemetry/opentelemetry-proto/blob/v1.5.0/opentelemetry/proto/trace/v1/trace.proto
and ``common/v1/common.proto``), and nothing here depends on which copy won.

Public surface:

- ``OtlpSpanExporter(endpoint)``: a ``SpanExporter`` sending to ``host:port``
  (OTLP/gRPC, plaintext) with ``TraceService/Export``.
- ``tracer_provider(endpoint, service_name, sampling_percent)``: an SDK
  ``TracerProvider`` that batches spans to that exporter, sampling new traces
  at ``sampling_percent`` (0 to 100) and following the caller's decision when
  the request carries one (W3C ``traceparent``).
- ``messages``: the message classes, by their OTLP names (tests decode with them).
- ``EXPORT_METHOD``: the gRPC method path a collector serves.

Errors: export failures are logged and reported to the SDK as ``FAILURE``
(the batch is dropped); they never reach the traced code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import SpanKind, StatusCode

__all__ = ["EXPORT_METHOD", "OtlpSpanExporter", "messages", "tracer_provider"]

log = logging.getLogger("turnout.otlp")

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
EXPORT_TIMEOUT_S = 10.0

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "fixed32": _F.TYPE_FIXED32,
    "fixed64": _F.TYPE_FIXED64,
    "double": _F.TYPE_DOUBLE,
}
_PACKAGE = "turnout.otlp"

# name -> [(field, number, type, repeated, oneof index or None)]; enums travel as int32
# (the same varint on the wire). Only what Turnout sends or a test reads.
_MESSAGES: dict[str, list[tuple[str, int, str, bool, int | None]]] = {
    "ExportTraceServiceRequest": [("resource_spans", 1, "ResourceSpans", True, None)],
    "ExportTracePartialSuccess": [
        ("rejected_spans", 1, "int64", False, None),
        ("error_message", 2, "string", False, None),
    ],
    "ExportTraceServiceResponse": [
        ("partial_success", 1, "ExportTracePartialSuccess", False, None)
    ],
    "AnyValue": [
        ("string_value", 1, "string", False, 0),
        ("bool_value", 2, "bool", False, 0),
        ("int_value", 3, "int64", False, 0),
        ("double_value", 4, "double", False, 0),
        ("array_value", 5, "ArrayValue", False, 0),
        ("kvlist_value", 6, "KeyValueList", False, 0),
        ("bytes_value", 7, "bytes", False, 0),
    ],
    "ArrayValue": [("values", 1, "AnyValue", True, None)],
    "KeyValueList": [("values", 1, "KeyValue", True, None)],
    "KeyValue": [("key", 1, "string", False, None), ("value", 2, "AnyValue", False, None)],
    "Resource": [("attributes", 1, "KeyValue", True, None)],
    "InstrumentationScope": [
        ("name", 1, "string", False, None),
        ("version", 2, "string", False, None),
    ],
    "ResourceSpans": [
        ("resource", 1, "Resource", False, None),
        ("scope_spans", 2, "ScopeSpans", True, None),
    ],
    "ScopeSpans": [
        ("scope", 1, "InstrumentationScope", False, None),
        ("spans", 2, "Span", True, None),
    ],
    "Span": [
        ("trace_id", 1, "bytes", False, None),
        ("span_id", 2, "bytes", False, None),
        ("trace_state", 3, "string", False, None),
        ("parent_span_id", 4, "bytes", False, None),
        ("name", 5, "string", False, None),
        ("kind", 6, "int32", False, None),
        ("start_time_unix_nano", 7, "fixed64", False, None),
        ("end_time_unix_nano", 8, "fixed64", False, None),
        ("attributes", 9, "KeyValue", True, None),
        ("events", 11, "Event", True, None),
        ("links", 13, "Link", True, None),
        ("status", 15, "Status", False, None),
        ("flags", 16, "fixed32", False, None),
    ],
    "Event": [
        ("time_unix_nano", 1, "fixed64", False, None),
        ("name", 2, "string", False, None),
        ("attributes", 3, "KeyValue", True, None),
    ],
    "Link": [
        ("trace_id", 1, "bytes", False, None),
        ("span_id", 2, "bytes", False, None),
        ("trace_state", 3, "string", False, None),
        ("attributes", 4, "KeyValue", True, None),
        ("flags", 6, "fixed32", False, None),
    ],
    "Status": [("message", 2, "string", False, None), ("code", 3, "int32", False, None)],
}


def _build_messages() -> dict[str, type[Message]]:
    file = descriptor_pb2.FileDescriptorProto(
        name="turnout/otlp_trace.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        if any(oneof is not None for *_, oneof in fields):
            message.oneof_decl.add(name="value")
        for field_name, number, kind, repeated, oneof in fields:
            field = message.field.add(
                name=field_name,
                number=number,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
            )
            if kind in _TYPES:
                field.type = _TYPES[kind]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{kind}"
            if oneof is not None:
                field.oneof_index = oneof
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _MESSAGES
    }


messages: Mapping[str, type[Message]] = _build_messages()

# https://github.com/open-telemetry/opentelemetry-proto/blob/v1.5.0/opentelemetry/proto/trace/v1/trace.proto#L155
_KINDS = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_STATUS = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}
# Span.flags: bits 0-7 the W3C trace flags; bit 8 says whether the parent is remote
# is known, bit 9 that it is.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200


def _any_value(value: Any) -> Message:
    out = messages["AnyValue"]()
    if isinstance(value, bool):
        out.bool_value = value  # type: ignore[attr-defined]
    elif isinstance(value, int):
        out.int_value = value  # type: ignore[attr-defined]
    elif isinstance(value, float):
        out.double_value = value  # type: ignore[attr-defined]
    elif isinstance(value, bytes):
        out.bytes_value = value  # type: ignore[attr-defined]
    elif isinstance(value, list | tuple):
        out.array_value.values.extend(_any_value(v) for v in value)  # type: ignore[attr-defined]
    else:
        out.string_value = str(value)  # type: ignore[attr-defined]
    return out


def _attributes(target: Any, attributes: Mapping[str, Any] | None) -> None:
    for key, value in (attributes or {}).items():
        target.add(key=key, value=_any_value(value))


def _span(span: ReadableSpan) -> Message:
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    # The classes are built at run time: their fields are unknown to the type stubs.
    span_class: Any = messages["Span"]
    out: Any = span_class(
        trace_id=context.trace_id.to_bytes(16, "big"),
        span_id=context.span_id.to_bytes(8, "big"),
        name=span.name,
        kind=_KINDS.get(span.kind, 0),
        start_time_unix_nano=span.start_time or 0,
        end_time_unix_nano=span.end_time or 0,
        flags=int(context.trace_flags) | _HAS_IS_REMOTE,
    )
    if context.trace_state:
        out.trace_state = context.trace_state.to_header()
    if span.parent is not None:
        out.parent_span_id = span.parent.span_id.to_bytes(8, "big")
        if span.parent.is_remote:
            out.flags |= _IS_REMOTE
    _attributes(out.attributes, span.attributes)
    for event in span.events:
        _attributes(
            out.events.add(time_unix_nano=event.timestamp, name=event.name).attributes,
            event.attributes,
        )
    for link in span.links:
        linked = out.links.add(
            trace_id=link.context.trace_id.to_bytes(16, "big"),
            span_id=link.context.span_id.to_bytes(8, "big"),
            flags=int(link.context.trace_flags) | _HAS_IS_REMOTE,
        )
        _attributes(linked.attributes, link.attributes)
    out.status.code = _STATUS[span.status.status_code]
    if span.status.description:
        out.status.message = span.status.description
    return out  # type: ignore[no-any-return]


def encode(spans: Sequence[ReadableSpan]) -> Message:
    """Return the ``ExportTraceServiceRequest`` that carries ``spans``, grouped by
    resource and instrumentation scope."""
    request: Any = messages["ExportTraceServiceRequest"]()
    groups: dict[int, Any] = {}
    scopes: dict[tuple[int, str, str], Any] = {}
    for span in spans:
        resource = span.resource
        resource_spans = groups.get(id(resource))
        if resource_spans is None:
            resource_spans = request.resource_spans.add()
            _attributes(resource_spans.resource.attributes, resource.attributes)
            groups[id(resource)] = resource_spans
        scope = span.instrumentation_scope
        key = (id(resource), scope.name if scope else "", (scope.version or "") if scope else "")
        scope_spans = scopes.get(key)
        if scope_spans is None:
            scope_spans = resource_spans.scope_spans.add()
            scope_spans.scope.name, scope_spans.scope.version = key[1], key[2]
            scopes[key] = scope_spans
        scope_spans.spans.append(_span(span))
    return request  # type: ignore[no-any-return]


class OtlpSpanExporter(SpanExporter):
    """Sends spans to an OTLP/gRPC collector at ``endpoint`` (``host:port``, plaintext).

    Called from the SDK's batch processor thread, never from the event loop.
    """

    def __init__(self, endpoint: str, *, timeout_s: float = EXPORT_TIMEOUT_S) -> None:
        self._endpoint = endpoint
        self._timeout_s = timeout_s
        self._channel = grpc.insecure_channel(endpoint)
        self._export = self._channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=messages["ExportTraceServiceResponse"].FromString,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Send ``spans`` in one call; a failure drops them (and is logged)."""
        try:
            self._export(encode(spans), timeout=self._timeout_s)
        except grpc.RpcError as exc:
            log.warning(
                "tracing.export_failed",
                extra={"endpoint": self._endpoint, "spans": len(spans), "code": str(exc.code())},
            )
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Close the channel."""
        self._channel.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered here (the batch processor buffers)."""
        return True


def tracer_provider(
    endpoint: str,
    service_name: str,
    sampling_percent: float,
    *,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """Return a tracer provider for ``service_name`` that batches spans to the
    collector at ``endpoint`` (or to ``exporter``, when given). New traces are
    sampled at ``sampling_percent``; a request that carries a sampling decision
    (``traceparent``) keeps it. Call ``shutdown()`` on it at exit to send what
    is buffered."""
    if not 0 <= sampling_percent <= 100:
        raise ValueError(f"sampling_percent must be between 0 and 100, not {sampling_percent}")
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBasedTraceIdRatio(sampling_percent / 100),
    )
    provider.add_span_processor(
        BatchSpanProcessor(exporter or OtlpSpanExporter(endpoint), schedule_delay_millis=1000)
    )
    return provider
