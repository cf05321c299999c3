"""Canary rollouts: the spec, its rules, the state machine and the gate maths.

Pure values and functions: no I/O, no clock. The service stores a rollout,
the driver feeds :func:`evaluate_gates` and :func:`decide` the figures of the
candidate and the baseline over the current step's window, and applies what
they say.

Weights: at step ``k`` the candidate gets the step's weight and the baseline
the rest; every other version of the model has 0 (a rollout is refused while
another version has traffic, see :func:`check_spec`).

A gate judges one metric of the candidate, alone (``max`` / ``min``) or
against the baseline in the same window (``max_ratio_to_baseline``). Until it
has its minimum number of samples it is *pending*: it neither passes nor
fails. One gate that fails with enough samples rolls the rollout back at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from controlplane.domain.errors import Conflict, InvalidInput

__all__ = [
    "METRICS",
    "Decision",
    "Gate",
    "GateResult",
    "RolloutAction",
    "RolloutSpec",
    "RolloutState",
    "Step",
    "Verdict",
    "VersionFigures",
    "check_spec",
    "decide",
    "evaluate_gate",
    "evaluate_gates",
    "gate_results_document",
    "gate_results_from_document",
    "next_state",
    "spec_document",
    "spec_from_document",
    "step_weights",
]

TOTAL_WEIGHT: Final = 100
# What a gate may judge. Rates are fractions (0..1); latencies milliseconds.
METRICS: Final = (
    "error_rate",
    "success_rate",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "shadow_agreement",
)
_LATENCY: Final = {"p50_ms": "p50_ms", "p90_ms": "p90_ms", "p99_ms": "p99_ms"}
_THRESHOLDS: Final = ("max", "min", "max_ratio_to_baseline")
SHADOW_METRIC: Final = "shadow_agreement"
DEFAULT_MIN_REQUESTS: Final = 100
MAX_STEPS: Final = 20
MAX_GATES: Final = 20
MAX_HOLD_S: Final = 7 * 24 * 3600.0


class RolloutState(StrEnum):
    """Where a rollout is. ``progressing`` and ``paused`` are active; the rest ended."""

    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def active(self) -> bool:
        return self in (RolloutState.PROGRESSING, RolloutState.PAUSED)


class RolloutAction(StrEnum):
    """What moves a rollout from one state to another."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    PROMOTE = "promote"
    ADVANCE = "advance"  # the driver: the step passed
    ROLLBACK = "rollback"  # the driver: a gate failed


_MOVES: Final[dict[tuple[RolloutState, RolloutAction], RolloutState]] = {
    (RolloutState.PROGRESSING, RolloutAction.PAUSE): RolloutState.PAUSED,
    (RolloutState.PAUSED, RolloutAction.RESUME): RolloutState.PROGRESSING,
    (RolloutState.PROGRESSING, RolloutAction.ABORT): RolloutState.ABORTED,
    (RolloutState.PAUSED, RolloutAction.ABORT): RolloutState.ABORTED,
    (RolloutState.PROGRESSING, RolloutAction.PROMOTE): RolloutState.PROMOTED,
    (RolloutState.PAUSED, RolloutAction.PROMOTE): RolloutState.PROMOTED,
    (RolloutState.PROGRESSING, RolloutAction.ADVANCE): RolloutState.PROGRESSING,
    (RolloutState.PROGRESSING, RolloutAction.ROLLBACK): RolloutState.ROLLED_BACK,
}


def next_state(
    state: RolloutState, action: RolloutAction, step: int, steps: int
) -> tuple[RolloutState, int]:
    """Return (state, step) after ``action`` at ``step`` of ``steps``; raise
    Conflict (code ``rollout_state``) when the action does not apply.

    Advancing from the next-to-last step reaches the last one (weight 100): the
    rollout is promoted. Promoting jumps to the last step; abort and rollback
    keep the step they happened at."""
    target = _MOVES.get((state, action))
    if target is None:
        raise Conflict(
            {
                "message": f"cannot {action.value} a rollout that is {state.value}",
                "state": state.value,
                "action": action.value,
            }
        )
    if action == RolloutAction.ADVANCE:
        step += 1
        if step >= steps - 1:
            return RolloutState.PROMOTED, steps - 1
    if action == RolloutAction.PROMOTE:
        return target, steps - 1
    return target, step


@dataclass(frozen=True, slots=True)
class Step:
    """One step: the candidate's weight (percent) for at least ``hold_s`` seconds."""

    weight: int
    hold_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Gate:
    """A rule the candidate must keep: exactly one of ``max``, ``min`` and
    ``max_ratio_to_baseline``; judged once it has ``min_samples`` samples (the
    rollout's ``min_requests`` when None)."""

    metric: str
    max: float | None = None
    min: float | None = None
    max_ratio_to_baseline: float | None = None
    min_samples: int | None = None

    @property
    def kind(self) -> str:
        """Which threshold the gate has (``max``, ``min`` or ``max_ratio_to_baseline``)."""
        for name in _THRESHOLDS:
            if getattr(self, name) is not None:
                return name
        return ""

    @property
    def threshold(self) -> float:
        value = getattr(self, self.kind) if self.kind else None
        return float(value) if value is not None else math.nan

    @property
    def name(self) -> str:
        """How reasons and the CLI show the gate: ``p99_ms/baseline<=1.25``."""
        return _gate_name(self.metric, self.kind, self.threshold)


def _gate_name(metric: str, kind: str, threshold: float) -> str:
    if kind == "max_ratio_to_baseline":
        return f"{metric}/baseline<={_number(threshold)}"
    return f"{metric}{'<=' if kind == 'max' else '>='}{_number(threshold)}"


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """What a rollout does: move traffic from ``baseline`` to ``candidate`` by
    ``steps``, watching ``gates``."""

    candidate: str
    baseline: str
    steps: tuple[Step, ...]
    gates: tuple[Gate, ...] = ()
    min_requests: int = DEFAULT_MIN_REQUESTS
    on_failure: str = "rollback"


def step_weights(spec: RolloutSpec, step: int) -> dict[str, int]:
    """Return the weights of the candidate and the baseline at ``step``."""
    weight = spec.steps[step].weight
    return {spec.candidate: weight, spec.baseline: TOTAL_WEIGHT - weight}


# -- the JSON mapping ------------------------------------------------------------


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def spec_document(spec: RolloutSpec) -> dict[str, Any]:
    """Return the JSON document of ``spec`` (what the API shows and the database keeps)."""
    gates: list[dict[str, Any]] = []
    for gate in spec.gates:
        document: dict[str, Any] = {"metric": gate.metric}
        for name in _THRESHOLDS:
            value = getattr(gate, name)
            if value is not None:
                document[name] = value
        if gate.min_samples is not None:
            document["min_samples"] = gate.min_samples
        gates.append(document)
    return {
        "candidate": spec.candidate,
        "baseline": spec.baseline,
        "steps": [{"weight": s.weight, "hold_s": s.hold_s} for s in spec.steps],
        "gates": gates,
        "min_requests": spec.min_requests,
        "on_failure": spec.on_failure,
    }


def _problem(problems: list[dict[str, Any]], field_: str, code: str, message: str) -> None:
    problems.append({"field": field_, "code": code, "message": message})


def _raise(problems: list[dict[str, Any]]) -> None:
    if problems:
        raise InvalidInput(
            {"message": "; ".join(p["message"] for p in problems), "errors": problems}
        )


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def spec_from_document(document: Mapping[str, Any], *, baseline: str | None = None) -> RolloutSpec:
    """Return the spec a JSON document describes; ``baseline`` fills a missing
    one. Raise InvalidInput (with every problem found, each a ``field``,
    ``code`` and ``message``) for a document of the wrong shape; the rules that
    need the model are :func:`check_spec`'s."""
    problems: list[dict[str, Any]] = []
    known = {"candidate", "baseline", "steps", "gates", "min_requests", "on_failure"}
    for name in sorted(set(document) - known):
        _problem(problems, name, "unknown_field", f"unknown field {name!r}")
    candidate = document.get("candidate")
    if not isinstance(candidate, str) or not candidate:
        _problem(problems, "candidate", "required", "candidate must name a version")
        candidate = ""
    base = document.get("baseline", baseline)
    if base is None:
        base = baseline
    if not isinstance(base, str) or not base:
        _problem(problems, "baseline", "required", "baseline must name a version")
        base = ""
    steps = _steps_from(document.get("steps"), problems)
    gates = _gates_from(document.get("gates", []), problems)
    min_requests = document.get("min_requests", DEFAULT_MIN_REQUESTS)
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
        _problem(problems, "min_requests", "invalid", "min_requests must be an integer >= 1")
        min_requests = DEFAULT_MIN_REQUESTS
    on_failure = document.get("on_failure", "rollback")
    if on_failure != "rollback":
        _problem(problems, "on_failure", "invalid", 'on_failure must be "rollback"')
    _raise(problems)
    return RolloutSpec(
        candidate=candidate,
        baseline=base,
        steps=steps,
        gates=gates,
        min_requests=min_requests,
        on_failure="rollback",
    )


def _steps_from(value: Any, problems: list[dict[str, Any]]) -> tuple[Step, ...]:
    if not isinstance(value, list) or not value:
        _problem(problems, "steps", "required", "steps must be a non-empty list")
        return ()
    if len(value) > MAX_STEPS:
        _problem(problems, "steps", "too_many", f"at most {MAX_STEPS} steps")
    steps: list[Step] = []
    for i, item in enumerate(value):
        where = f"steps[{i}]"
        if not isinstance(item, dict) or set(item) - {"weight", "hold_s"}:
            _problem(problems, where, "invalid", f"{where} must be {{weight, hold_s}}")
            continue
        weight = item.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int):
            _problem(problems, f"{where}.weight", "invalid", f"{where}.weight must be an integer")
            continue
        hold = _as_number(item.get("hold_s", 0))
        if hold is None or not 0 <= hold <= MAX_HOLD_S:
            _problem(
                problems,
                f"{where}.hold_s",
                "invalid",
                f"{where}.hold_s must be a number of seconds from 0 to {int(MAX_HOLD_S)}",
            )
            continue
        steps.append(Step(weight=weight, hold_s=hold))
    return tuple(steps)


def _gates_from(value: Any, problems: list[dict[str, Any]]) -> tuple[Gate, ...]:
    if not isinstance(value, list):
        _problem(problems, "gates", "invalid", "gates must be a list")
        return ()
    if len(value) > MAX_GATES:
        _problem(problems, "gates", "too_many", f"at most {MAX_GATES} gates")
    gates: list[Gate] = []
    for i, item in enumerate(value):
        where = f"gates[{i}]"
        allowed = {"metric", "min_samples", *_THRESHOLDS}
        if not isinstance(item, dict) or set(item) - allowed:
            _problem(problems, where, "invalid", f"{where} has unknown fields")
            continue
        metric = item.get("metric")
        if metric not in METRICS:
            _problem(
                problems,
                f"{where}.metric",
                "unknown_metric",
                f"{where}: unknown metric {metric!r}; use one of {list(METRICS)}",
            )
            continue
        given = [name for name in _THRESHOLDS if item.get(name) is not None]
        if len(given) != 1:
            _problem(
                problems,
                where,
                "gate_threshold",
                f"{where} needs exactly one of max, min, max_ratio_to_baseline "
                f"(has {given or 'none'})",
            )
            continue
        threshold = _as_number(item[given[0]])
        if threshold is None or threshold < 0:
            _problem(problems, f"{where}.{given[0]}", "invalid", f"{where}: a threshold >= 0")
            continue
        min_samples = item.get("min_samples")
        if min_samples is not None and (
            isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1
        ):
            _problem(problems, f"{where}.min_samples", "invalid", f"{where}: min_samples >= 1")
            continue
        gates.append(
            Gate(
                metric=metric,
                max=threshold if given[0] == "max" else None,
                min=threshold if given[0] == "min" else None,
                max_ratio_to_baseline=threshold if given[0] == "max_ratio_to_baseline" else None,
                min_samples=min_samples,
            )
        )
    return tuple(gates)


