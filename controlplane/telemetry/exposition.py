"""The traffic window's totals as Prometheus series, on the replica's /metrics.

Counters are totals since this replica started, over the proxies that stream
to it; with several replicas, sum them (each proxy streams to one at a time).
Labels are model, version and zone (the reporting proxy's zone), and tenant
and code: never a proxy, a host or a request, so the number of series is
bounded by versions x zones x status codes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from controlplane.domain.statistics import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS_MS,
    QUEUE_WAIT_BUCKETS_US,
)
from controlplane.telemetry.cache import WindowCache
from controlplane.telemetry.window import TrafficWindow

__all__ = ["DataPlaneCollector", "DataPlaneExposition"]

_VERSION = ["model", "version", "zone"]


def _buckets(
    bounds: Sequence[float], counts: Sequence[float], scale: float
) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0.0
    for bound, n in zip(bounds, counts, strict=False):
        running += n
        out.append((repr(float(bound) * scale), running))
    out.append(("+Inf", running + counts[-1]))
    return out


class DataPlaneCollector(Collector):
    """Reads the window's totals at scrape time."""

    def __init__(self, window: TrafficWindow) -> None:
        self._window = window

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "turnout_model_requests",
            "Requests answered, per model version (each counted once, retries included)",
            labels=_VERSION,
        )
        responses = CounterMetricFamily(
            "turnout_model_responses", "Responses by status code", labels=[*_VERSION, "code"]
        )
        retries = CounterMetricFamily(
            "turnout_model_retries", "Upstream retries Envoy made", labels=_VERSION
        )
        overflows = CounterMetricFamily(
            "turnout_model_overflows",
            "Requests or connections a circuit breaker refused",
            labels=_VERSION,
        )
        ejections = CounterMetricFamily(
            "turnout_model_ejections", "Hosts ejected by outlier detection", labels=_VERSION
        )
        active = GaugeMetricFamily(
            "turnout_model_active_requests", "Requests in flight upstream", labels=_VERSION
        )
        pending = GaugeMetricFamily(
            "turnout_model_pending_requests",
            "Requests waiting for an upstream connection",
            labels=_VERSION,
        )
        latency = HistogramMetricFamily(
            "turnout_model_upstream_latency_seconds",
            "Time of each upstream try, from Envoy's histograms",
            labels=_VERSION,
        )
        batch_size = HistogramMetricFamily(
            "turnout_model_batch_size",
            "Size of the batch each batched request rode in (request-weighted)",
            labels=_VERSION,
        )
        queue_wait = HistogramMetricFamily(
            "turnout_model_batch_queue_wait_seconds",
            "Time each batched request waited in its batcher's queue",
            labels=_VERSION,
        )
        shed = CounterMetricFamily(
            "turnout_model_batch_shed",
            "Requests a batcher refused to keep its latency target",
            labels=_VERSION,
        )
        for key, counts, (in_flight, waiting, _) in self._window.totals():
            labels = list(key)
            requests.add_metric(labels, sum(counts.codes.values()))
            for code, n in sorted(counts.codes.items()):
                responses.add_metric([*labels, str(code)], n)
            retries.add_metric(labels, counts.retries)
            overflows.add_metric(labels, counts.overflows)
            ejections.add_metric(labels, counts.ejections)
            active.add_metric(labels, in_flight)
            pending.add_metric(labels, waiting)
            for family, what, bounds, scale in (
                (latency, "latency", LATENCY_BUCKETS_MS, 0.001),
                (batch_size, "batch_size", BATCH_SIZE_BUCKETS, 1.0),
                (queue_wait, "queue_wait", QUEUE_WAIT_BUCKETS_US, 0.000001),
            ):
                histogram = counts.histograms.get(what)
                if histogram:
                    family.add_metric(
                        labels,
                        _buckets(bounds, histogram, scale),
                        counts.sums.get(what, 0.0) * scale,
                    )
            if counts.shed:
                shed.add_metric(labels, counts.shed)
        tenants = CounterMetricFamily(
            "turnout_tenant_requests",
            'Requests by tenant (named by its verified credential) and status code ("-": none)',
            labels=["tenant", "code"],
        )
        for tenant, counts in self._window.tenant_totals():
            for code, n in sorted(counts.codes.items()):
                tenants.add_metric([tenant or "-", str(code)], n)
        flushes = CounterMetricFamily(
            "turnout_stats_flushes", "Stat-sink flushes folded into the traffic window"
        )
        flushes.add_metric([], self._window.reports)
        merged = CounterMetricFamily(
            "turnout_stats_flushes_merged",
            "Stat-sink flushes that arrived before their stream's previous one was folded"
            " and were merged into it (the control plane was behind; counts stay exact)",
        )
        merged.add_metric([], self._window.merged_flushes)
        yield from (
            flushes,
            merged,
            requests,
            responses,
            retries,
            overflows,
            ejections,
            active,
            pending,
            latency,
            batch_size,
            queue_wait,
            shed,
            tenants,
        )


class DataPlaneExposition:
    """The data-plane series in the text format, computed at most once per
    ``cache``'s period (thousands of versions make megabytes of text); the
    route appends them to the control plane's own series."""

    def __init__(self, window: TrafficWindow, cache: WindowCache) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(DataPlaneCollector(window))
        self._cache = cache

    def text(self) -> bytes:
        return self._cache.get("/metrics", lambda: generate_latest(self._registry))
