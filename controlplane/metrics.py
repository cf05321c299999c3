"""Prometheus metrics of one control-plane replica, served at ``/metrics``.

Each :class:`ControlPlaneMetrics` has its own registry, so several replicas in
one process (the tests run two) never share or clash over a series.

Most series are kept in step where the event happens (a push, a request, a
statement). What the replica merely *is* at a moment (its revision, its
proxies and their lag) is read at scrape time from a :class:`XdsFigures`
source, so it cannot drift from the proxy registry. Every series, its labels
and their cardinality are listed in docs/observability.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = [
    "CONTENT_TYPE",
    "PROXY_STATUSES",
    "ControlPlaneMetrics",
    "ProxyFigure",
    "XdsFigures",
    "statement_operation",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The statuses counted by turnout_xds_proxies, always all three (0 when none).
PROXY_STATUSES = ("SYNCED", "STALE", "NACKED")
# turnout_database_seconds{operation}: the statement's verb, else "other".
_OPERATIONS = frozenset({"select", "insert", "update", "delete"})
# Admin API methods kept as a label; anything else a client sends is "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Where a statement's start is kept on SQLAlchemy's per-execution context.
_STARTED = "_turnout_started"

# Seconds: from a millisecond database read to a push that waited out a poll.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Commit to push spans the wake-up, the read, the translation and the send; a
# lost wake-up waits for the poll interval (seconds), so the buckets reach a minute.
_PUSH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class ProxyFigure:
    """One connected proxy as /metrics shows it.

    ``status`` is one of :data:`PROXY_STATUSES`; ``held_revision`` the config
    revision of the newest snapshot the proxy held all of (None: none yet).
    """

    node: str
    status: str
    held_revision: int | None


@dataclass(frozen=True, slots=True)
class XdsFigures:
    """What the replica serves at one moment: the config revision of its snapshot
    (None before the state is loaded) and its proxies, one per node id."""

    revision: int | None
    proxies: list[ProxyFigure] = field(default_factory=list)


class _XdsCollector(Collector):
    """Reads the revision and the proxies at scrape time."""

    def __init__(self, source: Callable[[], XdsFigures]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        figures = self._source()
        revision = GaugeMetricFamily(
            "turnout_revision",
            "config revision of the snapshot this replica serves (absent before it loaded one)",
        )
        if figures.revision is not None:
            revision.add_metric([], figures.revision)
        yield revision
        counts = dict.fromkeys(PROXY_STATUSES, 0)
        lag = GaugeMetricFamily(
            "turnout_xds_proxy_lag_revisions",
            "config revisions between what this replica serves and the newest snapshot "
            "the proxy held all of, per proxy node id (absent until it held one)",
            labels=["node"],
        )
        for proxy in figures.proxies:
            counts[proxy.status] = counts.get(proxy.status, 0) + 1
            if figures.revision is not None and proxy.held_revision is not None:
                lag.add_metric([proxy.node], max(0, figures.revision - proxy.held_revision))
        proxies = GaugeMetricFamily(
            "turnout_xds_proxies",
            "proxies connected to this replica, by sync status",
            labels=["status"],
        )
        for status, count in counts.items():
            proxies.add_metric([status], count)
        yield proxies
        yield lag

    def describe(self) -> Iterable[Metric]:
        # Described without calling the source: registering must not read state.
        return [
            GaugeMetricFamily("turnout_revision", ""),
            GaugeMetricFamily("turnout_xds_proxies", "", labels=["status"]),
            GaugeMetricFamily("turnout_xds_proxy_lag_revisions", "", labels=["node"]),
        ]


def statement_operation(statement: str) -> str:
    """Return the ``operation`` label of a SQL statement: its verb, lower case, when
    it is select, insert, update or delete, else "other" (BEGIN, PRAGMA, SET, ...)."""
    verb = statement.lstrip()[:6].lower()
    return verb if verb in _OPERATIONS else "other"


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
        self.pushes = Counter(
            "turnout_xds_pushes",
            "xDS responses sent to proxies, by resource type and ADS variant",
            ["type", "variant"],
            registry=self.registry,
        )
        self.commit_to_push = Histogram(
            "turnout_xds_commit_to_push_seconds",
            "from a config revision's commit to its first push to a proxy that held "
            "an earlier snapshot",
            buckets=_PUSH_BUCKETS,
            registry=self.registry,
        )
        self.translation = Histogram(
            "turnout_xds_translation_seconds",
            "turning desired state into the snapshots the replica publishes",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sync = Histogram(
            "turnout_sync_seconds",
            "one pass of the sync loop, by result (published, unchanged, failed)",
            ["result"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.api_requests = Counter(
            "turnout_api_requests",
            "admin API requests, by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.api_duration = Histogram(
            "turnout_api_request_duration_seconds",
            "admin API request time until the response is sent, by method and route template",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.database = Histogram(
            "turnout_database_seconds",
            "database statements' time, by operation (select, insert, update, delete, other)",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # The labelled children, looked up once: a statement pays a dict lookup.
        self._database_by_operation = {
            operation: self.database.labels(operation=operation)
            for operation in (*sorted(_OPERATIONS), "other")
        }

    def watch_xds(self, source: Callable[[], XdsFigures]) -> None:
        """Report the revision, the proxies by status and each proxy's lag from
        ``source``, called at every scrape."""
        self.registry.register(_XdsCollector(source))

    def time_statements(self, engine: Engine) -> Callable[[], None]:
        """Time every statement ``engine`` runs into ``turnout_database_seconds``,
        failed ones included (their time until they failed); return what stops it.

        Stop it with the engine: ``handle_error`` is kept by the dialect, which
        SQLAlchemy's statement caches keep for the life of the process, and through
        this listener it would keep these metrics and whatever they report on."""
        listeners: list[tuple[str, Callable[..., Any]]] = [
            ("before_cursor_execute", _before_statement),
            ("after_cursor_execute", self._after_statement),
            ("handle_error", self._failed_statement),
        ]
        for name, listener in listeners:
            event.listen(engine, name, listener)

        def stop() -> None:
            for name, listener in listeners:
                if event.contains(engine, name, listener):
                    event.remove(engine, name, listener)

        return stop

    def request_label(self, method: str) -> str:
        """Return the ``method`` label for an HTTP method (unknown ones are "other")."""
        return method if method in _METHODS else "other"

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one admin API request and its time."""
        method = self.request_label(method)
        self.api_requests.labels(method=method, route=route, status=str(status)).inc()
        self.api_duration.labels(method=method, route=route).observe(seconds)

    def exposition(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)

    def _after_statement(
        self,
        _conn: Any,
        _cursor: Any,
        statement: str,
        _parameters: Any,
        context: Any,
        _executemany: bool,
    ) -> None:
        self._observe_statement(statement, context)

    def _failed_statement(self, exception_context: Any) -> None:
        statement = exception_context.statement
        if statement is not None:
            self._observe_statement(statement, exception_context.execution_context)

    def _observe_statement(self, statement: str, context: Any) -> None:
        started = getattr(context, _STARTED, None)
        if started is None:
            return
        setattr(context, _STARTED, None)  # a failure after the statement counts once
        self._database_by_operation[statement_operation(statement)].observe(
            time.perf_counter() - started
        )


def _before_statement(
    _conn: Any, _cursor: Any, _statement: str, _parameters: Any, context: Any, _many: bool
) -> None:
    if context is not None:
        setattr(context, _STARTED, time.perf_counter())
