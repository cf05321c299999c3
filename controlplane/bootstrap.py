"""Envoy bootstrap rendering, from the template in ``envoy/bootstrap.yaml``."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from controlplane.domain.statistics import (
    BATCH_SIZE_BUCKETS,
    CLUSTER_STATISTICS,
    LATENCY_BUCKETS_MS,
    QUEUE_WAIT_BUCKETS_US,
    STAT_PREFIX,
    StatKind,
)

__all__ = ["TEMPLATE_PATH", "XdsAddress", "dump_bootstrap", "render_bootstrap", "stats_config"]

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "envoy" / "bootstrap.yaml"


@dataclass(frozen=True, slots=True)
class XdsAddress:
    """One control-plane replica's xDS address."""

    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> XdsAddress:
        """Parse ``host:port``; raise ValueError with a hint on a bad value."""
        problem = ValueError(
            f"{value!r} is not host:port (for example 127.0.0.1:18000 or [::1]:18000)"
        )
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise problem
        if ":" in host:
            # Only a bracketed IPv6 literal may contain colons.
            if not (host.startswith("[") and host.endswith("]")):
                raise problem
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise problem from None
        return cls(host, int(port))


@lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(TEMPLATE_PATH.read_text())
    return loaded


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def render_bootstrap(
    node_id: str,
    xds: Sequence[XdsAddress],
    *,
    admin_port: int = 9901,
    node_cluster: str = "turnout",
    delta: bool = False,
    zone: str | None = None,
    stats_flush_interval_s: float = 1.0,
) -> dict[str, Any]:
    """Return the bootstrap of one Envoy as a dict (dump it as YAML or JSON).

    Every address in ``xds`` is an endpoint of the ``turnout_xds`` cluster, so
    Envoy fails over between control-plane replicas. ``delta`` picks incremental
    ADS instead of state-of-the-world; ``zone`` is the Envoy's own zone, whose
    endpoints it then prefers. Every ``stats_flush_interval_s`` Envoy streams
    its statistics to the same xDS addresses (``controlplane.telemetry``).
    """
    if not node_id:
        raise ValueError("node id must not be empty")
    if not xds:
        raise ValueError("at least one xDS address is needed")
    bootstrap = copy.deepcopy(_template())
    bootstrap["node"] = {"id": node_id, "cluster": node_cluster}
    if zone:
        bootstrap["node"]["locality"] = {"zone": zone}
    if delta:
        bootstrap["dynamic_resources"]["ads_config"]["api_type"] = "DELTA_GRPC"
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin_port
    if not 0.05 <= stats_flush_interval_s <= 300:
        raise ValueError("the stats flush interval must be between 0.05 and 300 seconds")
    bootstrap["stats_flush_interval"] = f"{stats_flush_interval_s:.3f}s"
    bootstrap["stats_config"] = stats_config()
    cluster = bootstrap["static_resources"]["clusters"][0]
    if not all(_is_ip(a.host) for a in xds):
        cluster["type"] = "STRICT_DNS"
    cluster["load_assignment"]["endpoints"] = [
        {
            "lb_endpoints": [
                {
                    "endpoint": {
                        "address": {"socket_address": {"address": a.host, "port_value": a.port}}
                    }
                }
                for a in xds
            ]
        }
    ]
    return bootstrap


# Every statistic whose name does not start with "cluster." (RE2 has no lookahead;
# Envoy matches a regex against the whole name).
_NOT_CLUSTER = "^(?:[^c]|c[^l]|cl[^u]|clu[^s]|clus[^t]|clust[^e]|cluste[^r]|cluster[^.]).*"


def stats_config() -> dict[str, Any]:
    """Return the bootstrap's ``stats_config``: which statistics Envoy keeps and
    the buckets of the histograms Turnout reads.

    Envoy keeps every statistic except per-cluster ones, of which it keeps
    only :data:`~controlplane.domain.statistics.CLUSTER_STATISTICS`: with a
    cluster per model version, the rest would cost memory and stat-sink
    bandwidth in proportion to the number of versions.
    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto
    """
    wanted = "|".join(s.replace(".", r"\.") for s in CLUSTER_STATISTICS)
    return {
        "stats_matcher": {
            "inclusion_list": {
                "patterns": [
                    {"safe_regex": {"regex": _NOT_CLUSTER}},
                    {"safe_regex": {"regex": rf"^cluster\.[^.]+\.(?:{wanted})$"}},
                ]
            }
        },
        "histogram_bucket_settings": [
            {
                "match": {"safe_regex": {"regex": r"^cluster\.[^.]+\.upstream_rq_time$"}},
                "buckets": list(LATENCY_BUCKETS_MS),
            },
            {
                "match": {"prefix": f"{STAT_PREFIX}.{StatKind.BATCH_SIZE}."},
                "buckets": list(BATCH_SIZE_BUCKETS),
            },
            {
                "match": {"prefix": f"{STAT_PREFIX}.{StatKind.QUEUE_WAIT}."},
                "buckets": list(QUEUE_WAIT_BUCKETS_US),
            },
        ],
    }


def dump_bootstrap(bootstrap: dict[str, Any]) -> str:
    """Return ``bootstrap`` as YAML text."""
    return yaml.safe_dump(bootstrap, sort_keys=False)
