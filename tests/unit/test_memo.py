"""The translator's memo: results are reused while used, and forgotten after."""

from __future__ import annotations

import pytest

from controlplane.xds.memo import memoised


def test_a_result_is_computed_once_and_forgotten_two_rotations_after_its_last_use() -> None:
    calls: list[int] = []

    @memoised
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert (square(3), square(3)) == (9, 9)
    assert calls == [3]
    square.rotate()
    assert square(3) == 9  # used in the previous generation: kept
    assert calls == [3]
    square.rotate()
    square.rotate()  # not used in the last generation: gone
    assert square(3) == 9
    assert calls == [3, 3]
    assert len(square) == 1


def test_keyword_arguments_are_refused() -> None:
    @memoised
    def double(x: int) -> int:
        return 2 * x

    with pytest.raises(TypeError):
        double(x=1)


def test_translation_memo_stays_bounded_by_the_working_set() -> None:
    from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
    from controlplane.xds import packed

    packed.clear_caches()
    for port in range(8000, 8050):
        model = ModelSpec("m", "http", (VersionSpec("v1", (EndpointSpec("10.0.0.1", port),)),))
        packed.rotate_caches()
        packed.translate_packed(DesiredState(1, (model,)))
    # One model, one version: at most two generations of one of each resource.
    assert len(packed._assignment) <= 2
    assert len(packed._cluster) <= 2
    assert len(packed._model_routes) <= 2
