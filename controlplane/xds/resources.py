"""Type URLs of the resources Turnout serves, in the order ADS pushes them."""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "PUSH_ORDER",
    "ROUTE",
    "SHORT_NAMES",
    "cluster_name",
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


def cluster_name(model: str, version: str) -> str:
    """Return the Envoy cluster (and EDS service) name of a model version."""
    return f"{model}/{version}"
