"""What Envoy is asked to count for Turnout, and the names it reports them by.

Envoy keeps its own statistics; the control plane reads the few it needs from
the ``metrics_service`` stat sink (``controlplane.telemetry``). Three parties
share these names: the bootstrap (which statistics Envoy keeps, and their
histogram buckets), the listener (a stats access logger that counts every
request once, with its final status, and reads the batcher's headers), and the
aggregator (which parses them back). They live here so the three cannot drift.

Envoy's flat statistic names, as the sink sends them (tags are not emitted as
labels: names stay short and need no label parsing):

- ``cluster.<stat name>.<statistic>``: Envoy's own cluster statistics, for the
  version whose :func:`controlplane.domain.naming.stat_name` that is;
- ``turnout.requests.cluster.<stat name>.code.<status>``: one per request,
  counted when its response is complete, with the status the client got
  (retries and local replies included, once);
- ``turnout.tenant_requests.tenant.<tenant>.code.<status>``: the same per
  tenant, named by its verified credential (empty: no verified credential);
- ``turnout.batch_size.cluster.<stat name>`` (histogram of the batch each
  request rode in), ``turnout.queue_wait_us.cluster.<stat name>`` (histogram
  of its wait in the batcher's queue) and ``turnout.shed.cluster.<stat
  name>`` (requests the batcher refused for load), from the batcher's
  response headers.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "BATCH_SIZE_HEADER",
    "CLUSTER_STATISTICS",
    "LATENCY_BUCKETS_MS",
    "QUEUE_WAIT_BUCKETS_US",
    "QUEUE_WAIT_HEADER",
    "SHED_HEADER",
    "STAT_PREFIX",
    "StatKind",
]

STAT_PREFIX: Final = "turnout"

# The batcher's response headers (filters.batcher sets them).
BATCH_SIZE_HEADER: Final = "x-turnout-batch-size"
QUEUE_WAIT_HEADER: Final = "x-turnout-queue-wait-us"
SHED_HEADER: Final = "x-turnout-shed"


class StatKind:
    """The statistics of Turnout's stats access logger (after ``turnout.``)."""

    REQUESTS: Final = "requests"
    TENANT_REQUESTS: Final = "tenant_requests"
    BATCH_SIZE: Final = "batch_size"
    QUEUE_WAIT: Final = "queue_wait_us"
    SHED: Final = "shed"


# Envoy's own per-cluster statistics that Turnout keeps (every other cluster
# statistic is not created at all: with thousands of clusters they would cost
# Envoy memory and the stat sink bandwidth for nothing).
CLUSTER_STATISTICS: Final = (
    "upstream_rq_time",  # histogram: time of each upstream try, ms
    "upstream_rq_retry",
    "upstream_rq_timeout",
    "upstream_rq_pending_overflow",  # circuit breaker: pending requests
    "upstream_rq_retry_overflow",  # circuit breaker: retries
    "upstream_cx_overflow",  # circuit breaker: connections
    "upstream_rq_active",  # gauge
    "upstream_rq_pending_active",  # gauge
    "outlier_detection.ejections_enforced_total",
    "outlier_detection.ejections_active",  # gauge
)

# Histogram buckets (upper bounds). Latency is in milliseconds, as Envoy records it.
# 19 bounds: every flush carries every bucket of every used cluster's histogram
# (about 13 bytes each), so each bound costs bandwidth and reading time at
# thousands of versions. A percentile interpolates inside its bucket, so it is
# off by at most that bucket's width: 10 ms up to 60 ms, 25 ms up to 100 ms,
# 50 to 100 ms up to 250 ms, 150 to 400 ms up to 1 s; beyond, within the
# bucket (1 to 2.5 s, 2.5 to 10 s, 10 to 60 s).
LATENCY_BUCKETS_MS: Final = (
    1, 2, 5, 10, 20, 30, 40, 50, 60, 75, 100, 150, 250, 400, 600, 1000, 2500, 10000, 60000,
)  # fmt: skip
BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
QUEUE_WAIT_BUCKETS_US: Final = (
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000,
)  # fmt: skip
