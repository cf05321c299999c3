"""Envoy's OpenTelemetry tracing, configured over xDS: pure builders.

With :class:`TracingOptions` in the listener options, the data-plane listener's
HTTP connection manager traces with ``envoy.tracers.opentelemetry``, which
sends its spans over OTLP/gRPC through the cluster ``turnout_otlp`` (pushed
over CDS beside the model clusters) and propagates W3C ``traceparent`` to the
upstream: the batcher or the model server.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/trace/v3/opentelemetry.proto

Each span is tagged with the model and version that served it, read from the
upstream cluster's metadata (``turnout.model``, ``turnout.version``: exact for
a weighted split too, where the route cannot tell the version), and with the
tenant, the ``sub`` of the caller's verified token (the JWT filter's metadata;
absent on unprotected models).
https://www.envoyproxy.io/docs/envoy/latest/api-v3/type/tracing/v3/custom_tag.proto
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, grpc_service_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.metadata.v3 import metadata_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2

from controlplane.xds.resources import to_any
from controlplane.xds.tenancy import JWT_FILTER, PAYLOAD_KEY

__all__ = [
    "CLUSTER_METADATA_NAMESPACE",
    "OTLP_CLUSTER",
    "SERVICE_NAME",
    "TracingOptions",
    "collector_cluster",
    "tracing_clusters",
    "tracing_config",
]

OTLP_CLUSTER = "turnout_otlp"
SERVICE_NAME = "turnout-envoy"
# Each version cluster's metadata names its model and version under this key.
CLUSTER_METADATA_NAMESPACE = "turnout"
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True, slots=True)
class TracingOptions:
    """Where Envoy sends its spans (an OTLP/gRPC collector, by IP or DNS name) and
    the percent of requests it starts a trace for (0 to 100)."""

    collector_host: str
    collector_port: int
    sampling_percent: float = 1.0


def tracing_config(options: TracingOptions) -> hcm_pb2.HttpConnectionManager.Tracing:
    """Return the HTTP connection manager's ``tracing``: the OpenTelemetry tracer,
    its sampling, and the model, version and tenant tags."""
    provider = opentelemetry_pb2.OpenTelemetryConfig(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=OTLP_CLUSTER),
            timeout=duration_pb2.Duration(seconds=5),
        ),
        service_name=SERVICE_NAME,
    )
    return hcm_pb2.HttpConnectionManager.Tracing(
        provider=http_tracer_pb2.Tracing.Http(
            name="envoy.tracers.opentelemetry", typed_config=to_any(provider)
        ),
        random_sampling=percent_pb2.Percent(value=options.sampling_percent),
        custom_tags=[
            _cluster_tag("model"),
            _cluster_tag("version"),
            custom_tag_pb2.CustomTag(
                tag="tenant",
                metadata=custom_tag_pb2.CustomTag.Metadata(
                    kind=metadata_pb2.MetadataKind(request=metadata_pb2.MetadataKind.Request()),
                    metadata_key=metadata_pb2.MetadataKey(
                        key=JWT_FILTER,
                        path=[
                            metadata_pb2.MetadataKey.PathSegment(key=PAYLOAD_KEY),
                            metadata_pb2.MetadataKey.PathSegment(key="sub"),
                        ],
                    ),
                ),
            ),
        ],
    )


def _cluster_tag(key: str) -> custom_tag_pb2.CustomTag:
    return custom_tag_pb2.CustomTag(
        tag=key,
        metadata=custom_tag_pb2.CustomTag.Metadata(
            kind=metadata_pb2.MetadataKind(cluster=metadata_pb2.MetadataKind.Cluster()),
            metadata_key=metadata_pb2.MetadataKey(
                key=CLUSTER_METADATA_NAMESPACE,
                path=[metadata_pb2.MetadataKey.PathSegment(key=key)],
            ),
        ),
    )


def collector_cluster(options: TracingOptions) -> cluster_pb2.Cluster:
    """Return the cluster ``turnout_otlp``: the collector, over HTTP/2 (gRPC), its
    name resolved by DNS (an IP address resolves to itself)."""
    protocol = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options={}
        )
    )
    endpoint = endpoint_components_pb2.LbEndpoint()
    endpoint.endpoint.address.CopyFrom(
        address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=options.collector_host, port_value=options.collector_port
            )
        )
    )
    return cluster_pb2.Cluster(
        name=OTLP_CLUSTER,
        type=cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration_pb2.Duration(seconds=1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=OTLP_CLUSTER,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        ),
        typed_extension_protocol_options={_HTTP_PROTOCOL_OPTIONS: to_any(protocol)},
    )


def tracing_clusters(options: TracingOptions | None) -> dict[str, cluster_pb2.Cluster]:
    """Return the clusters that tracing with ``options`` needs (none when off)."""
    return {} if options is None else {OTLP_CLUSTER: collector_cluster(options)}
