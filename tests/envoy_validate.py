"""Check rendered resources with the real Envoy binary (``envoy --mode validate``).

The rendered resources come over ADS in production; here they are inlined in a
static bootstrap (EDS clusters get their ClusterLoadAssignment inline, DNS
clusters hold theirs already, the
listener gets its RouteConfiguration inline), which Envoy validates in full:
every proto constraint, every extension's config, every reference.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from google.protobuf.message import Message

from controlplane.processes import envoy_binary
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE


def static_bootstrap(resources: dict[str, dict[str, Message]]) -> dict[str, object]:
    """Return a bootstrap (as JSON data) with ``resources`` inlined as static ones."""
    clusters = []
    for message in resources[CLUSTER].values():
        assert isinstance(message, cluster_pb2.Cluster)
        cluster = cluster_pb2.Cluster()
        cluster.CopyFrom(message)
        if cluster.type != cluster_pb2.Cluster.EDS:
            # A cluster that holds its endpoints (STRICT_DNS) is valid as it is.
            clusters.append(json_format.MessageToDict(cluster))
            continue
        assignment = resources[ENDPOINT][cluster.eds_cluster_config.service_name]
        assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
        cluster.ClearField("eds_cluster_config")
        cluster.type = cluster_pb2.Cluster.STATIC
        cluster.load_assignment.CopyFrom(assignment)
        clusters.append(json_format.MessageToDict(cluster))
    listeners = []
    for message in resources[LISTENER].values():
        assert isinstance(message, listener_pb2.Listener)
        listener = listener_pb2.Listener()
        listener.CopyFrom(message)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                manager = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(manager)
                routes = resources[ROUTE][manager.rds.route_config_name]
                assert isinstance(routes, route_pb2.RouteConfiguration)
                manager.ClearField("rds")
                manager.route_config.CopyFrom(routes)
                network_filter.typed_config.Pack(manager)
        listeners.append(json_format.MessageToDict(listener))
    return {
        "node": {"id": "validate", "cluster": "turnout"},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def envoy_validate(resources: dict[str, dict[str, Message]], workdir: Path) -> str:
    """Run ``envoy --mode validate`` on ``resources``; return its output, raise if rejected."""
    path = workdir / "validate.json"
    path.write_text(json.dumps(static_bootstrap(resources)))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output
