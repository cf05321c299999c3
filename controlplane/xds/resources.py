"""Type URLs of the resources Turnout serves, in the order ADS pushes them, and
the one way a message nested in a resource is packed."""

from __future__ import annotations

from typing import Final

from google.protobuf import any_pb2
from google.protobuf.message import Message

from controlplane.domain.naming import cluster_name

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "PUSH_ORDER",
    "ROUTE",
    "SHORT_NAMES",
    "TYPE_LABELS",
    "cluster_name",
    "to_any",
]

_PREFIX = "type.googleapis.com/envoy.config."
CLUSTER: Final = _PREFIX + "cluster.v3.Cluster"
ENDPOINT: Final = _PREFIX + "endpoint.v3.ClusterLoadAssignment"
LISTENER: Final = _PREFIX + "listener.v3.Listener"
ROUTE: Final = _PREFIX + "route.v3.RouteConfiguration"

# CDS, EDS, LDS, RDS: the order the xDS protocol asks of ADS servers so that a
# route never points at a cluster Envoy has not warmed ("make before break").
# https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#eventual-consistency-considerations
PUSH_ORDER: Final = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

SHORT_NAMES: Final = {
    CLUSTER: "clusters",
    ENDPOINT: "endpoints",
    LISTENER: "listeners",
    ROUTE: "routes",
}
# The ``type`` label of the xDS series on /metrics (pushes, NACKs): one word, singular.
TYPE_LABELS: Final = {
    CLUSTER: "cluster",
    ENDPOINT: "endpoint",
    LISTENER: "listener",
    ROUTE: "route",
}


def to_any(message: Message) -> any_pb2.Any:
    """Return ``message`` packed in an Any for a ``typed_config`` inside a resource.

    Serialized deterministically (map entries sorted by key): a plain ``Pack``
    writes maps in an order that varies between processes, and the bytes of a
    nested Any are kept as they are when the resource around it is serialized,
    so the same state would get different versions on different replicas.
    """
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed
