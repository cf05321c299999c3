"""Canary rollouts, the pure part: spec rules, gate maths, state machine, JSON."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given

from controlplane.domain.errors import Conflict, InvalidInput
from controlplane.domain.rollouts import (
    Gate,
    GateResult,
    RolloutAction,
    RolloutSpec,
    RolloutState,
    Step,
    Verdict,
    VersionFigures,
    check_spec,
    decide,
    evaluate_gate,
    evaluate_gates,
    gate_results_document,
    gate_results_from_document,
    next_state,
    spec_document,
    spec_from_document,
    step_weights,
)
from controlplane.domain.statistics import LATENCY_BUCKETS_MS
from controlplane.services.rollout_driver import window_figures
from tests.strategies import gate_results, rollout_specs

WEIGHTS = {"v1": 100, "v2": 0}


def _doc(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "candidate": "v2",
        "steps": [{"weight": 5, "hold_s": 60}, {"weight": 50, "hold_s": 60}, {"weight": 100}],
        "gates": [
            {"metric": "error_rate", "max": 0.01},
            {"metric": "p99_ms", "max_ratio_to_baseline": 1.25},
        ],
        "min_requests": 100,
    }
    document.update(changes)
    return document


def _codes(document: dict[str, Any], weights: dict[str, int] = WEIGHTS) -> list[str]:
    with pytest.raises(InvalidInput) as raised:
        check_spec(spec_from_document(document, baseline="v1"), weights)
    return [p["code"] for p in raised.value.detail["errors"]]


def test_a_good_spec_passes_and_the_baseline_defaults() -> None:
    spec = spec_from_document(_doc(), baseline="v1")
    check_spec(spec, WEIGHTS)
    assert spec.baseline == "v1"
    assert step_weights(spec, 0) == {"v2": 5, "v1": 95}
    assert step_weights(spec, 2) == {"v2": 100, "v1": 0}


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"candidate": "v9"}, "unknown_version"),
        ({"baseline": "v9"}, "unknown_version"),
        ({"candidate": "v1"}, "candidate_is_baseline"),
        ({"steps": [{"weight": 50}, {"weight": 20}, {"weight": 100}]}, "weights_not_increasing"),
        ({"steps": [{"weight": 5}, {"weight": 5}, {"weight": 100}]}, "weights_not_increasing"),
        ({"steps": [{"weight": 0}, {"weight": 100}]}, "weight_out_of_range"),
        ({"steps": [{"weight": 5}, {"weight": 101}]}, "weight_out_of_range"),
        ({"steps": [{"weight": 5}, {"weight": 50}]}, "last_step_not_100"),
        ({"gates": [{"metric": "p95_ms", "max": 1}]}, "unknown_metric"),
        ({"gates": [{"metric": "p99_ms"}]}, "gate_threshold"),
        ({"gates": [{"metric": "p99_ms", "max": 1, "max_ratio_to_baseline": 2}]}, "gate_threshold"),
        ({"gates": [{"metric": "shadow_agreement", "max": 0.5}]}, "gate_threshold"),
        ({"gates": [{"metric": "error_rate", "max": 5}]}, "gate_threshold"),
        ({"steps": []}, "required"),
        ({"min_requests": 0}, "invalid"),
        ({"on_failure": "pause"}, "invalid"),
        ({"extra": 1}, "unknown_field"),
    ],
)
def test_bad_specs_are_refused_with_a_code(changes: dict[str, Any], code: str) -> None:
    assert code in _codes(_doc(**changes))


def test_a_third_version_with_traffic_is_refused() -> None:
    assert _codes(_doc(), {"v1": 90, "v2": 0, "v3": 10}) == ["other_versions_have_traffic"]


def test_every_problem_is_reported_at_once() -> None:
    codes = _codes(_doc(candidate="v1", steps=[{"weight": 50}, {"weight": 20}]))
    assert {"candidate_is_baseline", "weights_not_increasing", "last_step_not_100"} <= set(codes)


def _figures(requests: int, errors: int = 0, p99: float | None = 10.0) -> VersionFigures:
    return VersionFigures(
        requests=requests,
        errors=errors,
        latency_samples=requests,
        latency_ms={"p50": p99, "p90": p99, "p99": p99},
    )


def test_a_gate_without_enough_samples_is_pending_never_failed() -> None:
    gate = Gate("error_rate", max=0.01)
    bad = _figures(99, errors=50)
    assert evaluate_gate(gate, bad, bad, min_requests=100).verdict == Verdict.PENDING
    result = evaluate_gate(gate, _figures(100, errors=2), bad, min_requests=100)
    assert (result.verdict, result.value, result.samples) == (Verdict.FAIL, 0.02, 100)
    assert evaluate_gate(gate, _figures(100, 1), bad, min_requests=100).verdict == Verdict.PASS
    # The gate's own minimum overrides the rollout's.
    own = Gate("error_rate", max=0.01, min_samples=10)
    assert evaluate_gate(own, _figures(10, 5), bad, min_requests=100).verdict == Verdict.FAIL


def test_a_ratio_gate_compares_with_the_baseline_and_needs_samples_on_both_sides() -> None:
    gate = Gate("p99_ms", max_ratio_to_baseline=1.25)
    slow, fast = _figures(200, p99=250.0), _figures(200, p99=50.0)
    result = evaluate_gate(gate, slow, fast, min_requests=100)
    assert (result.verdict, result.value, result.baseline_value) == (Verdict.FAIL, 5.0, 50.0)
    assert evaluate_gate(gate, fast, slow, min_requests=100).verdict == Verdict.PASS
    assert evaluate_gate(gate, slow, _figures(10), min_requests=100).verdict == Verdict.PENDING
    # A baseline of 0: equal is a ratio of 1, anything more is infinitely worse.
    none = VersionFigures(requests=500)
    errors = Gate("error_rate", max_ratio_to_baseline=2)
    assert evaluate_gate(errors, none, none, min_requests=1).value == 1.0
    worse = evaluate_gate(errors, _figures(500, 1), none, min_requests=1)
    assert (worse.verdict, worse.value) == (Verdict.FAIL, math.inf)


def test_min_gates_and_success_rate() -> None:
    gate = Gate("success_rate", min=0.99)
    assert evaluate_gate(gate, _figures(100, 2), _figures(0), min_requests=1).verdict == "fail"
    assert evaluate_gate(gate, _figures(100, 1), _figures(0), min_requests=1).verdict == "pass"


def test_the_shadow_gate_applies_to_the_first_step_only() -> None:
    spec = spec_from_document(
        _doc(gates=[{"metric": "shadow_agreement", "min": 0.99, "min_samples": 10}]), baseline="v1"
    )
    figures = _figures(500)
    (pending,) = evaluate_gates(spec, 0, figures, figures, None)
    assert pending.verdict == Verdict.PENDING
    (failed,) = evaluate_gates(spec, 0, figures, figures, (0.9, 50))
    assert failed.verdict == Verdict.FAIL
    assert evaluate_gates(spec, 1, figures, figures, None) == ()


def _spec() -> RolloutSpec:
    return RolloutSpec(
        candidate="v2",
        baseline="v1",
        steps=(Step(5, 10), Step(50, 10), Step(100)),
        gates=(Gate("error_rate", max=0.01),),
        min_requests=100,
    )


def test_decide_waits_advances_and_rolls_back_at_once() -> None:
    spec = _spec()
    good, few = _figures(150), _figures(50)
    results = evaluate_gates(spec, 0, good, good)
    assert decide(spec, 0, 5, good, results).action == "wait"  # holding
    assert decide(spec, 0, 11, good, results).action == "advance"
    few_results = evaluate_gates(spec, 0, few, good)
    assert decide(spec, 0, 11, few, few_results).action == "wait"  # min_requests
    bad = _figures(150, errors=15)
    failing = decide(spec, 0, 1, bad, evaluate_gates(spec, 0, bad, good))
    # A failing gate acts before the hold time is over.
    assert failing.action == "rollback"
    assert failing.reason is not None and "error_rate<=0.01" in failing.reason


def test_state_machine() -> None:
    progressing, paused = RolloutState.PROGRESSING, RolloutState.PAUSED
    assert next_state(progressing, RolloutAction.ADVANCE, 0, 3) == (progressing, 1)
    assert next_state(progressing, RolloutAction.ADVANCE, 1, 3) == (RolloutState.PROMOTED, 2)
    assert next_state(progressing, RolloutAction.PAUSE, 1, 3) == (paused, 1)
    assert next_state(paused, RolloutAction.RESUME, 1, 3) == (progressing, 1)
    assert next_state(paused, RolloutAction.PROMOTE, 0, 3) == (RolloutState.PROMOTED, 2)
    assert next_state(progressing, RolloutAction.ABORT, 1, 3) == (RolloutState.ABORTED, 1)
    assert next_state(progressing, RolloutAction.ROLLBACK, 0, 3) == (RolloutState.ROLLED_BACK, 0)
    for state, action in [
        (paused, RolloutAction.ADVANCE),
        (paused, RolloutAction.PAUSE),
        (progressing, RolloutAction.RESUME),
        (RolloutState.PROMOTED, RolloutAction.ABORT),
        (RolloutState.ROLLED_BACK, RolloutAction.RESUME),
        (RolloutState.ABORTED, RolloutAction.PROMOTE),
    ]:
        with pytest.raises(Conflict):
            next_state(state, action, 0, 3)


@given(rollout_specs())
def test_spec_json_round_trip(spec: RolloutSpec) -> None:
    assert spec_from_document(spec_document(spec)) == spec


@given(gate_results())
def test_gate_results_json_round_trip(results: tuple[GateResult, ...]) -> None:
    assert gate_results_from_document(gate_results_document(results)) == results


T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _row(replica: str, version: str, s: float, requests: int, errors: int = 0) -> Any:
    latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)  # the last one is +Inf
    latency[LATENCY_BUCKETS_MS.index(20)] = requests  # (10, 20] ms
    return (replica, version, T0 + timedelta(seconds=s), requests, errors, latency)


def test_window_figures_sum_replicas_from_their_base_at_the_step_start() -> None:
    rows = [
        _row("a", "v2", -5, 1000, 10),  # before the step: the base
        _row("a", "v2", -1, 1100, 10),  # the last row before: the base
        _row("a", "v2", 3, 1300, 30),
        _row("b", "v2", 2, 40, 0),  # b began publishing in the window: its first row is the base
        _row("b", "v2", 4, 90, 5),
        _row("a", "v1", -1, 500),
        _row("a", "v1", 4, 800),
    ]
    figures = window_figures(rows, T0)
    assert (figures["v2"].requests, figures["v2"].errors) == (200 + 50, 20 + 5)
    assert figures["v1"].requests == 300
    assert figures["v2"].latency_samples == 250
    p99 = figures["v2"].latency_ms["p99"]
    assert p99 is not None and 10 <= p99 <= 20
