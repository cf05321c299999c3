"""Reading the stat sink's bytes (controlplane.telemetry.wire) and adding only what is
not zero to the traffic window (TrafficWindow.ingest_flush)."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.domain.naming import cluster_name, stat_name
from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.domain.statistics import LATENCY_BUCKETS_MS
from controlplane.telemetry.protocol import COUNTER, GAUGE, HISTOGRAM, StreamMetricsMessage
from controlplane.telemetry.window import Proxy, TrafficWindow
from controlplane.telemetry.wire import read, read_slowly

MODEL = "m"


def _state() -> DesiredState:
    versions = tuple(
        VersionSpec(name=v, endpoints=(EndpointSpec("127.0.0.1", 8000 + i, zone=None),))
        for i, v in enumerate(("v1", "v2"))
    )
    return DesiredState(
        revision=1,
        models=(ModelSpec(name=MODEL, protocol="http", versions=versions, weights=(("v1", 100),)),),
    )


def _stat(version: str) -> str:
    return stat_name(cluster_name(MODEL, version))


def _message(
    *,
    counters: dict[str, float] | None = None,
    gauges: dict[str, float] | None = None,
    latencies: dict[str, list[float]] | None = None,
) -> bytes:
    """A flush as Envoy sends it: some unrelated families first, one metric each,
    a timestamp in every metric, histograms with every bucket."""
    message: Any = StreamMetricsMessage()
    stamp = 1_800_000_000_123
    for name, kind in (("server.uptime", GAUGE), ("http.turnout.rq_total", COUNTER)):
        family = message.envoy_metrics.add(name=name, type=kind)
        metric = family.metric.add(timestamp_ms=stamp)
        (metric.gauge if kind == GAUGE else metric.counter).value = 7.0
    for name, value in (counters or {}).items():
        family = message.envoy_metrics.add(name=name, type=COUNTER)
        family.metric.add(timestamp_ms=stamp).counter.value = value
    for name, value in (gauges or {}).items():
        family = message.envoy_metrics.add(name=name, type=GAUGE)
        family.metric.add(timestamp_ms=stamp).gauge.value = value
    for name, samples in (latencies or {}).items():
        family = message.envoy_metrics.add(name=name, type=HISTOGRAM)
        histogram = family.metric.add(timestamp_ms=stamp).histogram
        histogram.sample_count = len(samples)
        histogram.sample_sum = sum(samples)
        for bound in LATENCY_BUCKETS_MS:
            histogram.bucket.add(
                cumulative_count=sum(1 for s in samples if s <= bound), upper_bound=float(bound)
            )
    data: bytes = message.SerializeToString()
    return data


def _flush(v1_ok: float = 0, v1_fail: float = 0, active: float = 0, samples: Any = ()) -> bytes:
    return _message(
        counters={
            f"turnout.requests.cluster.{_stat('v1')}.code.200": v1_ok,
            f"turnout.requests.cluster.{_stat('v1')}.code.500": v1_fail,
            f"turnout.requests.cluster.{_stat('v2')}.code.200": 0,
            f"cluster.{_stat('v1')}.upstream_rq_retry": 0,
        },
        gauges={
            f"cluster.{_stat('v1')}.upstream_rq_active": active,
            f"cluster.{_stat('v2')}.upstream_rq_active": 0,
        },
        latencies={
            f"cluster.{_stat('v1')}.upstream_rq_time": list(samples),
            f"cluster.{_stat('v2')}.upstream_rq_time": [],
        },
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def window(clock: Clock) -> TrafficWindow:
    state = _state()
    return TrafficWindow(lambda: state, retention_s=60, slot_s=5, clock=clock)


def test_reader_keeps_only_what_is_not_zero_and_agrees_with_protobuf() -> None:
    head: Any = StreamMetricsMessage()
    head.identifier.node.id = "envoy-1"
    head.identifier.node.locality.zone = "z1"
    # Serialised messages concatenate into one: the identifier, then the families.
    data = head.SerializeToString() + _flush(v1_ok=12, v1_fail=3, active=2, samples=[3, 40, 900])
    flush = read(data)
    assert flush == read_slowly(data)
    assert (flush.node_id, flush.zone) == ("envoy-1", "z1")
    assert flush.counters == {
        "http.turnout.rq_total": 7.0,
        f"turnout.requests.cluster.{_stat('v1')}.code.200": 12.0,
        f"turnout.requests.cluster.{_stat('v1')}.code.500": 3.0,
    }
    assert flush.gauges == {"server.uptime": 7.0, f"cluster.{_stat('v1')}.upstream_rq_active": 2.0}
    [(name, (bounds, cumulative, count, total))] = flush.histograms.items()
    assert name == f"cluster.{_stat('v1')}.upstream_rq_time"
    assert bounds == tuple(float(b) for b in LATENCY_BUCKETS_MS)
    assert (count, total, cumulative[-1], cumulative[2]) == (3, 943.0, 3, 1)


def test_reader_needs_no_timestamps() -> None:
    message: Any = StreamMetricsMessage()
    family = message.envoy_metrics.add(
        name=f"cluster.{_stat('v1')}.upstream_rq_time", type=HISTOGRAM
    )
    histogram = family.metric.add().histogram
    histogram.sample_count, histogram.sample_sum = 2, 7.0
    for bound in LATENCY_BUCKETS_MS:
        histogram.bucket.add(cumulative_count=2 if bound >= 5 else 0, upper_bound=float(bound))
    family = message.envoy_metrics.add(
        name=f"turnout.requests.cluster.{_stat('v1')}.code.200", type=COUNTER
    )
    family.metric.add().counter.value = 2
    data = message.SerializeToString()
    assert read(data) == read_slowly(data)
    assert len(read(data).histograms) == 1 and len(read(data).counters) == 1


def test_reader_handles_large_varints_and_a_flush_of_zeros() -> None:
    many = list(range(1, 400)) * 2  # sample_count and cumulative counts over 127
    data = _flush(v1_ok=1e9, samples=many)
    assert read(data) == read_slowly(data)
    idle = read(_flush())
    assert (idle.node_id, idle.histograms) == (None, {})
    assert not any("cluster" in name for name in [*idle.counters, *idle.gauges])


def test_window_sums_flushes_and_skips_zeros(window: TrafficWindow) -> None:
    proxy = Proxy(1, "envoy-1", "")
    window.ingest_flush(proxy, read(_flush(v1_ok=10, v1_fail=2, active=3, samples=[60] * 4)))
    window.ingest_flush(proxy, read(_flush(v1_ok=5)))
    figures = window.version_figures(MODEL, 60)
    v1, _ = figures["v1"]
    assert (v1.requests, v1.responses, v1.errors) == (17, {"200": 15, "500": 2}, 2)
    assert v1.latency_samples == 4 and v1.latency_ms["p50"] == pytest.approx(55.0)
    # The second flush carried no gauge: the proxy has nothing in flight any more.
    assert v1.active_requests == 0
    # v2 sent only zeros: no series was made for it.
    assert "v2" not in figures
    assert window.reports == 2


def test_gauges_follow_the_latest_flush_and_go_with_the_proxy(window: TrafficWindow) -> None:
    first, second = Proxy(1, "a", ""), Proxy(2, "b", "")
    window.ingest_flush(first, read(_flush(active=3)))
    window.ingest_flush(second, read(_flush(active=4)))
    assert window.model_figures(MODEL, 60).active_requests == 7
    window.forget(first)
    assert window.model_figures(MODEL, 60).active_requests == 4
    window.ingest_flush(second, read(_flush(v1_ok=1)))
    assert window.model_figures(MODEL, 60).active_requests == 0


def test_restarted_proxy_adds_to_its_past_counts(window: TrafficWindow, clock: Clock) -> None:
    # Counters are deltas: a proxy's new stream after a restart starts from zero.
    before, after = Proxy(1, "a", ""), Proxy(2, "a", "")
    window.ingest_flush(before, read(_flush(v1_ok=10)))
    window.forget(before)
    clock.now += 6
    window.ingest_flush(after, read(_flush(v1_ok=4)))
    assert window.model_figures(MODEL, 60).requests == 14
    assert window.model_figures(MODEL, 5).requests == 4
    [(_, totals, _)] = list(window.totals())
    assert sum(totals.codes.values()) == 14


def test_decoded_families_count_as_the_bytes_do(clock: Clock) -> None:
    state = _state()
    data = _flush(v1_ok=9, v1_fail=1, active=1, samples=[2, 30])
    by_bytes = TrafficWindow(lambda: state, clock=clock)
    by_bytes.ingest_flush(Proxy(1, "a", ""), read(data))
    by_messages = TrafficWindow(lambda: state, clock=clock)
    message: Any = StreamMetricsMessage.FromString(data)
    by_messages.ingest(Proxy(1, "a", ""), message.envoy_metrics)
    assert by_bytes.version_figures(MODEL, 60) == by_messages.version_figures(MODEL, 60)


def test_totals_keep_what_left_the_window(window: TrafficWindow, clock: Clock) -> None:
    proxy = Proxy(1, "a", "")
    for _ in range(20):  # 20 slots of 5 s: the window (60 s) holds the last 12
        window.ingest_flush(proxy, read(_flush(v1_ok=3, v1_fail=1, samples=[60])))
        clock.now += 5
    assert window.model_figures(MODEL, 60).requests < 80
    [(_, totals, _)] = list(window.totals())
    assert totals.codes == {200: 60.0, 500: 20.0}
    assert sum(totals.histograms["latency"]) == 20
