"""Envoy's tracing over xDS: the tracer, its tags and the collector's cluster are
pushed only when tracing is on."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.xds.resources import CLUSTER, LISTENER
from controlplane.xds.tracing import OTLP_CLUSTER, TracingOptions
from controlplane.xds.translate import LISTENER_NAME, ListenerOptions, translate

STATE = DesiredState(
    revision=3,
    models=(
        ModelSpec(
            name="sentiment",
            protocol="http",
            versions=(VersionSpec("v1", (EndpointSpec("10.0.0.1", 8001),)),),
            weights=(("v1", 100),),
        ),
    ),
)
TRACED = ListenerOptions(tracing=TracingOptions("otel-collector", 4317, 12.5))


def _manager(options: ListenerOptions) -> hcm_pb2.HttpConnectionManager:
    listener = translate(STATE, options)[LISTENER][LISTENER_NAME]
    assert isinstance(listener, listener_pb2.Listener)
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def test_untraced_the_listener_has_no_tracer_and_there_is_no_collector_cluster() -> None:
    assert not _manager(ListenerOptions()).HasField("tracing")
    assert OTLP_CLUSTER not in translate(STATE)[CLUSTER]


def test_traced_the_listener_sends_spans_to_the_collector_cluster() -> None:
    tracing = _manager(TRACED).tracing
    assert tracing.provider.name == "envoy.tracers.opentelemetry"
    assert tracing.random_sampling.value == 12.5
    config = opentelemetry_pb2.OpenTelemetryConfig()
    tracing.provider.typed_config.Unpack(config)
    assert config.service_name == "turnout-envoy"
    assert config.grpc_service.envoy_grpc.cluster_name == OTLP_CLUSTER

    cluster = translate(STATE, TRACED)[CLUSTER][OTLP_CLUSTER]
    assert isinstance(cluster, cluster_pb2.Cluster)
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    (address,) = [
        e.endpoint.address.socket_address
        for locality in cluster.load_assignment.endpoints
        for e in locality.lb_endpoints
    ]
    assert (address.address, address.port_value) == ("otel-collector", 4317)
    assert cluster.typed_extension_protocol_options  # HTTP/2, for gRPC


def test_spans_are_tagged_with_model_version_and_tenant() -> None:
    tags = {tag.tag: tag for tag in _manager(TRACED).tracing.custom_tags}
    assert set(tags) == {"model", "version", "tenant"}
    for key in ("model", "version"):
        metadata = tags[key].metadata
        assert metadata.kind.HasField("cluster")
        assert (metadata.metadata_key.key, metadata.metadata_key.path[0].key) == ("turnout", key)
    tenant = tags["tenant"].metadata
    assert tenant.kind.HasField("request")
    assert [p.key for p in tenant.metadata_key.path] == ["jwt_payload", "sub"]


def test_each_version_cluster_names_its_model_and_version_in_its_metadata() -> None:
    cluster = translate(STATE)[CLUSTER]["sentiment/v1"]
    assert isinstance(cluster, cluster_pb2.Cluster)
    labels = cluster.metadata.filter_metadata["turnout"].fields
    assert (labels["model"].string_value, labels["version"].string_value) == ("sentiment", "v1")
