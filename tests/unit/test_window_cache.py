"""Answers computed from the traffic window are kept for at most max_age_s and
never across a slot boundary."""

from __future__ import annotations

from controlplane.domain.state import DesiredState
from controlplane.telemetry.cache import WindowCache
from controlplane.telemetry.window import TrafficWindow
from tests.unit.test_traffic_wire import Clock


def _cache(clock: Clock, max_age_s: float) -> tuple[WindowCache, list[int]]:
    state = DesiredState(revision=1, models=())
    window = TrafficWindow(lambda: state, retention_s=60, slot_s=5, clock=clock)
    calls: list[int] = []
    return WindowCache(window, max_age_s), calls


def _compute(calls: list[int]) -> bytes:
    calls.append(1)
    return str(len(calls)).encode()


def test_copy_lasts_until_the_slot_ends_or_max_age() -> None:
    clock = Clock()  # 1000.0: the start of a 5-second slot
    cache, calls = _cache(clock, max_age_s=3)
    assert cache.get("a", lambda: _compute(calls)) == b"1"
    clock.now += 2.9
    assert cache.get("a", lambda: _compute(calls)) == b"1"
    assert cache.get("b", lambda: _compute(calls)) == b"2"  # another key, its own copy
    clock.now += 0.2  # 3.1 s old
    assert cache.get("a", lambda: _compute(calls)) == b"3"
    clock.now = 1004.9
    assert cache.get("a", lambda: _compute(calls)) == b"3"
    clock.now = 1005.0  # the next slot: a fresh copy even though it is 1.9 s old
    assert cache.get("a", lambda: _compute(calls)) == b"4"
    assert cache.computed == 4


def test_zero_computes_every_call() -> None:
    clock = Clock()
    cache, calls = _cache(clock, max_age_s=0)
    assert [cache.get("a", lambda: _compute(calls)) for _ in range(3)] == [b"1", b"2", b"3"]
