"""The stat sink holds at most one unfolded flush per stream: a flush that
arrives before the previous one was folded is merged into it, counts exact."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from controlplane.telemetry.sink import Inbox, fold_stream
from controlplane.telemetry.window import Proxy, TrafficWindow
from controlplane.telemetry.wire import read
from tests.unit.test_traffic_wire import MODEL, Clock, _flush, _state


def _window(clock: Clock) -> TrafficWindow:
    state = _state()
    return TrafficWindow(lambda: state, retention_s=60, slot_s=5, clock=clock)


def test_merged_flush_counts_as_the_flushes_one_by_one() -> None:
    flushes = [
        _flush(v1_ok=10, v1_fail=2, active=3, samples=[4, 60, 60]),
        _flush(v1_ok=5, samples=[200]),
        _flush(v1_fail=1, active=7, samples=[2, 2]),
    ]
    one_by_one = _window(Clock())
    for data in flushes:
        one_by_one.ingest_flush(Proxy(1, "a", ""), read(data))
    inbox = Inbox()
    assert [inbox.put(read(data)) for data in flushes] == [False, True, True]
    assert inbox.merged == 2
    merged = _window(Clock())
    pending = inbox._pending
    assert pending is not None
    merged.ingest_flush(Proxy(1, "a", ""), pending)
    (expected, _), (got, _) = (
        one_by_one.version_figures(MODEL, 60)["v1"],
        merged.version_figures(MODEL, 60)["v1"],
    )
    assert got.responses == expected.responses == {"200": 15, "500": 3}
    assert got.latency_samples == expected.latency_samples == 6
    assert got.latency_ms == expected.latency_ms
    # Gauges are the latest flush's.
    assert got.active_requests == expected.active_requests == 7
    [(_, totals, _)] = list(merged.totals())
    [(_, expected_totals, _)] = list(one_by_one.totals())
    assert totals.packed == expected_totals.packed and totals.sums == expected_totals.sums


async def test_stream_faster_than_the_window_keeps_one_flush_and_loses_nothing() -> None:
    window = _window(Clock())
    sent = 50

    async def messages() -> AsyncIterator[bytes]:
        # Every message is ready at once: the reader takes them all before the
        # folder runs, as when the control plane is behind.
        for _ in range(sent):
            yield _flush(v1_ok=2, v1_fail=1, samples=[60])

    await fold_stream(window, messages(), "test")
    assert window.merged_flushes == sent - 1
    assert window.reports == 1
    v1, _ = window.version_figures(MODEL, 60)["v1"]
    assert v1.responses == {"200": 2 * sent, "500": sent}
    assert v1.latency_samples == sent


async def test_stream_error_ends_the_call_and_forgets_the_proxy() -> None:
    window = _window(Clock())

    async def messages() -> AsyncIterator[bytes]:
        yield _flush(v1_ok=1, active=2)
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        await fold_stream(window, messages(), "test")
    figures = window.model_figures(MODEL, 60)
    assert (figures.requests, figures.active_requests) == (1, 0)
