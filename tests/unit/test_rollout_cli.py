"""``turnout rollout``: what its options parse to and how a rollout is shown."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.cli.rollout import UsageError, format_status, parse_gate, parse_steps


def test_steps_parse_with_holds_in_any_unit() -> None:
    assert parse_steps("5:60,25:2m,50:90s,100") == [
        {"weight": 5, "hold_s": 60.0},
        {"weight": 25, "hold_s": 120.0},
        {"weight": 50, "hold_s": 90.0},
        {"weight": 100},
    ]
    for bad in ("five:60", "5:soon", "5;60"):
        with pytest.raises(UsageError):
            parse_steps(bad)


def test_gates_parse_to_their_threshold() -> None:
    assert parse_gate("error_rate<=0.01") == {"metric": "error_rate", "max": 0.01}
    assert parse_gate("success_rate >= 0.99") == {"metric": "success_rate", "min": 0.99}
    assert parse_gate("p99_ms/baseline<=1.25") == {
        "metric": "p99_ms",
        "max_ratio_to_baseline": 1.25,
    }
    for bad in ("p99_ms<800", "p99_ms/baseline>=2", "p99_ms<=fast"):
        with pytest.raises(UsageError):
            parse_gate(bad)


def _rollout(**changes: Any) -> dict[str, Any]:
    rollout: dict[str, Any] = {
        "id": 3,
        "model": "demo",
        "state": "progressing",
        "step": 1,
        "weight": 25,
        "candidate": "v3",
        "baseline": "v1",
        "step_started_at": "2026-12-02T20:00:00Z",
        "spec": {"steps": [{"weight": 5}, {"weight": 25}, {"weight": 100}]},
        "gates": [
            {
                "metric": "p99_ms",
                "kind": "max_ratio_to_baseline",
                "threshold": 1.25,
                "value": 1.1,
                "infinite": False,
                "samples": 140,
                "min_samples": 100,
                "verdict": "pass",
            }
        ],
        "reason": None,
    }
    rollout.update(changes)
    return rollout


def test_status_shows_the_bar_the_step_and_each_gate() -> None:
    text = format_status(_rollout())
    assert "rollout 3 of demo: v1 -> v3  progressing" in text
    assert "[########----------------------]  25%  step 2/3 (5/25/100)" in text
    assert "p99_ms/baseline<=1.25" in text and "140/100 samples  pass" in text
    ended = format_status(_rollout(state="rolled_back", weight=0, reason="gate failed"))
    assert "reason: gate failed" in ended
