"""The cache of recently verified keys: bounded in time and in size."""

from __future__ import annotations

from controlplane.domain.keys import Principal, Role
from controlplane.services.keys import VerifiedKeys

ALICE = Principal(key_id=1, name="alice", role=Role.VIEWER)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_vouched_for_until_its_ttl_passes() -> None:
    clock = Clock()
    keys = VerifiedKeys(60.0, clock=clock)
    assert keys.recent("h1") is None
    keys.remember("h1", ALICE)
    clock.now += 60.0
    assert keys.recent("h1") == ALICE
    clock.now += 0.001
    assert keys.recent("h1") is None
    assert keys.recent("h1") is None  # and it is gone, not only stale


def test_forget_drops_a_key_at_once() -> None:
    keys = VerifiedKeys(60.0, clock=Clock())
    keys.remember("h1", ALICE)
    keys.forget("h1")
    assert keys.recent("h1") is None


def test_the_least_recently_verified_key_goes_first() -> None:
    keys = VerifiedKeys(60.0, capacity=2, clock=Clock())
    keys.remember("h1", ALICE)
    keys.remember("h2", ALICE)
    keys.remember("h1", ALICE)  # verified again: now the newest
    keys.remember("h3", ALICE)
    assert keys.recent("h2") is None
    assert keys.recent("h1") == ALICE
    assert keys.recent("h3") == ALICE
