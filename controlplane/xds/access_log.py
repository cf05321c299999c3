"""Envoy's access log: one JSON object per request, written by every proxy.

The schema is :data:`ACCESS_LOG_FORMAT`, documented field by field in
docs/observability.md ("Access logs"). Envoy's file logger appends whole
lines, so several proxies may share one file.
https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage

Model and version come from metadata that the translator puts on every route
of a model (the model) and on every version's cluster (model and version), so
they are the exact names, also when a route answers locally (a 404 for an
unknown version, a 401) and no upstream is called.

What is never logged: request or response bodies, and headers that carry
credentials (``authorization``, ``x-api-key``, cookies). The path is logged
without its query string, which may carry a key (``?api_key=``).
"""

from __future__ import annotations

from typing import Final

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from google.protobuf import struct_pb2

from controlplane.xds.resources import to_any
from controlplane.xds.tenancy import JWT_FILTER, PAYLOAD_KEY

__all__ = [
    "ACCESS_LOG_FORMAT",
    "BATCH_SIZE_HEADER",
    "METADATA_NAMESPACE",
    "QUEUE_WAIT_HEADER",
    "SHED_HEADER",
    "access_logs",
    "tag_cluster",
    "tag_route",
]

# The namespace of the route and cluster metadata the log reads (the local reply
# mappers read theirs from the same one: controlplane.xds.replies).
METADATA_NAMESPACE: Final = "turnout"
MODEL_KEY: Final = "model"
VERSION_KEY: Final = "version"

# Set by the batcher (filters/batcher) on its answers.
BATCH_SIZE_HEADER: Final = "x-turnout-batch-size"
QUEUE_WAIT_HEADER: Final = "x-turnout-queue-wait-us"
SHED_HEADER: Final = "x-turnout-shed"

_JWT_PAYLOAD = f"{JWT_FILTER}:{PAYLOAD_KEY}"

# Field -> Envoy command operator. json_format writes the operators that yield
# numbers (durations, byte counts, the status) as JSON numbers, the others as
# strings, and a value that is absent as null.
# https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#command-operators
ACCESS_LOG_FORMAT: Final[dict[str, str]] = {
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "trace_id": "%TRACE_ID%",
    "model": f"%METADATA(ROUTE:{METADATA_NAMESPACE}:{MODEL_KEY})%",
    "version": f"%CLUSTER_METADATA({METADATA_NAMESPACE}:{VERSION_KEY})%",
    "tenant": f"%DYNAMIC_METADATA({_JWT_PAYLOAD}:tenant)%",
    "tenant_subject": f"%DYNAMIC_METADATA({_JWT_PAYLOAD}:sub)%",
    "method": "%REQ(:METHOD)%",
    # NQ: without the query string, which may carry a credential; the path the
    # client sent, before a route's rewrite.
    "path": "%PATH(NQ:ORIG_OR_PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "upstream_host": "%UPSTREAM_HOST%",
    "duration_ms": "%DURATION%",
    # From the first byte sent upstream to the last byte received from it.
    "upstream_duration_ms": "%COMMON_DURATION(US_TX_BEG:US_RX_END:ms)%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    # Upstream attempts: 1 plus the retries; 0 when no upstream was called.
    "upstream_attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "batch_size": f"%RESP({BATCH_SIZE_HEADER.upper()})%",
    "queue_wait_us": f"%RESP({QUEUE_WAIT_HEADER.upper()})%",
    "shed": f"%RESP({SHED_HEADER.upper()})%",
}


def access_logs(path: str | None) -> list[accesslog_pb2.AccessLog]:
    """Return the HTTP connection manager's access loggers: one that appends a JSON
    object per request (:data:`ACCESS_LOG_FORMAT`) to ``path`` (a file, or
    ``/dev/stdout``), or none when ``path`` is None or empty."""
    if not path:
        return []
    fields = struct_pb2.Struct()
    fields.update(ACCESS_LOG_FORMAT)
    logger = file_pb2.FileAccessLog(
        path=path,
        log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=fields),
    )
    return [accesslog_pb2.AccessLog(name="envoy.access_loggers.file", typed_config=to_any(logger))]


def tag_route(route: route_components_pb2.Route, model: str) -> route_components_pb2.Route:
    """Name ``model`` in ``route``'s metadata, for the access log; return ``route``."""
    fields = route.metadata.filter_metadata[METADATA_NAMESPACE].fields
    fields[MODEL_KEY].string_value = model
    return route


def tag_cluster(cluster: cluster_pb2.Cluster, model: str, version: str) -> None:
    """Name ``model`` and ``version`` in ``cluster``'s metadata, for the access log."""
    fields = cluster.metadata.filter_metadata[METADATA_NAMESPACE].fields
    fields[MODEL_KEY].string_value = model
    fields[VERSION_KEY].string_value = version
