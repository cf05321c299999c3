"""The traffic window: Envoy's flushes in, per-version figures out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings

from controlplane.domain.naming import cluster_name, stat_name, stat_names
from controlplane.domain.state import DesiredState, ModelSpec, VersionSpec
from controlplane.domain.statistics import LATENCY_BUCKETS_MS
from controlplane.telemetry.protocol import COUNTER, GAUGE, HISTOGRAM, StreamMetricsMessage
from controlplane.telemetry.window import Proxy, TrafficWindow, quantile
from tests.strategies import desired_states

STATE = DesiredState(
    revision=1,
    models=(
        ModelSpec(
            name="sentiment",
            protocol="http",
            versions=(VersionSpec(name="v1"), VersionSpec(name="v2.1")),
            weights=(("v1", 90), ("v2.1", 10)),
        ),
    ),
)
V1 = stat_name(cluster_name("sentiment", "v1"))
V2 = stat_name(cluster_name("sentiment", "v2.1"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def flush(
    counters: dict[str, float] = {},  # noqa: B006 - read only
    gauges: dict[str, float] = {},  # noqa: B006
    histograms: dict[str, Sequence[float]] = {},  # noqa: B006 - raw samples
    bounds: Sequence[float] = LATENCY_BUCKETS_MS,
) -> Iterable[Any]:
    """Return one flush's families, as Envoy's stat sink sends them."""
    message = StreamMetricsMessage()
    for name, value in counters.items():
        family = message.envoy_metrics.add(name=name, type=COUNTER)
        family.metric.add().counter.value = value
    for name, value in gauges.items():
        family = message.envoy_metrics.add(name=name, type=GAUGE)
        family.metric.add().gauge.value = value
    for name, samples in histograms.items():
        family = message.envoy_metrics.add(name=name, type=HISTOGRAM)
        histogram = family.metric.add().histogram
        histogram.sample_count = len(samples)
        histogram.sample_sum = sum(samples)
        for bound in bounds:
            histogram.bucket.add(
                upper_bound=bound, cumulative_count=sum(1 for s in samples if s <= bound)
            )
    # Through the wire format, as the sink receives it.
    return StreamMetricsMessage.FromString(message.SerializeToString()).envoy_metrics


def requests(stat: str, code: int, n: float) -> dict[str, float]:
    return {f"turnout.requests.cluster.{stat}.code.{code}": n}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def window(clock: Clock) -> TrafficWindow:
    return TrafficWindow(lambda: STATE, retention_s=60, slot_s=5, clock=clock)


def test_counts_per_version_and_code(window: TrafficWindow, clock: Clock) -> None:
    proxy = Proxy(1, "envoy-a", "")
    window.ingest(proxy, flush({**requests(V1, 200, 90), **requests(V2, 500, 2)}))
    clock.now += 1
    window.ingest(proxy, flush({**requests(V1, 200, 10), **requests(V2, 200, 8)}))
    figures = window.version_figures("sentiment", 30)
    v1, v2 = figures["v1"][0], figures["v2.1"][0]
    assert (v1.requests, v1.responses, v1.error_rate) == (100, {"200": 100}, 0.0)
    assert (v2.requests, v2.responses, v2.errors) == (10, {"200": 8, "500": 2}, 2)
    assert v2.error_rate == pytest.approx(0.2)
    assert v2.classes() == {"2xx": 8, "5xx": 2}
    assert window.model_figures("sentiment", 30).requests == 110


def test_counts_leave_the_window_as_it_slides(window: TrafficWindow, clock: Clock) -> None:
    proxy = Proxy(1, "envoy-a", "")
    window.ingest(proxy, flush(requests(V1, 200, 50)))
    clock.now += 20
    window.ingest(proxy, flush(requests(V1, 200, 7)))
    assert window.version_figures("sentiment", 10)["v1"][0].requests == 7
    assert window.version_figures("sentiment", 60)["v1"][0].requests == 57
    clock.now += 61
    assert window.version_figures("sentiment", 60)["v1"][0].requests == 0
    # The totals (Prometheus) keep everything since start.
    [(key, totals, _)] = list(window.totals())
    assert key == ("sentiment", "v1", "") and sum(totals.codes.values()) == 57


def test_rate_is_over_the_seconds_covered(window: TrafficWindow, clock: Clock) -> None:
    proxy = Proxy(1, "envoy-a", "")
    clock.now += 30  # the window has been filling for 30 s
    window.ingest(proxy, flush(requests(V1, 200, 300)))
    figures = window.version_figures("sentiment", 60)["v1"][0]
    assert figures.window_s == pytest.approx(30)
    assert figures.rps == pytest.approx(10)


def test_proxies_add_up_and_a_restart_neither_loses_nor_repeats(
    window: TrafficWindow, clock: Clock
) -> None:
    a, b = Proxy(1, "envoy-a", "z1"), Proxy(2, "envoy-b", "z2")
    window.ingest(a, flush(requests(V1, 200, 10), gauges={f"cluster.{V1}.upstream_rq_active": 3}))
    window.ingest(b, flush(requests(V1, 200, 5), gauges={f"cluster.{V1}.upstream_rq_active": 4}))
    total, zones = window.version_figures("sentiment", 30)["v1"]
    assert (total.requests, total.active_requests) == (15, 7)
    assert {z: f.requests for z, f in zones.items()} == {"z1": 10, "z2": 5}
    # envoy-a restarts: its stream ends, a new one starts from zero (deltas).
    window.forget(a)
    assert window.version_figures("sentiment", 30)["v1"][0].active_requests == 4
    again = Proxy(3, "envoy-a", "z1")
    clock.now += 1
    window.ingest(
        again, flush(requests(V1, 200, 2), gauges={f"cluster.{V1}.upstream_rq_active": 1})
    )
    total, zones = window.version_figures("sentiment", 30)["v1"]
    assert (total.requests, total.active_requests) == (17, 5)
    assert zones["z1"].requests == 12


def test_a_silent_proxy_stops_counting_in_the_gauges(window: TrafficWindow, clock: Clock) -> None:
    proxy = Proxy(1, "envoy-a", "")
    window.ingest(proxy, flush(gauges={f"cluster.{V1}.upstream_rq_pending_active": 6}))
    assert window.version_figures("sentiment", 30)["v1"][0].pending_requests == 6
    clock.now += 10  # more than 3 flush intervals without a report
    assert window.version_figures("sentiment", 30)["v1"][0].pending_requests == 0


def test_latency_percentiles_from_envoy_histograms(window: TrafficWindow, clock: Clock) -> None:
    proxy = Proxy(1, "envoy-a", "")
    samples = [52.0] * 60 + [55.0] * 30 + [900.0] * 10
    window.ingest(proxy, flush(histograms={f"cluster.{V1}.upstream_rq_time": samples}))
    figures = window.version_figures("sentiment", 30)["v1"][0]
    assert figures.latency_samples == 100
    assert 50 <= figures.latency_ms["p50"] <= 60  # type: ignore[operator]
    assert 750 <= figures.latency_ms["p99"] <= 1000  # type: ignore[operator]


def test_histograms_with_other_buckets_are_rebinned(window: TrafficWindow) -> None:
    proxy = Proxy(1, "envoy-a", "")
    # Envoy's default buckets (a proxy with another bootstrap).
    window.ingest(
        proxy,
        flush(
            histograms={f"cluster.{V1}.upstream_rq_time": [3.0, 7.0, 70.0]},
            bounds=(0.5, 1, 5, 10, 25, 50, 100, 250),
        ),
    )
    figures = window.version_figures("sentiment", 30)["v1"][0]
    assert figures.latency_samples == 3
    assert figures.latency_ms["p99"] is not None and figures.latency_ms["p99"] <= 100


def test_batching_figures_from_the_batcher_headers(window: TrafficWindow) -> None:
    proxy = Proxy(1, "envoy-a", "")
    window.ingest(
        proxy,
        flush(
            counters={f"turnout.shed.cluster.{V2}": 3},
            histograms={
                f"turnout.batch_size.cluster.{V2}": [8.0] * 16,
                f"turnout.queue_wait_us.cluster.{V2}": [2000.0] * 16,
            },
            bounds=(),  # rebinned below: every sample falls in +Inf, then maps on
        ),
    )
    batching = window.version_figures("sentiment", 30)["v2.1"][0].batching
    assert batching is not None
    assert batching.requests == 16 and batching.shed == 3
    assert batching.mean_batch_size == pytest.approx(8.0)


def test_tenants_by_code(window: TrafficWindow) -> None:
    proxy = Proxy(1, "envoy-a", "")
    window.ingest(
        proxy,
        flush(
            {
                "turnout.tenant_requests.tenant.acme.corp.code.200": 5,
                "turnout.tenant_requests.tenant.acme.corp.code.429": 2,
                "turnout.tenant_requests.tenant..code.401": 4,
            }
        ),
    )
    tenants = window.tenant_figures(30)
    assert tenants["acme.corp"].responses == {"200": 5, "429": 2}
    assert tenants[""].responses == {"401": 4}


def test_unknown_and_foreign_statistics_are_ignored(window: TrafficWindow) -> None:
    proxy = Proxy(1, "envoy-a", "")
    window.ingest(
        proxy,
        flush(
            {
                **requests("gone_v9", 200, 5),
                "cluster.turnout_xds.upstream_rq_retry": 1,
                "http.turnout.downstream_rq_total": 9,
                "turnout.requests.cluster.x.code.abc": 1,
            }
        ),
    )
    assert window.models() == []


def test_quantile_interpolates_inside_the_bucket() -> None:
    bounds = (10.0, 20.0, 40.0)
    assert quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(15.0)
    assert quantile(0.99, bounds, [0, 0, 0, 5]) == 40.0  # +Inf: the last bound
    assert quantile(0.5, bounds, [0, 0, 0, 0]) is None


@settings(max_examples=50, deadline=None)
@given(desired_states())
def test_stat_names_map_back_to_their_versions(state: DesiredState) -> None:
    names = stat_names(state)
    window = TrafficWindow(lambda: state, retention_s=60, slot_s=5, clock=Clock())
    proxy = Proxy(1, "envoy", "")
    for model in state.models:
        for version in model.versions:
            stat = stat_name(cluster_name(model.name, version.name))
            assert "." not in stat
            if names[stat] == (model.name, version.name):
                window.ingest(proxy, flush(requests(stat, 200, 1)))
                assert window.version_figures(model.name, 30)[version.name][0].requests >= 1
