"""Prometheus metrics of one batcher, in a registry of its own.

Each batcher owns a ``CollectorRegistry`` so that several can run in one
process (tests do) without clashing on metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["REJECTION_REASONS", "BatcherMetrics"]

REJECTION_REASONS = (
    "queue_full",
    "deadline",
    "malformed",
    "upstream_error",
    "disconnected",
)

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class BatcherMetrics:
    """The batcher's instruments: batch sizes, waits, upstream time, rejections, in flight."""

    def __init__(self, model: str = "", version: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.batch_size = Histogram(
            "turnout_batcher_batch_size",
            "Requests per upstream batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_rows = Histogram(
            "turnout_batcher_batch_rows",
            "Rows per upstream batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
            registry=r,
        )
        self.queue_wait = Histogram(
            "turnout_batcher_queue_wait_seconds",
            "Time a request waited in the queue before its batch was sent.",
            buckets=_SECONDS,
            registry=r,
        )
        self.upstream_time = Histogram(
            "turnout_batcher_upstream_seconds",
            "Duration of upstream calls (batched and single).",
            buckets=_SECONDS,
            registry=r,
        )
        self.rejections = Counter(
            "turnout_batcher_rejections",
            "Requests the batcher answered with an error, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason=reason)
        self.requests = Counter(
            "turnout_batcher_requests",
            "Requests received, by path taken (batched or passthrough).",
            ["mode"],
            registry=r,
        )
        self.in_flight = Gauge(
            "turnout_batcher_in_flight_batches",
            "Batches sent upstream and not yet answered.",
            registry=r,
        )
        # Labelled with the model version the batcher serves: the demand signal an
        # autoscaler reads per version (deploy/kubernetes/examples/autoscaling).
        self.queue_depth = Gauge(
            "turnout_batcher_queue_depth",
            "Requests waiting in the queue.",
            ["model", "version"],
            registry=r,
        ).labels(model=model, version=version)
        self.splits = Counter(
            "turnout_batcher_batch_splits",
            "Batches the upstream rejected that were split in halves and retried.",
            registry=r,
        )

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text exposition format."""
        return generate_latest(self.registry)
