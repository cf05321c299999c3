"""Prometheus metrics of one control-plane replica, served at ``/metrics``.

Each :class:`ControlPlaneMetrics` has its own registry, so several replicas in
one process (the tests run two) never share or clash over a series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

__all__ = ["CONTENT_TYPE", "ControlPlaneMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ControlPlaneMetrics:
    """The replica's metrics and the registry that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.listener_up = Gauge(
            "turnout_notify_listener_up",
            "1 while the Postgres LISTEN connection that wakes this replica is open, "
            "0 while it is down (pushes then wait for the poll interval)",
            registry=self.registry,
        )
        self.listener_reconnects = Counter(
            "turnout_notify_listener_reconnects",
            "times the Postgres LISTEN connection was reopened after it dropped",
            registry=self.registry,
        )
        self.model_degraded = Gauge(
            "turnout_xds_model_degraded",
            "1 while a model is held at its last accepted config because Envoy rejected "
            "its resources",
            ["model"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "turnout_xds_rejections",
            "NACKs received from proxies, by resource type",
            ["type"],
            registry=self.registry,
        )
        self.database_unavailable = Counter(
            "turnout_database_unavailable_responses",
            "admin API requests answered 503 database_unavailable",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)