def check_spec(spec: RolloutSpec, weights: Mapping[str, int]) -> None:
    """Raise InvalidInput unless ``spec`` can run on a model whose versions have
    ``weights``: known versions, candidate not the baseline, weights strictly
    increasing within 1..100 and the last 100, shadow gates with ``min`` in 0..1,
    and no third version with traffic."""
    problems: list[dict[str, Any]] = []
    for name in ("candidate", "baseline"):
        version = getattr(spec, name)
        if version not in weights:
            _problem(
                problems,
                name,
                "unknown_version",
                f"the model has no version {version!r} (it has {sorted(weights)})",
            )
    if spec.candidate == spec.baseline:
        _problem(problems, "candidate", "candidate_is_baseline", "candidate equals the baseline")
    previous = 0
    for i, step in enumerate(spec.steps):
        if not 1 <= step.weight <= TOTAL_WEIGHT:
            _problem(problems, f"steps[{i}].weight", "weight_out_of_range", "weights are 1..100")
        elif step.weight <= previous:
            _problem(
                problems,
                f"steps[{i}].weight",
                "weights_not_increasing",
                f"steps[{i}].weight {step.weight} is not above the step before ({previous})",
            )
        previous = max(previous, step.weight)
    if spec.steps and spec.steps[-1].weight != TOTAL_WEIGHT:
        _problem(
            problems,
            f"steps[{len(spec.steps) - 1}].weight",
            "last_step_not_100",
            "the last step must give the candidate 100",
        )
    for i, gate in enumerate(spec.gates):
        if gate.metric == SHADOW_METRIC and (gate.kind != "min" or gate.threshold > 1):
            _problem(
                problems,
                f"gates[{i}]",
                "gate_threshold",
                "shadow_agreement takes a min between 0 and 1 (it gates the first step only)",
            )
        rate = gate.metric in ("error_rate", "success_rate")
        if rate and gate.kind in ("max", "min") and gate.threshold > 1:
            _problem(problems, f"gates[{i}]", "gate_threshold", f"{gate.metric} is a fraction 0..1")
    others = sorted(
        v for v, w in weights.items() if w > 0 and v not in (spec.candidate, spec.baseline)
    )
    if others:
        _problem(
            problems,
            "baseline",
            "other_versions_have_traffic",
            f"version(s) {others} have traffic; a rollout moves traffic between two "
            "versions only: give it to the baseline first (PUT /v1/models/{model}/traffic)",
        )
    _raise(problems)


# -- gate maths ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionFigures:
    """What one version served over a window, as gates read it."""

    requests: int = 0
    errors: int = 0  # 5xx answers
    latency_samples: int = 0
    latency_ms: Mapping[str, float | None] = field(default_factory=dict)  # p50, p90, p99

    def value(self, metric: str) -> tuple[float | None, int]:
        """Return (value, samples) of ``metric`` (not shadow_agreement)."""
        if metric == "error_rate":
            return (self.errors / self.requests if self.requests else None), self.requests
        if metric == "success_rate":
            good = self.requests - self.errors
            return (good / self.requests if self.requests else None), self.requests
        if metric in _LATENCY:
            return self.latency_ms.get(metric[: -len("_ms")]), self.latency_samples
        raise ValueError(f"unknown metric {metric!r}")


class Verdict(StrEnum):
    PENDING = "pending"
    PASS = "pass"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class GateResult:
    """A gate's last evaluation: its value (a ratio for a relative gate), the
    threshold, how many samples it had and needs, and the verdict."""

    metric: str
    kind: str
    threshold: float
    value: float | None
    samples: int
    min_samples: int
    verdict: Verdict
    baseline_value: float | None = None

    @property
    def name(self) -> str:
        return _gate_name(self.metric, self.kind, self.threshold)


