"""The data-plane series of /metrics: written straight to the text format, the
same figures as the window's, and served from a copy renewed off the request path."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from controlplane.domain.statistics import LATENCY_BUCKETS_MS
from controlplane.telemetry.exposition import DataPlaneExposition, render
from controlplane.telemetry.window import Proxy, TrafficWindow
from controlplane.telemetry.wire import read
from tests.support import Samples, eventually, parse_metrics
from tests.unit.test_traffic_wire import MODEL, Clock, _flush, _state


def _window() -> TrafficWindow:
    state = _state()
    return TrafficWindow(lambda: state, retention_s=60, slot_s=5, clock=Clock())


def _labels(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def test_text_carries_the_window_figures_per_version_and_zone() -> None:
    window = _window()
    window.ingest_flush(
        Proxy(1, "a", "z-1"), read(_flush(v1_ok=7, v1_fail=2, active=3, samples=[4, 60]))
    )
    window.ingest_flush(Proxy(2, "b", 'odd"zone\\'), read(_flush(v1_ok=1, samples=[300])))
    text = render(window).decode()
    # Every line is well formed: the reference parser reads all of it.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["turnout_model_upstream_latency_seconds"].type == "histogram"
    assert families["turnout_model_requests"].type == "counter"
    samples: Samples = parse_metrics(text)
    v1 = {"model": MODEL, "version": "v1"}
    assert samples[("turnout_model_requests_total", _labels(**v1, zone="z-1"))] == 9
    assert samples[("turnout_model_responses_total", _labels(**v1, zone="z-1", code="500"))] == 2
    assert samples[("turnout_model_active_requests", _labels(**v1, zone="z-1"))] == 3
    assert samples[("turnout_model_requests_total", _labels(**v1, zone='odd"zone\\'))] == 1
    latency = "turnout_model_upstream_latency_seconds"
    assert samples[(latency + "_count", _labels(**v1, zone="z-1"))] == 2
    assert (
        samples[(latency + "_sum", _labels(**v1, zone="z-1"))]
        == window.series_totals((MODEL, "v1", "z-1"))[0].sums["latency"] * 0.001
    )
    buckets = {
        dict(labels)["le"]: value
        for (name, labels), value in samples.items()
        if name == latency + "_bucket" and dict(labels)["zone"] == "z-1"
    }
    assert len(buckets) == len(LATENCY_BUCKETS_MS) + 1
    assert buckets["+Inf"] == 2
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert samples[("turnout_stats_flushes_total", frozenset())] == 2


async def test_scrape_is_served_the_copy_while_a_task_renews_it() -> None:
    window = _window()
    exposition = DataPlaneExposition(window, max_age_s=0.05)
    try:
        window.ingest_flush(Proxy(1, "a", ""), read(_flush(v1_ok=1)))
        first = await exposition.text()
        assert exposition.renders == 1
        key = ("turnout_model_requests_total", _labels(model=MODEL, version="v1", zone=""))
        assert parse_metrics(first.decode())[key] == 1
        window.ingest_flush(Proxy(1, "a", ""), read(_flush(v1_ok=4)))
        # The copy, not a new text: the scrape neither waited for nor wrote one.
        assert await exposition.text() is first
        assert exposition.renders == 1

        async def renewed() -> bytes | None:
            text = await exposition.text()
            return text if parse_metrics(text.decode())[key] == 5 else None

        await eventually(renewed, timeout=10, interval=0.01)
        assert exposition.renders >= 2
    finally:
        await exposition.close()


async def test_zero_max_age_writes_every_scrape() -> None:
    window = _window()
    exposition = DataPlaneExposition(window, max_age_s=0)
    window.ingest_flush(Proxy(1, "a", ""), read(_flush(v1_ok=1)))
    await exposition.text()
    window.ingest_flush(Proxy(1, "a", ""), read(_flush(v1_ok=2)))
    key = ("turnout_model_requests_total", _labels(model=MODEL, version="v1", zone=""))
    assert parse_metrics((await exposition.text()).decode())[key] == 3
    assert exposition.renders == 2
