"""Envoy's metrics service messages, built from their descriptors at import.

``xds-protos`` ships no ``envoy.service.metrics.v3`` (it would need the
Prometheus client model, ``io.prometheus.client``), so the messages the
``envoy.stat_sinks.metrics_service`` sink streams are declared here, field for
field as in the upstream ``.proto`` files, and registered in the default
descriptor pool:

- https://github.com/envoyproxy/envoy/blob/main/api/envoy/service/metrics/v3/metrics_service.proto
- https://github.com/prometheus/client_model/blob/master/io/prometheus/client/metrics.proto

Only the fields Envoy sends are declared; others would be kept as unknown
fields and ignored.
"""

from __future__ import annotations

from typing import Final

from envoy.config.core.v3 import base_pb2  # registers envoy.config.core.v3.Node
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

__all__ = [
    "COUNTER",
    "GAUGE",
    "HISTOGRAM",
    "METHOD",
    "SERVICE",
    "StreamMetricsMessage",
    "StreamMetricsResponse",
]

SERVICE: Final = "envoy.service.metrics.v3.MetricsService"
METHOD: Final = "StreamMetrics"

# io.prometheus.client.MetricType
COUNTER: Final = 0
GAUGE: Final = 1
HISTOGRAM: Final = 4

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_Field = tuple[str, int, int, int, str]  # name, number, type, label, message type


def _message(
    parent: descriptor_pb2.FileDescriptorProto | descriptor_pb2.DescriptorProto,
    name: str,
    *fields: _Field,
) -> descriptor_pb2.DescriptorProto:
    message = (
        parent.message_type.add(name=name)
        if isinstance(parent, descriptor_pb2.FileDescriptorProto)
        else parent.nested_type.add(name=name)
    )
    for field_name, number, kind, label, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    return message


def _prometheus_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="turnout/io/prometheus/client/metrics.proto",
        package="io.prometheus.client",
        syntax="proto2",
    )
    kinds = file.enum_type.add(name="MetricType")
    for number, name in enumerate(
        ("COUNTER", "GAUGE", "SUMMARY", "UNTYPED", "HISTOGRAM", "GAUGE_HISTOGRAM")
    ):
        kinds.value.add(name=name, number=number)
    p = ".io.prometheus.client."
    double, uint64, int64, string = _F.TYPE_DOUBLE, _F.TYPE_UINT64, _F.TYPE_INT64, _F.TYPE_STRING
    message, enum = _F.TYPE_MESSAGE, _F.TYPE_ENUM
    _message(
        file, "LabelPair", ("name", 1, string, _OPTIONAL, ""), ("value", 2, string, _OPTIONAL, "")
    )
    _message(file, "Gauge", ("value", 1, double, _OPTIONAL, ""))
    _message(file, "Counter", ("value", 1, double, _OPTIONAL, ""))
    _message(
        file,
        "Quantile",
        ("quantile", 1, double, _OPTIONAL, ""),
        ("value", 2, double, _OPTIONAL, ""),
    )
    _message(
        file,
        "Summary",
        ("sample_count", 1, uint64, _OPTIONAL, ""),
        ("sample_sum", 2, double, _OPTIONAL, ""),
        ("quantile", 3, message, _REPEATED, p + "Quantile"),
    )
    _message(file, "Untyped", ("value", 1, double, _OPTIONAL, ""))
    _message(
        file,
        "Bucket",
        ("cumulative_count", 1, uint64, _OPTIONAL, ""),
        ("upper_bound", 2, double, _OPTIONAL, ""),
    )
    _message(
        file,
        "Histogram",
        ("sample_count", 1, uint64, _OPTIONAL, ""),
        ("sample_sum", 2, double, _OPTIONAL, ""),
        ("bucket", 3, message, _REPEATED, p + "Bucket"),
    )
    _message(
        file,
        "Metric",
        ("label", 1, message, _REPEATED, p + "LabelPair"),
        ("gauge", 2, message, _OPTIONAL, p + "Gauge"),
        ("counter", 3, message, _OPTIONAL, p + "Counter"),
        ("summary", 4, message, _OPTIONAL, p + "Summary"),
        ("untyped", 5, message, _OPTIONAL, p + "Untyped"),
        ("timestamp_ms", 6, int64, _OPTIONAL, ""),
        ("histogram", 7, message, _OPTIONAL, p + "Histogram"),
    )
    _message(
        file,
        "MetricFamily",
        ("name", 1, string, _OPTIONAL, ""),
        ("help", 2, string, _OPTIONAL, ""),
        ("type", 3, enum, _OPTIONAL, p + "MetricType"),
        ("metric", 4, message, _REPEATED, p + "Metric"),
    )
    return file


def _service_file(prometheus: str) -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="turnout/envoy/service/metrics/v3/metrics_service.proto",
        package="envoy.service.metrics.v3",
        syntax="proto3",
        dependency=[prometheus, base_pb2.DESCRIPTOR.name],
    )
    _message(file, "StreamMetricsResponse")
    stream = _message(
        file,
        "StreamMetricsMessage",
        (
            "identifier",
            1,
            _F.TYPE_MESSAGE,
            _OPTIONAL,
            ".envoy.service.metrics.v3.StreamMetricsMessage.Identifier",
        ),
        ("envoy_metrics", 2, _F.TYPE_MESSAGE, _REPEATED, ".io.prometheus.client.MetricFamily"),
    )
    _message(
        stream, "Identifier", ("node", 1, _F.TYPE_MESSAGE, _OPTIONAL, ".envoy.config.core.v3.Node")
    )
    return file


def _register() -> tuple[type[Message], type[Message]]:
    pool = descriptor_pool.Default()
    name = "envoy.service.metrics.v3.StreamMetricsMessage"
    try:
        pool.FindMessageTypeByName(name)
    except KeyError:
        prometheus = _prometheus_file()
        pool.Add(prometheus)
        pool.Add(_service_file(prometheus.name))
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(name)),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("envoy.service.metrics.v3.StreamMetricsResponse")
        ),
    )


StreamMetricsMessage, StreamMetricsResponse = _register()
