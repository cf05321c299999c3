"""The listener's stats access logger: Envoy counts every request once, when
its response is complete, under the version that served it and the tenant
that sent it, and reads the batcher's figures from its response headers.

Envoy's cluster statistics count upstream tries (a retried request counts
twice) and miss replies Envoy makes itself before a try; this logger counts
what the client got. The names are those of ``controlplane.domain.statistics``;
the stat sink streams them to the control plane with the rest.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/access_loggers/stats/v3/stats.proto
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.extensions.access_loggers.stats.v3 import stats_pb2
from google.protobuf import wrappers_pb2

from controlplane.domain.statistics import (
    BATCH_SIZE_HEADER,
    QUEUE_WAIT_HEADER,
    SHED_HEADER,
    STAT_PREFIX,
    StatKind,
)
from controlplane.xds.resources import to_any
from controlplane.xds.tenancy import JWT_FILTER, PAYLOAD_KEY

__all__ = ["stats_access_log"]

_Config = stats_pb2.Config
# The observability name of the cluster (its alt_stat_name, the version's stat name).
_CLUSTER = _Config.Tag(name="cluster", value_format="%UPSTREAM_CLUSTER%")
_CODE = _Config.Tag(name="code", value_format="%RESPONSE_CODE%")
# The tenant's name, from its verified credential (the token's signed "tenant" claim).
_TENANT = _Config.Tag(
    name="tenant", value_format=f"%DYNAMIC_METADATA({JWT_FILTER}:{PAYLOAD_KEY}:tenant)%"
)


def _header_histogram(kind: str, header: str) -> stats_pb2.Config.Histogram:
    # A response without the header records nothing (not a number).
    return _Config.Histogram(
        stat=_Config.Stat(name=kind, tags=[_CLUSTER]),
        unit=_Config.Histogram.Unspecified,
        value_format=f"%RESP({header})%",
    )


def stats_access_log() -> accesslog_pb2.AccessLog:
    """Return the access logger that keeps Turnout's per-request statistics."""
    one = wrappers_pb2.UInt64Value(value=1)
    config = _Config(
        stat_prefix=STAT_PREFIX,
        counters=[
            _Config.Counter(
                stat=_Config.Stat(name=StatKind.REQUESTS, tags=[_CLUSTER, _CODE]), value_fixed=one
            ),
            _Config.Counter(
                stat=_Config.Stat(name=StatKind.TENANT_REQUESTS, tags=[_TENANT, _CODE]),
                value_fixed=one,
            ),
            _Config.Counter(
                stat=_Config.Stat(name=StatKind.SHED, tags=[_CLUSTER]),
                value_format=f"%RESP({SHED_HEADER})%",
            ),
        ],
        histograms=[
            _header_histogram(StatKind.BATCH_SIZE, BATCH_SIZE_HEADER),
            _header_histogram(StatKind.QUEUE_WAIT, QUEUE_WAIT_HEADER),
        ],
    )
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.stats", typed_config=to_any(config))
