"""The translator's memo: results are reused while used, forgotten after, and
owned by the object that uses them (no module-level memo, no identity keys)."""

from __future__ import annotations

import copy

import pytest

from controlplane.domain.state import (
    DesiredState,
    EndpointSpec,
    ModelSpec,
    TenantSpec,
    VersionSpec,
)
from controlplane.xds.memo import Memoised
from controlplane.xds.packed import PackedTranslator
from controlplane.xds.resources import CLUSTER, PUSH_ORDER, ROUTE
from controlplane.xds.snapshot import Snapshot
from tests.strategies import TEST_JWKS


def _state(port: int = 8000) -> DesiredState:
    version = VersionSpec("v1", (EndpointSpec("10.0.0.1", port, zone="a"),))
    model = ModelSpec("m", "http", (version,), (("v1", 100),))
    tenant = TenantSpec("acme", "tn_1", models=("m",), revoked=("jti-1",))
    return DesiredState(1, (model,), (tenant,), TEST_JWKS)


def test_a_result_is_computed_once_and_forgotten_two_rotations_after_its_last_use() -> None:
    calls: list[int] = []

    def square(x: int) -> int:
        calls.append(x)
        return x * x

    memo = Memoised(square)
    assert (memo(3), memo(3)) == (9, 9)
    assert calls == [3]
    memo.rotate()
    assert memo(3) == 9  # used in the previous generation: kept
    assert calls == [3]
    memo.rotate()
    memo.rotate()  # not used in the last generation: gone
    assert memo(3) == 9
    assert calls == [3, 3]
    assert len(memo) == 1


def test_keyword_arguments_are_refused() -> None:
    memo = Memoised(lambda x: 2 * x)
    with pytest.raises(TypeError):
        memo(x=1)


def test_translation_memo_stays_bounded_by_the_working_set() -> None:
    translator = PackedTranslator()
    for port in range(8000, 8050):
        translator.rotate()
        translator.translate(_state(port))
    # One model, one version, one listener: at most two generations of each.
    assert all(size <= 2 for size in translator.memo_sizes().values())
    assert translator.memo_sizes()["assignments"] == 2


def test_an_equal_state_built_anew_is_served_from_the_memo() -> None:
    translator = PackedTranslator()
    first = translator.translate(_state())
    sizes = translator.memo_sizes()
    again = translator.translate(copy.deepcopy(_state()))
    assert translator.memo_sizes() == sizes
    for type_url in PUSH_ORDER:
        for name, (packed, _) in first[type_url].items():
            if type_url != ROUTE:  # the route configuration is put together anew
                assert again[type_url][name][0] is packed


def test_translators_share_nothing() -> None:
    used = PackedTranslator()
    used.translate(_state())
    fresh = PackedTranslator()
    assert set(fresh.memo_sizes().values()) == {0}
    assert set(used.memo_sizes().values()) == {1}


def test_a_snapshot_keeps_its_own_set_of_names() -> None:
    resources = PackedTranslator().translate(_state())
    one, other = Snapshot.from_packed(1, resources), Snapshot.from_packed(1, resources)
    assert one.names(CLUSTER) == frozenset({"m/v1"})
    assert one.names(CLUSTER) is one.names(CLUSTER)  # one shared set per snapshot
    assert one.shared(CLUSTER, frozenset({"m/v1"})) is one.names(CLUSTER)
    assert other.names(CLUSTER) is not one.names(CLUSTER)