def evaluate_gate(
    gate: Gate,
    candidate: VersionFigures,
    baseline: VersionFigures,
    *,
    min_requests: int,
    shadow: tuple[float, int] | None = None,
) -> GateResult:
    """Judge ``gate`` on the candidate's (and for a ratio gate the baseline's)
    figures over one window. Fewer samples than the gate's minimum (for a ratio
    gate: on either side) is ``pending``, never ``fail``."""
    need = gate.min_samples if gate.min_samples is not None else min_requests
    base_value: float | None = None
    if gate.metric == SHADOW_METRIC:
        value, samples = shadow if shadow is not None else (None, 0)
    else:
        value, samples = candidate.value(gate.metric)
        if gate.kind == "max_ratio_to_baseline":
            base_value, base_samples = baseline.value(gate.metric)
            samples = min(samples, base_samples)
            value = _ratio(value, base_value)

    def result(verdict: Verdict) -> GateResult:
        return GateResult(
            gate.metric, gate.kind, gate.threshold, value, samples, need, verdict, base_value
        )

    if value is None or samples < need:
        return result(Verdict.PENDING)
    if gate.kind == "min":
        return result(Verdict.FAIL if value < gate.threshold else Verdict.PASS)
    return result(Verdict.FAIL if value > gate.threshold else Verdict.PASS)


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None:
        return None
    if base > 0:
        return value / base
    return 1.0 if value <= 0 else math.inf


def evaluate_gates(
    spec: RolloutSpec,
    step: int,
    candidate: VersionFigures,
    baseline: VersionFigures,
    shadow: tuple[float, int] | None = None,
) -> tuple[GateResult, ...]:
    """Judge every gate that applies at ``step`` (shadow agreement: the first step only)."""
    return tuple(
        evaluate_gate(g, candidate, baseline, min_requests=spec.min_requests, shadow=shadow)
        for g in spec.gates
        if g.metric != SHADOW_METRIC or step == 0
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """What the driver does now: ``wait``, ``advance`` or ``rollback`` (with why)."""

    action: str
    reason: str | None = None


def decide(
    spec: RolloutSpec,
    step: int,
    elapsed_s: float,
    candidate: VersionFigures,
    results: Sequence[GateResult],
) -> Decision:
    """Roll back at once when a gate failed; advance once the step's hold time
    passed, the candidate served ``min_requests`` in the step and every gate
    passed; else wait."""
    for result in results:
        if result.verdict == Verdict.FAIL:
            value = "inf" if result.value == math.inf else f"{result.value:.4g}"
            return Decision(
                "rollback",
                f"gate {result.name} failed: {value} over {result.samples} samples "
                f"at step {step + 1} ({spec.steps[step].weight}%)",
            )
    if elapsed_s < spec.steps[step].hold_s:
        return Decision("wait", "holding")
    if candidate.requests < spec.min_requests:
        return Decision("wait", f"{candidate.requests}/{spec.min_requests} requests")
    if any(r.verdict != Verdict.PASS for r in results):
        return Decision("wait", "gates pending")
    return Decision("advance")


def gate_results_document(results: Sequence[GateResult]) -> list[dict[str, Any]]:
    """Return the JSON of gate results (what the API shows and the database keeps)."""
    return [
        {
            "metric": r.metric,
            "kind": r.kind,
            "threshold": r.threshold,
            "value": None if r.value is None or not math.isfinite(r.value) else r.value,
            "infinite": r.value is not None and not math.isfinite(r.value),
            "baseline_value": r.baseline_value,
            "samples": r.samples,
            "min_samples": r.min_samples,
            "verdict": r.verdict.value,
        }
        for r in results
    ]


def gate_results_from_document(document: Sequence[Mapping[str, Any]]) -> tuple[GateResult, ...]:
    """Inverse of :func:`gate_results_document`."""
    return tuple(
        GateResult(
            metric=str(d["metric"]),
            kind=str(d["kind"]),
            threshold=float(d["threshold"]),
            value=math.inf if d.get("infinite") else d.get("value"),
            samples=int(d["samples"]),
            min_samples=int(d["min_samples"]),
            verdict=Verdict(d["verdict"]),
            baseline_value=d.get("baseline_value"),
        )
        for d in document
    )


def elapsed(since: datetime | None, now: datetime) -> float:
    """Seconds from ``since`` to ``now`` (0 before the step began)."""
    return 0.0 if since is None else max((now - since).total_seconds(), 0.0)
