"""The pieces behind the control plane's own series, one at a time: the scrape-time
proxy figures, the statement labels, the route labels, a proxy's overall status
and what a stream reports of each push."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from controlplane.api.request_metrics import UNMATCHED, route_template
from controlplane.metrics import ControlPlaneMetrics, ProxyFigure, XdsFigures, statement_operation
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER, ENDPOINT, PUSH_ORDER
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.status import ProxyRegistry, SyncStatus
from tests.support import parse_metrics, sample
from tests.unit.test_sotw import (
    ONE_VERSION,
    TWO_VERSIONS,
    Stream,
    _nack,
    _snapshot,
    _sync_all,
)


def _scrape(figures: XdsFigures) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    metrics = ControlPlaneMetrics()
    metrics.watch_xds(lambda: figures)
    return parse_metrics(metrics.exposition().decode())


def test_proxies_are_counted_by_status_and_lag_behind_the_served_revision() -> None:
    samples = _scrape(
        XdsFigures(
            9,
            [
                ProxyFigure("a", "SYNCED", 9),
                ProxyFigure("b", "STALE", 6),
                ProxyFigure("c", "STALE", None),
                ProxyFigure("d", "NACKED", 8),
            ],
        )
    )
    assert sample(samples, "turnout_revision") == 9
    assert sample(samples, "turnout_xds_proxies", status="SYNCED") == 1
    assert sample(samples, "turnout_xds_proxies", status="STALE") == 2
    assert sample(samples, "turnout_xds_proxies", status="NACKED") == 1
    lags = {
        dict(labels)["node"]: value
        for (name, labels), value in samples.items()
        if name == "turnout_xds_proxy_lag_revisions"
    }
    # c has held no snapshot yet: no lag to tell.
    assert lags == {"a": 0, "b": 3, "d": 1}


def test_before_the_state_is_loaded_there_is_no_revision_and_no_lag() -> None:
    samples = _scrape(XdsFigures(None, [ProxyFigure("a", "STALE", None)]))
    names = {name for name, _ in samples}
    assert "turnout_revision" not in names
    assert "turnout_xds_proxy_lag_revisions" not in names
    assert sample(samples, "turnout_xds_proxies", status="STALE") == 1
    assert sample(samples, "turnout_xds_proxies", status="SYNCED") == 0


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("SELECT config_head.revision FROM config_head", "select"),
        ("  select 1", "select"),
        ("INSERT INTO audit_events (id) VALUES ($1)", "insert"),
        ("UPDATE config_head SET revision=config_head.revision + $1", "update"),
        ("DELETE FROM idempotency_records", "delete"),
        ("BEGIN IMMEDIATE", "other"),
        ("PRAGMA busy_timeout=5000", "other"),
        ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "other"),
        ("SELECTED", "select"),  # the verb decides; no statement starts like this
        ("", "other"),
    ],
)
def test_a_statement_is_labelled_by_its_verb(statement: str, operation: str) -> None:
    assert statement_operation(statement) == operation


def test_unknown_http_methods_share_one_label() -> None:
    metrics = ControlPlaneMetrics()
    metrics.observe_request("BREW", "unmatched", 405, 0.001)
    metrics.observe_request("GET", "/healthz", 200, 0.001)
    samples = parse_metrics(metrics.exposition().decode())
    total = "turnout_api_requests_total"
    assert sample(samples, total, method="other", route="unmatched", status="405") == 1
    assert sample(samples, total, method="GET", route="/healthz", status="200") == 1


def _ok() -> PlainTextResponse:
    return PlainTextResponse("ok")


ROUTES = [
    Route("/v1/models/{model}", _ok, methods=["GET"]),
    Route("/v1/models", _ok, methods=["POST"]),
]


def _scope(method: str, path: str) -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


def test_a_request_is_labelled_by_its_route_template_never_its_path() -> None:
    routed = {**_scope("GET", "/v1/models/m"), "route": ROUTES[0]}
    assert route_template(routed, []) == "/v1/models/{model}"
    # Answered before routing: matched here, in full or but for the method.
    assert route_template(_scope("GET", "/v1/models/m"), ROUTES) == "/v1/models/{model}"
    assert route_template(_scope("DELETE", "/v1/models"), ROUTES) == "/v1/models"
    assert route_template(_scope("GET", "/v1/other/m"), ROUTES) == UNMATCHED


# --- a proxy's overall status, and what streams report ---------------------------------


@dataclass
class _Sent:
    revision: int
    types: list[str]
    variant: str
    update: bool


class _Feedback:
    """Feedback that keeps what streams report of their pushes."""

    def __init__(self) -> None:
        self.pushes: list[_Sent] = []

    def accepted(self, snapshot: Snapshot) -> None:
        pass

    def rejected(self, snapshot: Snapshot | None, type_url: str, error: str, node: str) -> None:
        pass

    def sent(
        self, snapshot: Snapshot, type_urls: Sequence[str], variant: str, *, update: bool
    ) -> None:
        self.pushes.append(_Sent(snapshot.revision, list(type_urls), variant, update))


@pytest.fixture
async def watched() -> AsyncIterator[tuple[Stream, _Feedback]]:
    cache = SnapshotCache()
    feedback = _Feedback()
    cache.observe(feedback)
    opened = Stream(cache)
    try:
        yield opened, feedback
    finally:
        if not opened.task.done():
            opened.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opened.task


async def test_every_push_is_reported_and_only_a_held_proxys_as_an_update(
    watched: tuple[Stream, _Feedback],
) -> None:
    stream, feedback = watched
    first = _snapshot(1, ONE_VERSION)
    await stream.cache.publish(first)
    await _sync_all(stream, first)
    await stream.until(lambda: stream.connection.held_revision == 1)
    # A new stream's first config: every type once, none of it an update.
    assert sorted([t for push in feedback.pushes for t in push.types]) == sorted(PUSH_ORDER)
    assert {(s.revision, s.variant, s.update) for s in feedback.pushes} == {(1, "sotw", False)}

    feedback.pushes.clear()
    await stream.cache.publish(_snapshot(2, TWO_VERSIONS))
    await stream.next(CLUSTER)
    # Endpoints go out with the clusters (an updated cluster warms until they come).
    assert feedback.pushes[0] == _Sent(2, [CLUSTER, ENDPOINT], "sotw", True)
    assert stream.connection.held_revision == 1  # not yet: clusters are in flight


async def test_a_proxy_is_nacked_when_any_type_is_and_stale_until_it_holds_all(
    watched: tuple[Stream, _Feedback],
) -> None:
    stream, _ = watched
    first = _snapshot(1, ONE_VERSION)
    await stream.cache.publish(first)
    assert ProxyRegistry.overall(stream.connection, first) is SyncStatus.STALE
    responses = await _sync_all(stream, first)
    assert ProxyRegistry.overall(stream.connection, first) is SyncStatus.SYNCED

    second = _snapshot(2, TWO_VERSIONS)
    await stream.cache.publish(second)
    clusters = await stream.next(CLUSTER)
    assert ProxyRegistry.overall(stream.connection, second) is SyncStatus.STALE
    stream.send(_nack(clusters, responses[CLUSTER].version_info))
    await stream.until(lambda: stream.state(CLUSTER).nacked_version is not None)
    assert ProxyRegistry.overall(stream.connection, second) is SyncStatus.NACKED


def test_a_reconnected_proxy_counts_once_at_its_newest_stream() -> None:
    registry = ProxyRegistry()
    old, unnamed, new, other = (registry.connect() for _ in range(4))
    old.node_id = new.node_id = "edge-1"
    other.node_id = "edge-2"
    assert [c.stream_id for c in registry.latest()] == [new.stream_id, other.stream_id]
    assert unnamed not in registry.latest()
